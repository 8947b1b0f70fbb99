"""Where every issued certificate is recorded: one interface, SQLite by default.

The service signs first and returns a certificate to the client only after `record_issuance`
has committed, so a certificate that left the appliance is always in the ledger.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.errors import ServiceUnavailable


class DuplicateSerial(Exception):
    """The serial is already recorded; the caller signs again with a fresh one."""


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
    status: str = "valid"


class Ledger(Protocol):
    def record_issuance(self, record: IssuanceRecord) -> None:
        """Commit the record durably; raise DuplicateSerial if the serial exists."""

    def certificates(self, limit: int = 1000, offset: int = 0) -> Sequence[IssuanceRecord]:
        """Newest first."""

    def find(self, serial: str) -> IssuanceRecord | None: ...

    def count(self) -> int: ...

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
)

_COLUMNS = (
    "serial, subject, sans, not_before, not_after, requester, auth_method, endpoint, "
    "issued_at, der, status"
)
_INSERT = f"INSERT INTO certificates ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_SELECT = f"SELECT {_COLUMNS} FROM certificates"  # noqa: S608 - constant column list


class SqliteLedger:
    """SQLite in WAL mode, one connection per thread, synchronous=FULL: a commit that returned
    survives a crash of the process or of the machine."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
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

    def record_issuance(self, record: IssuanceRecord) -> None:
        conn = self._connection()
        try:
            conn.execute(
                _INSERT,
                (
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
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateSerial(record.serial) from exc
        except sqlite3.OperationalError as exc:
            raise ServiceUnavailable(
                "the certificate ledger is busy or unavailable; try again shortly",
                retry_after=5,
            ) from exc

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
    )
