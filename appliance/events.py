"""Enrollment failures kept for the operator (dashboard, statistics), written in batches.

A flood of bad requests must not turn into a flood of synchronous database commits, so
failures are queued in memory and a background thread stores them about once a second; when
the queue is full, further failures are only counted (metrics) until it drains.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque

from appliance.clock import Clock
from appliance.ledger import Event, Ledger

log = logging.getLogger(__name__)

FAILURE = "failure"


class EventRecorder:
    def __init__(
        self, ledger: Ledger, clock: Clock, *, interval: float = 1.0, capacity: int = 10_000
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._interval = interval
        self._queue: deque[Event] = deque()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.dropped = 0

    def failure(
        self, *, operation: str, reason: str, detail: str, requester: str, peer: str
    ) -> bool:
        """Queue one failure; False when the queue was full and it was dropped."""
        event = Event(
            at=self._clock(),
            kind=FAILURE,
            operation=operation[:64],
            reason=reason[:64],
            detail=detail[:300],
            requester=requester[:200],
            peer=peer[:64],
        )
        with self._lock:
            if len(self._queue) >= self._capacity:
                self.dropped += 1
                return False
            self._queue.append(event)
            self._ensure_thread()
        return True

    def flush(self) -> None:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
        if not batch:
            return
        try:
            self._ledger.record_events(batch)
        except Exception:
            log.exception("event=events_not_stored count=%d", len(batch))

    def stop(self) -> None:
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            thread.join(timeout=5)
        self.flush()

    def _ensure_thread(self) -> None:
        # Started lazily, in the process that records: a thread does not survive fork().
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._wake.wait(self._interval):
            self.flush()
