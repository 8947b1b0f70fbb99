"""The audit log: one JSON object per line, for the events an auditor asks about.

Issuance, renewal, revocation, approval decisions and authentication failures, each with who
(the authenticated principal or the attempted user name), what (serial, subject, operation) and
from where (the peer address). One file, created 0600 (0640 is accepted for a log-reader group),
appended with O_APPEND so several worker processes can share it: each line is one `write`.

Secrets never reach it: `record` refuses field names that suggest a secret and values that
contain PEM private-key armour, so a careless caller fails loudly in tests instead of leaking.

Other modules call the module-level `record(event, **fields)`; the composition root decides
where it goes with `configure(AuditLog(path))`. Without a file, records go to the Python log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from appliance.errors import ConfigError

log = logging.getLogger(__name__)

# Event names in use (a reader's vocabulary; other modules may add more).
ISSUED = "issued"
RENEWED = "renewed"
REVOKED = "revoked"
APPROVAL_REQUESTED = "approval_requested"
APPROVED = "approved"
REJECTED = "rejected"
AUTH_FAILURE = "auth_failure"
FORBIDDEN = "forbidden"
THROTTLED = "throttled"

_SECRET_WORDS = re.compile("password|passphrase|secret|private|credential|token")
_PRIVATE_KEY_ARMOUR = "PRIVATE KEY-----"
_MAX_VALUE = 512  # client-chosen text (user names, subjects) is bounded in the log


class AuditLog:
    """Appends audit records to one file (or, with no path, to the Python log)."""

    def __init__(
        self,
        path: Path | None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            self._fd = _open(path)

    @property
    def path(self) -> Path | None:
        return self._path

    def record(self, event: str, **fields: object) -> None:
        line = json.dumps(
            {"time": self._clock().isoformat(), "event": event, **_clean(fields)},
            ensure_ascii=False,
            sort_keys=False,
            default=str,
        )
        if self._fd is None:
            log.info("event=audit %s", line)
            return
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:  # closed meanwhile
                return
            os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"audit.path: cannot open {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    # Readable by a log-reader group is fine; writable by the group or open to others is not:
    # whoever can edit the audit trail can hide what they did.
    if mode & (stat.S_IWGRP | stat.S_IRWXO | stat.S_IXGRP):
        os.close(fd)
        raise ConfigError(
            f"audit.path: {path} is accessible by others or writable by its group "
            f"(mode {mode:04o}); run `chmod 600 {path}` (or 640)"
        )
    return fd


def _clean(fields: dict[str, object]) -> dict[str, object]:
    cleaned: dict[str, object] = {}
    for name, value in fields.items():
        lowered = name.lower()
        if _SECRET_WORDS.search(lowered):
            raise ValueError(f"audit field {name!r} looks like a secret; secrets are never logged")
        if isinstance(value, bytes):
            raise ValueError(f"audit field {name!r} is bytes; log a serial or fingerprint instead")
        if isinstance(value, str):
            if _PRIVATE_KEY_ARMOUR in value:
                raise ValueError(f"audit field {name!r} holds a private key")
            cleaned[name] = value[:_MAX_VALUE]
        else:
            cleaned[name] = value
    return cleaned


# The process's audit log; the composition root replaces it (`configure`).
_current = AuditLog(None)


def configure(audit_log: AuditLog) -> AuditLog:
    """Send `record` to `audit_log`; returns the previous one (closed by the caller, if wanted)."""
    # One audit trail per process, set by the composition root.
    global _current
    previous, _current = _current, audit_log
    return previous


def current() -> AuditLog:
    return _current


def record(event: str, **fields: object) -> None:
    """Append one audit record: `record("revoked", serial=..., by=..., reason=..., address=...)`.

    Field names containing password/passphrase/secret/private/credential/token, bytes values
    and PEM private keys are refused with ValueError."""
    _current.record(event, **fields)
