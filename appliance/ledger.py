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
from typing import Any, Protocol

from appliance.errors import ApplianceError, ServiceUnavailable
from appliance.group_commit import GroupCommit

# Certificate statuses: valid until replaced (superseded) or revoked.
VALID = "valid"
SUPERSEDED = "superseded"
REVOKED = "revoked"
STATUSES = (VALID, SUPERSEDED, REVOKED)


class DuplicateSerial(Exception):
    """The serial is already recorded; the caller signs again with a fresh one."""


class AlreadyIssued(Exception):
    """The approved request already has its certificate (a simultaneous re-send got it)."""


class SubjectTaken(Exception):
    """Duplicate-subject policy `reject`: a valid certificate for the subject exists."""

    def __init__(self, serial: str) -> None:
        super().__init__(serial)
        self.serial = serial


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


@dataclass(frozen=True)
class Revocation:
    """A revoked certificate as the CRL lists it (RFC 5280 §5.3.1 reason names)."""

    serial: str
    subject: str
    revoked_at: dt.datetime
    reason: str  # RFC 5280 reason name (keyCompromise...), 'unspecified' when none was given
    revoked_by: str
    not_after: dt.datetime


# Device states the operator filters by (issue 6); `expiring` is valid but ending soon.
DEVICE_STATES = ("valid", "expiring", "expired", "superseded", "revoked")


@dataclass(frozen=True)
class CertificateQuery:
    """A page of certificates: a text search over subject and serial, an optional state."""

    now: dt.datetime
    expiring_before: dt.datetime  # valid certificates ending before this are `expiring`
    text: str = ""
    state: str | None = None  # one of DEVICE_STATES
    latest_per_subject: bool = True  # one row per device: its newest certificate
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class Event:
    """Something worth showing an operator later: an enrollment failure with its reason."""

    at: dt.datetime
    kind: str  # 'failure'
    operation: str
    reason: str  # short code (EstError.reason)
    detail: str  # the sentence the client got
    requester: str
    peer: str


@dataclass(frozen=True)
class AdminSession:
    """A dashboard login; only a hash of the cookie's token is stored."""

    token_hash: str
    username: str
    csrf: str
    created: dt.datetime
    last_seen: dt.datetime
    expires: dt.datetime


# Scopes of the password-guessing counters (issue 7, lockout.py).
ADDRESS_SCOPE = "address"
USER_SCOPE = "user"


@dataclass(frozen=True)
class LoginThrottle:
    """Failed password attempts counted for one address or one user name (lockout.py)."""

    scope: str  # ADDRESS_SCOPE or USER_SCOPE
    name: str
    failures: int
    last_failure: dt.datetime
    locked_until: dt.datetime | None


class Ledger(Protocol):
    def record_issuance(
        self,
        record: IssuanceRecord,
        *,
        retire: Sequence[str] = (),
        retire_as: str = SUPERSEDED,
        subject_policy: str = "allow",
        approval_id: int | None = None,
    ) -> None:
        """Commit the record durably, and in the same transaction move the still-valid
        certificates `retire` to status `retire_as`; raise DuplicateSerial if the serial exists.

        `subject_policy` is the profile's duplicate-subject policy, decided inside the write
        transaction so that concurrent requests for one subject cannot both pass it: `reject`
        raises SubjectTaken when a valid, unexpired certificate for the subject exists;
        `supersede` also retires every such certificate; `allow` looks at nothing.

        `approval_id`: the approved request (RFC 7030 §4.2.3) this certificate answers; it is
        linked in the same write, and AlreadyIssued is raised (nothing recorded) when the
        request already has a certificate."""

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

    def revoke(
        self, serial: str, reason: str, at: dt.datetime, actor: str
    ) -> IssuanceRecord | None:
        """Mark a certificate revoked with its RFC 5280 reason name and who did it; a
        certificate already revoked keeps its first date and reason. None: unknown serial."""

    def revocations(self, now: dt.datetime) -> Sequence[Revocation]:
        """Revoked certificates not yet expired at `now` (what a CRL must list), by serial."""

    def revocation(self, serial: str) -> Revocation | None:
        """The revocation of one certificate, None if it is not revoked."""

    def search_certificates(self, query: CertificateQuery) -> tuple[Sequence[IssuanceRecord], int]:
        """One page of certificates matching `query`, newest first, and the total matching."""

    def state_counts(
        self, now: dt.datetime, expiring_before: dt.datetime, *, latest_per_subject: bool
    ) -> dict[str, int]:
        """How many certificates (or devices, by their newest certificate) are in each of
        DEVICE_STATES."""

    def subject_history(self, subject: str) -> Sequence[IssuanceRecord]:
        """Every certificate ever issued for `subject`, oldest first."""

    def issuance_counts(self, since: dt.datetime, bucket_chars: int) -> Sequence[tuple[str, int]]:
        """Certificates issued since `since`, counted per bucket: the first `bucket_chars`
        characters of the ISO issue time (13: per hour, 10: per day), oldest first."""

    def record_events(self, events: Sequence[Event]) -> None:
        """Store events in one transaction."""

    def recent_events(self, kind: str, limit: int) -> Sequence[Event]:
        """The newest events of a kind, newest first."""

    def event_counts(
        self, kind: str, since: dt.datetime, bucket_chars: int
    ) -> Sequence[tuple[str, str, int]]:
        """(bucket, reason, count) of events of a kind since `since`, oldest bucket first."""

    def prune_events(self, before: dt.datetime) -> int:
        """Delete events older than `before`; returns how many."""

    def create_session(self, session: AdminSession) -> None:
        """Store a dashboard session."""

    def find_session(self, token_hash: str) -> AdminSession | None:
        """The session whose token hashes to `token_hash`, expired or not; None if unknown."""

    def touch_session(self, token_hash: str, last_seen: dt.datetime) -> None:
        """Record activity on a session (idle timeout)."""

    def delete_session(self, token_hash: str) -> None:
        """End a session (sign-out, or found expired); unknown hashes are ignored."""

    def prune_sessions(self, now: dt.datetime) -> int:
        """Delete sessions past their absolute expiry; returns how many."""

    def count_login_failure(
        self, scope: str, name: str, at: dt.datetime, forget_before: dt.datetime
    ) -> int:
        """Add one failed password attempt for (scope, name) at `at`, atomically across
        processes and nodes, and return the count. A count whose last failure and lock both
        ended before `forget_before` starts again from 1."""

    def lock_login(self, scope: str, name: str, until: dt.datetime) -> None:
        """Lock (scope, name) until `until` (the row exists: count_login_failure made it)."""

    def login_throttle(self, scope: str, name: str) -> LoginThrottle | None:
        """The failure count and lock of (scope, name), or None if it never failed."""

    def record_login_success(self, username: str, address: str, at: dt.datetime) -> None:
        """Remember that `address` logged in as `username` at `at`."""

    def login_known_since(self, username: str, address: str) -> dt.datetime | None:
        """When `address` last logged in successfully as `username`, or None."""

    def forget_login_state(self, before: dt.datetime, known_before: dt.datetime) -> int:
        """Delete counters whose last failure and lock ended before `before`, and known
        addresses not seen since `known_before`; returns how many rows went."""

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
    # 5: revocation (issue 6): the RFC 5280 reason and who revoked; enrollment failures for the
    # operator's statistics; dashboard sessions shared by every worker and node.
    """
    ALTER TABLE certificates ADD COLUMN revocation_reason TEXT;
    ALTER TABLE certificates ADD COLUMN revoked_by TEXT;
    CREATE INDEX certificates_status ON certificates(status);
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        TEXT NOT NULL,
        kind      TEXT NOT NULL,
        operation TEXT NOT NULL,
        reason    TEXT NOT NULL,
        detail    TEXT NOT NULL,
        requester TEXT NOT NULL,
        peer      TEXT NOT NULL
    );
    CREATE INDEX events_kind_at ON events(kind, at);
    CREATE TABLE admin_sessions (
        token_hash TEXT PRIMARY KEY,
        username   TEXT NOT NULL,
        csrf       TEXT NOT NULL,
        created    TEXT NOT NULL,
        last_seen  TEXT NOT NULL,
        expires    TEXT NOT NULL
    );
    """,
    # 6: password-guessing limits (issue 7), shared by every worker and node: failures per
    # scope ('address' or 'user') and key, the lock they earned, and which addresses logged in
    # successfully as which user (spared by a user-wide lock).
    """
    CREATE TABLE login_throttle (
        scope        TEXT NOT NULL,
        name         TEXT NOT NULL,
        failures     INTEGER NOT NULL,
        last_failure TEXT NOT NULL,
        locked_until TEXT,
        PRIMARY KEY (scope, name)
    );
    CREATE TABLE login_known (
        username     TEXT NOT NULL,
        address      TEXT NOT NULL,
        last_success TEXT NOT NULL,
        PRIMARY KEY (username, address)
    );
    """,
    # 7: certificates_subject_status (2) serves every lookup by subject, so the index on the
    # subject alone only cost each enrollment one more B-tree insert on a page of its own
    # (about a fifth of the ledger's CPU per record, docs/PERFORMANCE.md).
    """
    DROP INDEX IF EXISTS certificates_subject;
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
    """SQLite in WAL mode, one connection per thread: a write that returned survives a crash
    of the process or of the machine.

    Administrative writes (revocations, approvals, CRL numbers) commit with synchronous=FULL:
    SQLite fsyncs the WAL inside the transaction. Issuance records, the hot path, commit in
    groups with synchronous=NORMAL while the write lock is held, and the WAL is fsynced right
    after it is released, before any caller of the batch returns (`_flush_wal`). Holding the
    lock through the fsync made the other worker wait for this one's disk flush, and with each
    worker on a core of its own that core then idled (docs/PERFORMANCE.md). The WAL is
    append-only and an fsync covers the whole file, so a later writer's flush also covers
    every earlier commit; SQLite itself fsyncs the WAL before a checkpoint copies it.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite keeps the WAL beside the file a symlinked ledger path points to.
        real = Path(os.path.realpath(path))
        self._wal = real.with_name(real.name + "-wal")
        self._wal_folder_flushed = False
        self._group = GroupCommit(
            path.with_name(path.name + ".write-lock"), _unavailable, make_durable=self._flush_wal
        )
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
            self._local.synchronous = "FULL"
            with self._lock:
                self._connections.append(conn)
        return conn

    def _synchronous(self, conn: sqlite3.Connection, level: str) -> None:
        """Set the connection's flush level (kept per thread; changed only when it differs)."""
        if self._local.synchronous != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._local.synchronous = level

    def _flush_wal(self) -> None:
        """fsync the WAL after a group commit, as synchronous=FULL would have inside it."""
        try:
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if not self._wal_folder_flushed:
                # Once per process: the WAL's directory entry, in case SQLite created the file
                # since it last synced the folder.
                folder = os.open(self._wal.parent, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
                self._wal_folder_flushed = True
        except OSError as exc:
            raise _unavailable() from exc

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
        self,
        record: IssuanceRecord,
        *,
        retire: Sequence[str] = (),
        retire_as: str = SUPERSEDED,
        subject_policy: str = "allow",
        approval_id: int | None = None,
    ) -> None:
        conn = self._connection()

        def insert(conn: sqlite3.Connection) -> None:
            # One writer at a time (group commit + flock), so this check and the insert are
            # atomic across threads and worker processes.
            retiring = apply_subject_policy(conn, record, retire, subject_policy)
            try:
                conn.execute(_INSERT, insert_values(record))
            except sqlite3.IntegrityError as exc:
                raise DuplicateSerial(record.serial) from exc
            retire_certificates(conn, record, retiring, retire_as)
            link_approval(conn, record, approval_id)

        # Enrollments arrive by the hundred per second: commit them in groups (group_commit.py),
        # flushed to disk after the write lock is released (class docstring).
        self._synchronous(conn, "NORMAL")
        self._group.run(conn, insert)

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction; a busy or broken database is a 503 the client may retry."""
        self._synchronous(conn, "FULL")
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

    def revoke(
        self, serial: str, reason: str, at: dt.datetime, actor: str
    ) -> IssuanceRecord | None:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                "UPDATE certificates SET status = ?, status_changed_at = ?, "
                "revocation_reason = ?, revoked_by = ? WHERE serial = ? AND status <> ?",
                (REVOKED, at.isoformat(), reason, actor, serial.lower(), REVOKED),
            )
        return self.find(serial)

    def revocations(self, now: dt.datetime) -> list[Revocation]:
        rows = self._connection().execute(
            _SELECT_REVOCATION + " WHERE status = ? AND not_after > ? ORDER BY serial",
            (REVOKED, now.isoformat()),
        )
        return [_revocation(row) for row in rows]

    def revocation(self, serial: str) -> Revocation | None:
        row = (
            self._connection()
            .execute(
                _SELECT_REVOCATION + " WHERE status = ? AND serial = ?", (REVOKED, serial.lower())
            )
            .fetchone()
        )
        return _revocation(row) if row else None

    def search_certificates(self, query: CertificateQuery) -> tuple[list[IssuanceRecord], int]:
        where, params = _certificate_filter(query)
        conn = self._connection()
        count_sql = "SELECT COUNT(*) FROM certificates c WHERE " + where  # noqa: S608 - placeholders
        (total,) = conn.execute(count_sql, params).fetchone()
        rows = conn.execute(
            _SELECT_C + " WHERE " + where + " ORDER BY c.issued_at DESC, c.serial LIMIT ? OFFSET ?",
            (*params, query.limit, query.offset),
        )
        return [_record(row) for row in rows], int(total)

    def state_counts(
        self, now: dt.datetime, expiring_before: dt.datetime, *, latest_per_subject: bool
    ) -> dict[str, int]:
        counts = {}
        for state in DEVICE_STATES:
            query = CertificateQuery(
                now=now,
                expiring_before=expiring_before,
                state=state,
                latest_per_subject=latest_per_subject,
            )
            where, params = _certificate_filter(query)
            sql = "SELECT COUNT(*) FROM certificates c WHERE " + where  # noqa: S608 - placeholders
            (total,) = self._connection().execute(sql, params).fetchone()
            counts[state] = int(total)
        return counts

    def subject_history(self, subject: str) -> list[IssuanceRecord]:
        rows = self._connection().execute(
            _SELECT + " WHERE subject = ? ORDER BY issued_at, serial", (subject,)
        )
        return [_record(row) for row in rows]

    def issuance_counts(self, since: dt.datetime, bucket_chars: int) -> list[tuple[str, int]]:
        rows = self._connection().execute(
            "SELECT SUBSTR(issued_at, 1, ?) AS bucket, COUNT(*) FROM certificates "
            "WHERE issued_at >= ? GROUP BY bucket ORDER BY bucket",
            (bucket_chars, since.isoformat()),
        )
        return [(str(bucket), int(count)) for bucket, count in rows]

    def record_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        conn = self._connection()
        with self._write(conn):
            conn.executemany(
                "INSERT INTO events (at, kind, operation, reason, detail, requester, peer) "
                "VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        e.at.isoformat(),
                        e.kind,
                        e.operation,
                        e.reason,
                        e.detail,
                        e.requester,
                        e.peer,
                    )
                    for e in events
                ],
            )

    def recent_events(self, kind: str, limit: int) -> list[Event]:
        rows = self._connection().execute(
            "SELECT at, kind, operation, reason, detail, requester, peer FROM events "
            "WHERE kind = ? ORDER BY at DESC, id DESC LIMIT ?",
            (kind, limit),
        )
        return [
            Event(
                at=dt.datetime.fromisoformat(str(at)),
                kind=str(k),
                operation=str(op),
                reason=str(reason),
                detail=str(detail),
                requester=str(requester),
                peer=str(peer),
            )
            for at, k, op, reason, detail, requester, peer in rows
        ]

    def event_counts(
        self, kind: str, since: dt.datetime, bucket_chars: int
    ) -> list[tuple[str, str, int]]:
        rows = self._connection().execute(
            "SELECT SUBSTR(at, 1, ?) AS bucket, reason, COUNT(*) FROM events "
            "WHERE kind = ? AND at >= ? GROUP BY bucket, reason ORDER BY bucket, reason",
            (bucket_chars, kind, since.isoformat()),
        )
        return [(str(bucket), str(reason), int(count)) for bucket, reason, count in rows]

    def prune_events(self, before: dt.datetime) -> int:
        conn = self._connection()
        with self._write(conn):
            cursor = conn.execute("DELETE FROM events WHERE at < ?", (before.isoformat(),))
        return cursor.rowcount

    def create_session(self, session: AdminSession) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                "INSERT INTO admin_sessions (token_hash, username, csrf, created, last_seen, "
                "expires) VALUES (?,?,?,?,?,?)",
                (
                    session.token_hash,
                    session.username,
                    session.csrf,
                    session.created.isoformat(),
                    session.last_seen.isoformat(),
                    session.expires.isoformat(),
                ),
            )

    def find_session(self, token_hash: str) -> AdminSession | None:
        row = (
            self._connection()
            .execute(
                "SELECT token_hash, username, csrf, created, last_seen, expires "
                "FROM admin_sessions WHERE token_hash = ?",
                (token_hash,),
            )
            .fetchone()
        )
        if row is None:
            return None
        token, username, csrf, created, last_seen, expires = row
        return AdminSession(
            token_hash=str(token),
            username=str(username),
            csrf=str(csrf),
            created=dt.datetime.fromisoformat(str(created)),
            last_seen=dt.datetime.fromisoformat(str(last_seen)),
            expires=dt.datetime.fromisoformat(str(expires)),
        )

    def touch_session(self, token_hash: str, last_seen: dt.datetime) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                "UPDATE admin_sessions SET last_seen = ? WHERE token_hash = ?",
                (last_seen.isoformat(), token_hash),
            )

    def delete_session(self, token_hash: str) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute("DELETE FROM admin_sessions WHERE token_hash = ?", (token_hash,))

    def prune_sessions(self, now: dt.datetime) -> int:
        conn = self._connection()
        with self._write(conn):
            cursor = conn.execute(
                "DELETE FROM admin_sessions WHERE expires < ?", (now.isoformat(),)
            )
        return cursor.rowcount

    def count_login_failure(
        self, scope: str, name: str, at: dt.datetime, forget_before: dt.datetime
    ) -> int:
        conn = self._connection()
        with self._write(conn):
            (failures,) = conn.execute(
                "INSERT INTO login_throttle (scope, name, failures, last_failure) "
                "VALUES (?, ?, 1, ?) ON CONFLICT (scope, name) DO UPDATE SET "
                "failures = CASE WHEN login_throttle.last_failure < ? AND "
                "(login_throttle.locked_until IS NULL OR login_throttle.locked_until < ?) "
                "THEN 1 ELSE login_throttle.failures + 1 END, "
                "last_failure = excluded.last_failure RETURNING failures",
                (scope, name, at.isoformat(), forget_before.isoformat(), forget_before.isoformat()),
            ).fetchone()
        return int(failures)

    def lock_login(self, scope: str, name: str, until: dt.datetime) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                "UPDATE login_throttle SET locked_until = ? WHERE scope = ? AND name = ?",
                (until.isoformat(), scope, name),
            )

    def login_throttle(self, scope: str, name: str) -> LoginThrottle | None:
        row = (
            self._connection()
            .execute(
                "SELECT failures, last_failure, locked_until FROM login_throttle "
                "WHERE scope = ? AND name = ?",
                (scope, name),
            )
            .fetchone()
        )
        if row is None:
            return None
        failures, last_failure, locked_until = row
        return LoginThrottle(
            scope=scope,
            name=name,
            failures=int(failures),
            last_failure=dt.datetime.fromisoformat(str(last_failure)),
            locked_until=dt.datetime.fromisoformat(str(locked_until)) if locked_until else None,
        )

    def record_login_success(self, username: str, address: str, at: dt.datetime) -> None:
        conn = self._connection()
        with self._write(conn):
            conn.execute(
                "INSERT INTO login_known (username, address, last_success) VALUES (?, ?, ?) "
                "ON CONFLICT (username, address) DO UPDATE SET "
                "last_success = excluded.last_success",
                (username, address, at.isoformat()),
            )

    def login_known_since(self, username: str, address: str) -> dt.datetime | None:
        row = (
            self._connection()
            .execute(
                "SELECT last_success FROM login_known WHERE username = ? AND address = ?",
                (username, address),
            )
            .fetchone()
        )
        return dt.datetime.fromisoformat(str(row[0])) if row else None

    def forget_login_state(self, before: dt.datetime, known_before: dt.datetime) -> int:
        conn = self._connection()
        with self._write(conn):
            throttles = conn.execute(
                "DELETE FROM login_throttle WHERE last_failure < ? AND "
                "(locked_until IS NULL OR locked_until < ?)",
                (before.isoformat(), before.isoformat()),
            ).rowcount
            known = conn.execute(
                "DELETE FROM login_known WHERE last_success < ?", (known_before.isoformat(),)
            ).rowcount
        return int(throttles) + int(known)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._group.close()


def insert_values(record: IssuanceRecord) -> tuple[object, ...]:
    """The parameters of `_INSERT` for one record, shared by every backend."""
    return (
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


def apply_subject_policy(
    conn: Any, record: IssuanceRecord, retire: Sequence[str], policy: str
) -> tuple[str, ...]:
    """The duplicate-subject policy, run inside the write transaction; returns what to retire."""
    if policy == "allow":
        return tuple(retire)
    rows = conn.execute(
        "SELECT serial, not_after FROM certificates WHERE subject = ? AND status = ? "
        "ORDER BY issued_at DESC, serial",
        (record.subject, VALID),
    ).fetchall()
    current = [
        str(serial)
        for serial, not_after in rows
        if dt.datetime.fromisoformat(str(not_after)) > record.issued_at
        and str(serial) not in retire
    ]
    if current and policy == "reject":
        raise SubjectTaken(current[0])
    return (*retire, *current)


def link_approval(conn: Any, record: IssuanceRecord, approval_id: int | None) -> None:
    """Give an approved request its certificate, once: a second issuance for it fails whole."""
    if approval_id is None:
        return
    cursor = conn.execute(
        "UPDATE approvals SET serial = ? WHERE id = ? AND serial IS NULL",
        (record.serial, approval_id),
    )
    if cursor.rowcount != 1:
        raise AlreadyIssued(record.serial)


def retire_certificates(
    conn: Any, record: IssuanceRecord, retire: Sequence[str], retire_as: str
) -> None:
    """Mark the certificates a new one replaces, in the same transaction as its insert."""
    for serial in retire:
        conn.execute(
            "UPDATE certificates SET status = ?, status_changed_at = ? "
            "WHERE serial = ? AND status = ?",
            (retire_as, record.issued_at.isoformat(), serial, VALID),
        )


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


# Revocations and device queries (issue 6). `c` aliases the certificates table so the
# newest-per-subject condition can refer to the outer row; plain SQL, PostgreSQL runs it too.
_SELECT_C = (
    "SELECT "  # noqa: S608 - constant column list
    + ", ".join("c." + c.strip() for c in _COLUMNS.split(","))
    + " FROM certificates c"
)
_SELECT_REVOCATION = (
    "SELECT serial, subject, status_changed_at, revocation_reason, revoked_by, not_after "
    "FROM certificates"
)
_NEWEST_OF_SUBJECT = (
    "NOT EXISTS (SELECT 1 FROM certificates n WHERE n.subject = c.subject AND "
    "(n.issued_at > c.issued_at OR (n.issued_at = c.issued_at AND n.serial > c.serial)))"
)


def _certificate_filter(query: CertificateQuery) -> tuple[str, tuple[object, ...]]:
    clauses: list[str] = []
    params: list[object] = []
    if query.latest_per_subject:
        clauses.append(_NEWEST_OF_SUBJECT)
    text = query.text.strip().lower()
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("(LOWER(c.subject) LIKE ? ESCAPE '\\' OR c.serial LIKE ? ESCAPE '\\')")
        params += [f"%{escaped}%", f"{escaped.replace(':', '')}%"]
    now, soon = query.now.isoformat(), query.expiring_before.isoformat()
    state = query.state
    if state is not None:
        if state not in DEVICE_STATES:
            raise ValueError(f"unknown state {state!r}; known: {', '.join(DEVICE_STATES)}")
        if state == "valid":
            clauses.append("c.status = ? AND c.not_after > ?")
            params += [VALID, soon]
        elif state == "expiring":
            clauses.append("c.status = ? AND c.not_after > ? AND c.not_after <= ?")
            params += [VALID, now, soon]
        elif state == "expired":
            clauses.append("c.status = ? AND c.not_after <= ?")
            params += [VALID, now]
        else:
            clauses.append("c.status = ?")
            params.append(state)
    return (" AND ".join(clauses) or "1 = 1"), tuple(params)


def _revocation(row: Sequence[object]) -> Revocation:
    serial, subject, revoked_at, reason, revoked_by, not_after = row
    return Revocation(
        serial=str(serial),
        subject=str(subject),
        # A row revoked before migration 5 may lack the time; its expiry bounds it.
        revoked_at=dt.datetime.fromisoformat(str(revoked_at or not_after)),
        # Revoked by `revoke_superseded` (no operator involved): RFC 5280 `superseded`.
        reason=str(reason) if reason else "superseded",
        revoked_by=str(revoked_by) if revoked_by else "-",
        not_after=dt.datetime.fromisoformat(str(not_after)),
    )
