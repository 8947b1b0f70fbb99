"""Where every issued certificate is recorded: one interface, SQLite by default.

The service signs first and returns a certificate to the client only after `record_issuance`
has committed, so a certificate that left the appliance is always in the ledger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.errors import ApplianceError, ServiceUnavailable
from appliance.group_commit import GroupCommit

# Certificate statuses: valid until replaced (superseded) or revoked.
VALID = "valid"
SUPERSEDED = "superseded"
REVOKED = "revoked"
STATUSES = (VALID, SUPERSEDED, REVOKED)


class DuplicateSerial(Exception):
    """The serial is already recorded; the caller signs again with a fresh one."""


class LedgerError(ApplianceError):
    """The ledger cannot be opened or upgraded (unreachable database, schema too old...);
    the message says what to do."""


@dataclass(frozen=True)
class IssuanceRecord:
    serial: str  # lower-case hex, no leading zeros
    subject: str
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    requester: str
    auth_method: str
    endpoint: str
    issued_at: dt.datetime
    der: bytes
    status: str = VALID
    # The serial this certificate replaces (reenroll, or a superseded duplicate subject).
    replaces: str | None = None
    profile: str = ""  # CA label; '' is the default profile
    status_changed_at: dt.datetime | None = None


class ApprovalState(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class PendingRequest:
    """An enrollment request held for an operator (RFC 7030 §4.2.3)."""

    fingerprint: str  # identifies "the same request" when the client re-sends it
    profile: str
    operation: str
    subject: str
    requester: str
    csr_der: bytes
    created: dt.datetime


@dataclass(frozen=True)
class Approval:
    id: int
    fingerprint: str
    profile: str
    operation: str
    subject: str
    requester: str
    csr_der: bytes
    state: ApprovalState
    created: dt.datetime
    decided: dt.datetime | None
    serial: str | None  # set once the approved request was issued


class Ledger(Protocol):
    def record_issuance(
        self, record: IssuanceRecord, *, retire: Sequence[str] = (), retire_as: str = SUPERSEDED
    ) -> None:
        """Commit the record durably, and in the same transaction move the still-valid
        certificates `retire` to status `retire_as`; raise DuplicateSerial if the serial exists."""

    def certificates(self, limit: int = 1000, offset: int = 0) -> Sequence[IssuanceRecord]:
        """Newest first."""

    def find(self, serial: str) -> IssuanceRecord | None: ...

    def valid_for_subject(self, subject: str, now: dt.datetime) -> Sequence[IssuanceRecord]:
        """Certificates for `subject` with status valid and not expired at `now`, newest first."""

    def set_status(self, serial: str, status: str, at: dt.datetime) -> bool:
        """Change a certificate's status; False if the serial is unknown."""

    def count(self) -> int: ...

    def add_pending(self, request: PendingRequest) -> Approval:
        """Record a request for approval, or return the one already recorded for the same
        (profile, operation, fingerprint)."""

    def find_approval(self, profile: str, operation: str, fingerprint: str) -> Approval | None: ...

    def approval(self, approval_id: int) -> Approval | None: ...

    def approvals(self, state: ApprovalState | None = None) -> Sequence[Approval]:
        """Oldest first."""

    def decide(self, approval_id: int, state: ApprovalState, at: dt.datetime) -> Approval:
        """Approve or reject a pending request; raise ValueError if it is not pending."""

    def mark_issued(self, approval_id: int, serial: str) -> None: ...

    def restore_approval(self, approval: Approval) -> None:
        """Insert `approval` as it is, id and state included (`est-appliance db import`);
        later requests get ids above it."""

    def schema_version(self) -> int:
        """How many entries of the migration list this database has applied."""

    def next_crl_number(self) -> int:
        """Allocate the next CRL number (RFC 5280 §5.2.3: monotonically increasing), atomic
        across threads, worker processes and appliance nodes sharing the database."""

    def last_crl_number(self) -> int:
        """The CRL number allocated last; 0 before the first CRL."""

    def restore_crl_number(self, number: int) -> None:
        """Raise the CRL counter to at least `number` (`est-appliance db import`)."""

    def crl_generation(self) -> contextlib.AbstractContextManager[None]:
        """Held while a CRL is numbered, signed and published, so that nodes (and workers)
        generating at the same moment take turns instead of racing."""

    def close(self) -> None: ...


# Versioned schema: each entry moves the database from version i to i + 1.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE certificates (
        serial      TEXT PRIMARY KEY,
        subject     TEXT NOT NULL,
        sans        TEXT NOT NULL,
        not_before  TEXT NOT NULL,
        not_after   TEXT NOT NULL,
        requester   TEXT NOT NULL,
        auth_method TEXT NOT NULL,
        endpoint    TEXT NOT NULL,
        issued_at   TEXT NOT NULL,
        status      TEXT NOT NULL DEFAULT 'valid',
        der         BLOB NOT NULL
    );
    CREATE INDEX certificates_subject ON certificates(subject);
    CREATE INDEX certificates_issued_at ON certificates(issued_at);
    """,
    # 2: reenroll and duplicate-subject policy (issue 5): which certificate replaced which,
    # under which CA label, and when the status last changed.
    """
    ALTER TABLE certificates ADD COLUMN replaces TEXT;
    ALTER TABLE certificates ADD COLUMN profile TEXT NOT NULL DEFAULT '';
    ALTER TABLE certificates ADD COLUMN status_changed_at TEXT;
    CREATE INDEX certificates_subject_status ON certificates(subject, status);
    """,
    # 3: requests waiting for an operator (RFC 7030 §4.2.3), kept across restarts.
    """
    CREATE TABLE approvals (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        fingerprint TEXT NOT NULL,
        profile     TEXT NOT NULL,
        operation   TEXT NOT NULL,
        subject     TEXT NOT NULL,
        requester   TEXT NOT NULL,
        csr         BLOB NOT NULL,
        state       TEXT NOT NULL,
        created     TEXT NOT NULL,
        decided     TEXT,
        serial      TEXT,
        UNIQUE (profile, operation, fingerprint)
    );
    CREATE INDEX approvals_state ON approvals(state);
    """,
    # 4: the CRL number counter (RFC 5280 §5.2.3), one row, shared by every node (issue 9).
    """
    CREATE TABLE crl_counter (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        number INTEGER NOT NULL
    );
    """,
)

_COLUMNS = (
    "serial, subject, sans, not_before, not_after, requester, auth_method, endpoint, "
    "issued_at, der, status, replaces, profile, status_changed_at"
)
_INSERT = f"INSERT INTO certificates ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_SELECT = f"SELECT {_COLUMNS} FROM certificates"  # noqa: S608 - constant column list
_APPROVAL_COLUMNS = (
    "id, fingerprint, profile, operation, subject, requester, csr, state, created, decided, serial"
)
_SELECT_APPROVAL = f"SELECT {_APPROVAL_COLUMNS} FROM approvals"  # noqa: S608 - constant


class SqliteLedger:
    """SQLite in WAL mode, one connection per thread, synchronous=FULL: a commit that returned
    survives a crash of the process or of the machine."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._group = GroupCommit(path.with_name(path.name + ".write-lock"), _unavailable)
        self._crl_mutex = threading.Lock()
        self._migrate(self._connection())

    @property
    def path(self) -> Path:
        return self._path

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for index in range(version, len(_MIGRATIONS)):
                for statement in _split_sql(_MIGRATIONS[index]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {index + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        (version,) = self._connection().execute("PRAGMA user_version").fetchone()
        return int(version)

    @staticmethod
    def stored_version(path: Path) -> int:
        """The schema version of the file at `path` without migrating it; 0 if absent."""
        if not path.exists():
            return 0
        conn = sqlite3.connect(path, timeout=30)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
        return int(version)

    def record_issuance(
        self, record: IssuanceRecord, *, retire: Sequence[str] = (), retire_as: str = SUPERSEDED
    ) -> None:
        conn = self._connection()
        values = (
            record.serial,
            record.subject,
            "\n".join(record.sans),
            record.not_before.isoformat(),
            record.not_after.isoformat(),
            record.requester,
            record.auth_method,
            record.endpoint,
            record.issued_at.isoformat(),
            record.der,
            record.status,
            record.replaces,
            record.profile,
            _iso(record.status_changed_at),
        )

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(_INSERT, values)
            except sqlite3.IntegrityError as exc:
                raise DuplicateSerial(record.serial) from exc
            for serial in retire:
                conn.execute(
                    "UPDATE certificates SET status = ?, status_changed_at = ? "
                    "WHERE serial = ? AND status = ?",
                    (retire_as, record.issued_at.isoformat(), serial, VALID),
                )

        # Enrollments arrive by the hundred per second: commit them in groups (group_commit.py).
        self._group.run(conn, insert)

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction; a busy or broken database is a 503 the client may retry."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _unavailable() from exc
        try:
            yield
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            raise _unavailable() from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def valid_for_subject(self, subject: str, now: dt.datetime) -> list[IssuanceRecord]:
        rows = self._connection().execute(
            _SELECT + " WHERE subject = ? AND status = ? ORDER BY issued_at DESC, serial",
            (subject, VALID),
        )
        return [r for r in map(_record, rows) if r.not_after > now]

    def set_status(self, serial: str, status: str, at: dt.datetime) -> bool:
        if status not in STATUSES:
            raise ValueError(f"unknown certificate status {status!r}")
        conn = self._connection()
        with self._write(conn):
            cursor = conn.execute(
                "UPDATE certificates SET status = ?, status_changed_at = ? WHERE serial = ?",
                (status, at.isoformat(), serial.lower()),
            )
        return cursor.rowcount > 0

    def add_pending(self, request: PendingRequest) -> Approval:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                "INSERT OR IGNORE INTO approvals (fingerprint, profile, operation, subject, "
                "requester, csr, state, created) VALUES (?,?,?,?,?,?,?,?)",
                (
                    request.fingerprint,
                    request.profile,
                    request.operation,
                    request.subject,
                    request.requester,
                    request.csr_der,
                    ApprovalState.PENDING.value,
                    request.created.isoformat(),
                ),
            )
        found = self.find_approval(request.profile, request.operation, request.fingerprint)
        if found is None:  # pragma: no cover - the row was inserted or already there
            raise RuntimeError("approval row vanished")
        return found

    def find_approval(self, profile: str, operation: str, fingerprint: str) -> Approval | None:
        row = (
            self._connection()
            .execute(
                _SELECT_APPROVAL + " WHERE profile = ? AND operation = ? AND fingerprint = ?",
                (profile, operation, fingerprint),
            )
            .fetchone()
        )
        return _approval(row) if row else None

    def approval(self, approval_id: int) -> Approval | None:
        row = (
            self._connection()
            .execute(_SELECT_APPROVAL + " WHERE id = ?", (approval_id,))
            .fetchone()
        )
        return _approval(row) if row else None

    def approvals(self, state: ApprovalState | None = None) -> list[Approval]:
        if state is None:
            rows = self._connection().execute(_SELECT_APPROVAL + " ORDER BY id")
        else:
            rows = self._connection().execute(
                _SELECT_APPROVAL + " WHERE state = ? ORDER BY id", (state.value,)
            )
        return [_approval(row) for row in rows]

    def decide(self, approval_id: int, state: ApprovalState, at: dt.datetime) -> Approval:
        if state is ApprovalState.PENDING:
            raise ValueError("a decision is approved or rejected")
        conn = self._connection()
        with self._write(conn):
            cursor = conn.execute(
                "UPDATE approvals SET state = ?, decided = ? WHERE id = ? AND state = ?",
                (state.value, at.isoformat(), approval_id, ApprovalState.PENDING.value),
            )
        found = self.approval(approval_id)
        if found is None:
            raise ValueError(f"there is no request {approval_id}")
        if cursor.rowcount == 0:
            raise ValueError(f"request {approval_id} is already {found.state.value}")
        return found

    def mark_issued(self, approval_id: int, serial: str) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute("UPDATE approvals SET serial = ? WHERE id = ?", (serial, approval_id))

    def restore_approval(self, approval: Approval) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                (
                    approval.id,
                    approval.fingerprint,
                    approval.profile,
                    approval.operation,
                    approval.subject,
                    approval.requester,
                    approval.csr_der,
                    approval.state.value,
                    approval.created.isoformat(),
                    _iso(approval.decided),
                    approval.serial,
                ),
            )

    def next_crl_number(self) -> int:
        conn = self._connection()
        with self._write(conn):
            (number,) = conn.execute(
                "INSERT INTO crl_counter (id, number) VALUES (1, 1) "
                "ON CONFLICT (id) DO UPDATE SET number = crl_counter.number + 1 RETURNING number"
            ).fetchone()
        return int(number)

    def last_crl_number(self) -> int:
        row = self._connection().execute("SELECT number FROM crl_counter").fetchone()
        return int(row[0]) if row else 0

    def restore_crl_number(self, number: int) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                "INSERT INTO crl_counter (id, number) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET number = MAX(number, excluded.number)",
                (number,),
            )

    @contextlib.contextmanager
    def crl_generation(self) -> Iterator[None]:
        # Threads of this process queue on the mutex, worker processes on the flock.
        with self._crl_mutex:
            fd = os.open(
                self._path.with_name(self._path.name + ".crl-lock"),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def certificates(self, limit: int = 1000, offset: int = 0) -> list[IssuanceRecord]:
        rows = self._connection().execute(
            _SELECT + " ORDER BY issued_at DESC, serial LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_record(row) for row in rows]

    def find(self, serial: str) -> IssuanceRecord | None:
        row = (
            self._connection().execute(_SELECT + " WHERE serial = ?", (serial.lower(),)).fetchone()
        )
        return _record(row) if row else None

    def count(self) -> int:
        (total,) = self._connection().execute("SELECT COUNT(*) FROM certificates").fetchone()
        return int(total)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._group.close()


def _split_sql(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _record(row: Sequence[object]) -> IssuanceRecord:
    (
        serial,
        subject,
        sans,
        not_before,
        not_after,
        requester,
        method,
        endpoint,
        issued_at,
        der,
        status,
        replaces,
        profile,
        status_changed_at,
    ) = row
    return IssuanceRecord(
        serial=str(serial),
        subject=str(subject),
        sans=tuple(s for s in str(sans).split("\n") if s),
        not_before=dt.datetime.fromisoformat(str(not_before)),
        not_after=dt.datetime.fromisoformat(str(not_after)),
        requester=str(requester),
        auth_method=str(method),
        endpoint=str(endpoint),
        issued_at=dt.datetime.fromisoformat(str(issued_at)),
        der=bytes(der) if isinstance(der, bytes | bytearray | memoryview) else b"",
        status=str(status),
        replaces=str(replaces) if replaces else None,
        profile=str(profile),
        status_changed_at=dt.datetime.fromisoformat(str(status_changed_at))
        if status_changed_at
        else None,
    )


def _approval(row: Sequence[object]) -> Approval:
    (
        id_,
        fingerprint,
        profile,
        operation,
        subject,
        requester,
        csr,
        state,
        created,
        decided,
        serial,
    ) = row
    return Approval(
        id=int(str(id_)),
        fingerprint=str(fingerprint),
        profile=str(profile),
        operation=str(operation),
        subject=str(subject),
        requester=str(requester),
        csr_der=bytes(csr) if isinstance(csr, bytes | bytearray | memoryview) else b"",
        state=ApprovalState(str(state)),
        created=dt.datetime.fromisoformat(str(created)),
        decided=dt.datetime.fromisoformat(str(decided)) if decided else None,
        serial=str(serial) if serial else None,
    )


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the certificate ledger is busy or unavailable; try again shortly", retry_after=5
    )
