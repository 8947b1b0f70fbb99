"""EAP-TLS as a pump does it: `eapol_test` (wpa_supplicant's test client) against the lab's
RADIUS server. Success is exit 0 and a final `SUCCESS` (Access-Accept); a rejection is exit 252
and `FAILURE`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from simulator.radius import INSTALL_HINT, RadiusServer

# Lines of eapol_test output that say why an authentication failed, most telling first.
_REASONS = (
    re.compile(r"SSL3 alert: read \(remote end reported an error\):(\S+):(.+)$"),
    re.compile(r"TLS: Certificate verification failed, error \d+ \((.+?)\)"),
    re.compile(r"(EAP-FAILURE|CTRL-EVENT-EAP-FAILURE.*)$"),
    re.compile(r"(Access-Reject)"),
)


class EapolError(RuntimeError):
    """eapol_test is missing or could not run at all."""


@dataclass(frozen=True)
class EapResult:
    identity: str
    accepted: bool
    exit_code: int
    seconds: float
    reason: str  # "" when accepted; otherwise the most telling line of the exchange
    output: str

    def summary(self) -> str:
        verdict = "Access-Accept" if self.accepted else f"rejected ({self.reason})"
        return f"{self.identity}: {verdict} in {self.seconds * 1000:.0f} ms"


@dataclass(frozen=True)
class Supplicant:
    """What a pump presents: the identity it claims and its installed files."""

    identity: str
    cert_file: Path
    key_file: Path


class HasBundle(Protocol):
    """A Pump, or anything else with an identity and installed files."""

    @property
    def serial(self) -> str: ...
    @property
    def cert_file(self) -> Path: ...
    @property
    def key_file(self) -> Path: ...


def authenticate(
    pump: HasBundle | Supplicant,
    radius: RadiusServer,
    *,
    identity: str | None = None,
    timeout: int = 10,
    explain: bool = False,
    executable: str = "eapol_test",
) -> EapResult:
    """One EAP-TLS authentication of `pump` (identity = its serial unless overridden).

    `explain=True` takes a rejection's reason from the server's log (the CN mismatch, the
    unknown CA); exact only when no other authentication runs at the same time.
    """
    if shutil.which(executable) is None:
        raise EapolError(f"'{executable}' is not installed; install it with: {INSTALL_HINT}")
    claimed = identity or (pump.identity if isinstance(pump, Supplicant) else pump.serial)
    with tempfile.TemporaryDirectory(prefix="eapol-") as tmp:
        conf = Path(tmp) / "pump.conf"
        conf.write_text(
            _network_block(
                identity=claimed,
                ca_cert=radius.server_ca_file,
                client_cert=pump.cert_file,
                private_key=pump.key_file,
            ),
            encoding="utf-8",
        )
        log_offset = radius.log_size()
        started = time.perf_counter()
        try:
            result = subprocess.run(
                [
                    executable,
                    "-c",
                    str(conf),
                    "-a",
                    radius.host,
                    "-p",
                    str(radius.port),
                    "-s",
                    radius.secret,
                    "-t",
                    str(timeout),
                ],
                capture_output=True,
                text=True,
                timeout=timeout + 10,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout if isinstance(exc.stdout, str) else ""
            return EapResult(claimed, False, -1, time.perf_counter() - started, "timeout", output)
        seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    accepted = result.returncode == 0 and bool(lines) and lines[-1].strip() == "SUCCESS"
    reason = ""
    if not accepted:
        reason = (radius.reason_since(log_offset) if explain else "") or _reason(
            output, result.returncode
        )
    return EapResult(
        identity=claimed,
        accepted=accepted,
        exit_code=result.returncode,
        seconds=seconds,
        reason=reason,
        output=output,
    )


def _network_block(*, identity: str, ca_cert: Path, client_cert: Path, private_key: Path) -> str:
    def quoted(value: str | Path) -> str:
        text = str(value)
        if '"' in text or "\n" in text:
            raise ValueError(f"cannot put {text!r} into a wpa_supplicant configuration")
        return f'"{text}"'

    return (
        "network={\n"
        "\tkey_mgmt=WPA-EAP\n"
        "\teap=TLS\n"
        f"\tidentity={quoted(identity)}\n"
        f"\tca_cert={quoted(ca_cert)}\n"
        f"\tclient_cert={quoted(client_cert)}\n"
        f"\tprivate_key={quoted(private_key)}\n"
        "\teapol_flags=0\n"
        "}\n"
    )


def _reason(output: str, exit_code: int) -> str:
    for pattern in _REASONS:
        for line in output.splitlines():
            match = pattern.search(line)
            if match:
                return ":".join(g.strip() for g in match.groups())
    return f"eapol_test exit {exit_code}"
