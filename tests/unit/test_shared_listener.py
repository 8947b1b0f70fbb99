"""The least-loaded rule of shared_listener.ConnectionShare, seen from two workers."""

from __future__ import annotations

import copy

from appliance.shared_listener import ConnectionShare


def _two_workers() -> tuple[ConnectionShare, ConnectionShare]:
    share = ConnectionShare(2)
    first = copy.copy(share)  # a second view of the same shared counters, as after fork()
    first.attach(0)
    second = copy.copy(share)
    second.attach(1)
    return first, second


def test_the_worker_with_fewer_connections_accepts() -> None:
    first, second = _two_workers()
    assert first.may_accept() and second.may_accept()
    first.opened()
    assert not first.may_accept() and second.may_accept()
    second.opened()
    second.opened()
    assert first.may_accept() and not second.may_accept()
    second.closed()
    second.closed()
    assert second.may_accept()


def test_equal_counts_go_to_the_worker_that_accepted_least_recently() -> None:
    first, second = _two_workers()
    first.opened()
    first.closed()
    # Both hold no connection now; the next one is the second worker's.
    assert not first.may_accept() and second.may_accept()
    second.opened()
    second.closed()
    assert first.may_accept() and not second.may_accept()


def test_a_dead_worker_is_neither_the_emptiest_nor_watching() -> None:
    first, second = _two_workers()
    first.opened()
    first.set_listening(True)
    second.set_listening(True)
    assert not first.may_accept() and first.others_listening()
    first.forget(1)  # the supervisor, when worker 1 died
    assert first.may_accept() and not first.others_listening()
    second.attach(1)  # its successor
    assert second.may_accept() and first.others_listening()
