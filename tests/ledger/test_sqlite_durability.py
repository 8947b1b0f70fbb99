"""SQLite: when an issuance record reaches the disk, and what a failed flush does.

Issuance records are committed in groups with synchronous=NORMAL and the WAL is fsynced after
the write lock is released (appliance/ledger.py, SqliteLedger). These tests watch the system
calls the ledger makes through Python (the flock, the fsync) in the order they happen."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance.config import LedgerConfig
from appliance.errors import ServiceUnavailable
from appliance.ledger import SqliteLedger
from appliance.ledger_factory import upgrade_ledger
from tests.ledger.test_ledger import record


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> SqliteLedger:
    path = tmp_path / "ledger.db"
    upgrade_ledger(LedgerConfig(path=path))
    return SqliteLedger(path)


def _watch(monkeypatch: pytest.MonkeyPatch, events: list[str], fail_fsync: bool = False) -> None:
    real_flock, real_fsync = fcntl.flock, os.fsync

    def flock(fd: int, operation: int) -> Any:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".write-lock"):
            events.append("unlock" if operation == fcntl.LOCK_UN else "lock")
        return real_flock(fd, operation)

    def fsync(fd: int) -> None:
        events.append("fsync " + Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        if fail_fsync:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(os, "fsync", fsync)


def test_an_issuance_is_flushed_after_the_lock_is_released_and_before_the_call_returns(
    sqlite_ledger: SqliteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    _watch(monkeypatch, events)
    written = record()
    sqlite_ledger.record_issuance(written)
    events.append("returned")
    assert events[:2] == ["lock", "unlock"]
    assert "fsync ledger.db-wal" in events
    assert events.index("fsync ledger.db-wal") < events.index("returned")
    assert sqlite_ledger.find(written.serial) == written


def test_a_failed_flush_is_reported_as_unavailable_and_the_ledger_keeps_working(
    sqlite_ledger: SqliteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        _watch(patch, [], fail_fsync=True)
        with pytest.raises(ServiceUnavailable, match="ledger is busy or unavailable"):
            sqlite_ledger.record_issuance(record(subject="CN=pump-flush-failed"))
    later = record(subject="CN=pump-later")
    sqlite_ledger.record_issuance(later)
    assert sqlite_ledger.find(later.serial) == later


def test_administrative_writes_keep_sqlite_flushing_inside_the_transaction(
    sqlite_ledger: SqliteLedger, tmp_path: Path
) -> None:
    """A revocation is durable the moment it is visible: synchronous=FULL, on the same
    connection an issuance just used with NORMAL."""
    issued = record()
    sqlite_ledger.record_issuance(issued)
    level = sqlite_ledger._connection().execute("PRAGMA synchronous").fetchone()[0]
    assert level == 1  # NORMAL: the ledger flushes the WAL itself
    assert sqlite_ledger.set_status(issued.serial, "revoked", issued.issued_at)
    level = sqlite_ledger._connection().execute("PRAGMA synchronous").fetchone()[0]
    assert level == 2  # FULL
    other = sqlite3.connect(tmp_path / "ledger.db")
    assert other.execute("SELECT status FROM certificates").fetchall() == [("revoked",)]


def test_a_symlinked_ledger_is_flushed_where_sqlite_keeps_its_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite puts the WAL beside the symlink's target (a ledger on a data volume)."""
    (tmp_path / "volume").mkdir()
    (tmp_path / "etc").mkdir()
    target = tmp_path / "volume" / "ledger.db"
    upgrade_ledger(LedgerConfig(path=target))
    link = tmp_path / "etc" / "ledger.db"
    link.symlink_to(target)
    ledger = SqliteLedger(link)
    events: list[str] = []
    _watch(monkeypatch, events)
    written = record()
    ledger.record_issuance(written)
    assert "fsync ledger.db-wal" in events
    assert (tmp_path / "volume" / "ledger.db-wal").exists()
    assert not (tmp_path / "etc" / "ledger.db-wal").exists()
    assert ledger.find(written.serial) == written
