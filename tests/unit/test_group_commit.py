"""Group commit: concurrent writes share transactions, fail alone, and are durable on return."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.group_commit import GroupCommit


class Busy(Exception):
    pass


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _one_batch_behind_a_leader(
    group: GroupCommit, db: Path, leader_key: int, submit: Callable[[int], None], keys: list[int]
) -> None:
    """A leader inserts `leader_key` but holds its leadership until every `submit(key)` thread
    has queued behind it, so that those form exactly one batch; returns when all are done."""
    gate, entered = threading.Event(), threading.Event()

    def first(c: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)
        c.execute("INSERT INTO t VALUES (?)", (leader_key,))

    leader = threading.Thread(target=lambda: group.run(_db(db), first))
    leader.start()
    assert entered.wait(10)
    others = [threading.Thread(target=submit, args=(k,)) for k in keys]
    for t in others:
        t.start()
    while len(group._pending) < len(keys):
        threading.Event().wait(0.01)
    gate.set()
    for t in [leader, *others]:
        t.join()


def test_every_write_is_visible_to_another_connection_when_run_returns(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    _db(db).execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    group = GroupCommit(tmp_path / "t.lock", Busy)
    errors: list[str] = []

    def writer(base: int) -> None:
        conn = _db(db)
        reader = _db(db)
        for k in range(base, base + 50):

            def insert(c: sqlite3.Connection, k: int = k) -> None:
                c.execute("INSERT INTO t VALUES (?)", (k,))

            group.run(conn, insert)
            if reader.execute("SELECT 1 FROM t WHERE k = ?", (k,)).fetchone() is None:
                errors.append(f"{k} not committed when run() returned")

    threads = [threading.Thread(target=writer, args=(i * 1000,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _db(db).execute("SELECT COUNT(*) FROM t").fetchone() == (400,)


def test_a_failing_write_rolls_back_alone_within_its_batch(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    conn0 = _db(db)
    conn0.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    conn0.execute("INSERT INTO t VALUES (1)")
    group = GroupCommit(tmp_path / "t.lock", Busy)
    results: dict[int, str] = {}

    def submit(k: int) -> None:
        try:
            group.run(_db(db), lambda c: c.execute("INSERT INTO t VALUES (?)", (k,)))
            results[k] = "ok"
        except sqlite3.IntegrityError:
            results[k] = "duplicate"

    _one_batch_behind_a_leader(group, db, 100, submit, [2, 1, 3])
    assert results == {2: "ok", 1: "duplicate", 3: "ok"}
    rows = {k for (k,) in conn0.execute("SELECT k FROM t")}
    assert rows == {1, 2, 3, 100}


def test_a_locked_database_is_reported_as_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    holder = _db(db)
    holder.execute("CREATE TABLE t (k INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # another writer that never lets go
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=0.05)
    group = GroupCommit(tmp_path / "t.lock", Busy)
    with pytest.raises(Busy):
        group.run(conn, lambda c: c.execute("INSERT INTO t VALUES (1)"))
    holder.execute("ROLLBACK")
    group.run(conn, lambda c: c.execute("INSERT INTO t VALUES (1)"))  # and recovers
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)


def test_one_flush_per_batch_after_the_lock_and_before_anyone_returns(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    _db(db).execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    lock_path = tmp_path / "t.lock"
    flushes: list[tuple[int, bool]] = []  # (rows committed, lock free) at each flush
    returned: list[int] = []

    def make_durable() -> None:
        probe = os.open(lock_path, os.O_RDWR)
        try:  # another process could take the write lock now
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        finally:
            os.close(probe)
        flushes.append((_db(db).execute("SELECT COUNT(*) FROM t").fetchone()[0], free))
        assert not returned, "a caller returned before its batch was flushed"

    group = GroupCommit(lock_path, Busy, make_durable=make_durable)

    def submit(k: int) -> None:
        group.run(_db(db), lambda c: c.execute("INSERT INTO t VALUES (?)", (k,)))
        returned.append(k)

    _one_batch_behind_a_leader(group, db, 0, submit, [1, 2, 3])
    # Two batches (the leader alone, then the three that queued behind it), one flush each,
    # each after its commit and with the write lock already released.
    assert flushes == [(1, True), (4, True)]
    assert sorted(returned) == [1, 2, 3]
