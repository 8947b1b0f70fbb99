"""Group commit: many threads' small SQLite writes committed as one transaction.

With `synchronous=FULL` every commit waits for an fsync of the WAL (about 0.5 ms on the
reference disk), and SQLite admits one writer at a time, across threads and processes. One
transaction per enrollment therefore caps the appliance at roughly 1/fsync enrollments per
second, and under contention SQLite's busy handler *sleeps* (1, 2, 5, 10... ms) between
retries, which measured 132 enrollments/s with p99 over 600 ms at 8 keep-alive gateways.

Here the first thread to arrive leads: it takes every write that is waiting, runs each inside
its own SAVEPOINT (so one failing write, such as a duplicate serial, rolls back alone), commits
once, and wakes the others. Writes that arrive meanwhile form the next batch, led by the first
of them. A caller returns only after the commit that holds its write, so "recorded before the
answer leaves" still holds. Between worker processes a blocking flock on a side file hands the
writer role over directly instead of through SQLite's sleeping retries. With `make_durable`
the disk flush happens after the flock is released, so another worker's next batch is written
while this one reaches the disk. (Handing this worker's leadership on before the flush as well
measured slower: smaller batches, more commits.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("error", "lead", "result", "wake", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], T]) -> None:
        self.work = work
        self.result: T | None = None
        self.error: BaseException | None = None
        self.lead = False
        # A latch: held from the start, released once, when the job's batch is committed or
        # the job is to lead the next one. A bare lock, not a threading.Event, whose wait and
        # set run a Condition's Python code on every enrollment.
        self.wake = threading.Lock()
        self.wake.acquire()


class GroupCommit:
    def __init__(
        self,
        lock_path: Path,
        unavailable: Callable[[], Exception],
        *,
        make_durable: Callable[[], None] | None = None,
    ) -> None:
        self._lock_path = lock_path
        self._unavailable = unavailable
        # Called after the commit, once another process's writer may already begin; the batch
        # is told its outcome only when it returns (the WAL fsync of SqliteLedger: see there).
        self._make_durable = make_durable
        self._mutex = threading.Lock()
        self._pending: list[_Job[object]] = []
        self._busy = False
        self._lock_fd: int | None = None

    def run(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(conn)` inside a committed write transaction; its result or its error."""
        job: _Job[T] = _Job(work)
        with self._mutex:
            self._pending.append(job)  # type: ignore[arg-type]
            if not self._busy:
                self._busy = True
                job.lead = True
        if not job.lead:
            job.wake.acquire()
        if job.lead:
            self._lead(conn)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _lead(self, conn: sqlite3.Connection) -> None:
        with self._mutex:
            batch, self._pending = self._pending, []
        try:
            self._commit(conn, batch)
            if self._make_durable is not None:
                self._make_durable()
        except BaseException as exc:
            self._fail(batch, exc)
        finally:
            with self._mutex:
                if self._pending:
                    successor = self._pending[0]
                    successor.lead = True
                    successor.wake.release()
                else:
                    self._busy = False
            for job in batch:
                # The leader's latch is spent (it never waited, or was woken to lead).
                if job.lead:
                    job.lead = False
                else:
                    job.wake.release()

    @staticmethod
    def _fail(batch: list[_Job[object]], exc: BaseException) -> None:
        for job in batch:
            if job.error is None:
                job.error = exc

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job[object]]) -> None:
        with self._between_processes():
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._unavailable() from exc
            try:
                for job in batch:
                    conn.execute("SAVEPOINT job")
                    try:
                        job.result = job.work(conn)
                    except Exception as exc:
                        job.error = exc
                        conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                conn.execute("ROLLBACK")
                raise self._unavailable() from exc
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _between_processes(self) -> Iterator[None]:
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
