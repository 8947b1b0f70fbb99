"""The `Ledger` protocol's behaviour, identical on SQLite and PostgreSQL (conftest: `ledger`
runs each test on both)."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time

import pytest

from appliance.config import LedgerConfig
from appliance.ledger import (
    REVOKED,
    SUPERSEDED,
    VALID,
    ApprovalState,
    DuplicateSerial,
    IssuanceRecord,
    Ledger,
    PendingRequest,
    SubjectTaken,
)
from appliance.ledger_factory import open_ledger

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def record(
    subject: str = "CN=pump-1",
    *,
    issued: dt.datetime = NOW,
    days: int = 365,
    serial: str | None = None,
    status: str = VALID,
) -> IssuanceRecord:
    return IssuanceRecord(
        serial=serial or secrets.token_hex(19).lstrip("0"),
        subject=subject,
        sans=("DNS:pump-1.example", "IP:10.0.0.1"),
        not_before=issued,
        not_after=issued + dt.timedelta(days=days),
        requester="iqe-ra",
        auth_method="client-certificate",
        endpoint="simpleenroll",
        issued_at=issued,
        der=secrets.token_bytes(300),
        status=status,
        profile="",
    )


def pending(fingerprint: str = "fp-1") -> PendingRequest:
    return PendingRequest(
        fingerprint=fingerprint,
        profile="ward",
        operation="simpleenroll",
        subject="CN=pump-9",
        requester="iqe-ra",
        csr_der=b"\x30\x03csr",
        created=NOW,
    )


def test_a_record_reads_back_field_for_field(ledger: Ledger) -> None:
    written = record()
    ledger.record_issuance(written)
    assert ledger.find(written.serial) == written
    assert ledger.find(written.serial.upper()) == written  # serials are case-insensitive hex
    assert ledger.find("ffff") is None  # negative control
    assert ledger.count() == 1


def test_a_serial_is_recorded_once(ledger: Ledger) -> None:
    first = record(serial="1234abcd")
    ledger.record_issuance(first)
    with pytest.raises(DuplicateSerial):
        ledger.record_issuance(record(serial="1234abcd", subject="CN=other"))
    assert ledger.count() == 1
    assert ledger.find("1234abcd") == first  # the first one stays untouched


def test_certificates_are_listed_newest_first_in_pages(ledger: Ledger) -> None:
    written = [record(f"CN=p{i}", issued=NOW + dt.timedelta(seconds=i)) for i in range(5)]
    for r in written:
        ledger.record_issuance(r)
    assert [r.serial for r in ledger.certificates()] == [r.serial for r in reversed(written)]
    assert [r.subject for r in ledger.certificates(limit=2, offset=1)] == ["CN=p3", "CN=p2"]


def test_fractional_and_whole_seconds_order_as_times(ledger: Ledger) -> None:
    # ISO text times: "12:00:00+00:00" must sort before "12:00:00.500000+00:00" on both.
    whole = record("CN=a", issued=NOW)
    fraction = record("CN=b", issued=NOW + dt.timedelta(microseconds=500_000))
    ledger.record_issuance(fraction)
    ledger.record_issuance(whole)
    assert [r.subject for r in ledger.certificates()] == ["CN=b", "CN=a"]


def test_valid_for_subject_skips_expired_and_retired(ledger: Ledger) -> None:
    old = record(issued=NOW - dt.timedelta(days=400), days=30)  # expired
    current = record(issued=NOW - dt.timedelta(days=1))
    newer = record(issued=NOW)
    other = record("CN=pump-2")
    for r in (old, current, newer, other):
        ledger.record_issuance(r)
    assert [r.serial for r in ledger.valid_for_subject("CN=pump-1", NOW)] == [
        newer.serial,
        current.serial,
    ]
    assert ledger.set_status(current.serial, SUPERSEDED, NOW)
    assert [r.serial for r in ledger.valid_for_subject("CN=pump-1", NOW)] == [newer.serial]


def test_issuance_retires_what_it_replaces_in_one_step(ledger: Ledger) -> None:
    first = record(issued=NOW - dt.timedelta(days=2))
    revoked = record(issued=NOW - dt.timedelta(days=1), status=REVOKED)
    ledger.record_issuance(first)
    ledger.record_issuance(revoked)
    renewal = record(issued=NOW)
    ledger.record_issuance(renewal, retire=(first.serial, revoked.serial), retire_as=SUPERSEDED)
    found = ledger.find(first.serial)
    assert found is not None and found.status == SUPERSEDED
    assert found.status_changed_at == NOW
    still = ledger.find(revoked.serial)
    assert still is not None and still.status == REVOKED  # only valid ones are retired


def test_a_duplicate_serial_retires_nothing(ledger: Ledger) -> None:
    first = record()
    ledger.record_issuance(first)
    with pytest.raises(DuplicateSerial):
        ledger.record_issuance(record(serial=first.serial), retire=(first.serial,))
    found = ledger.find(first.serial)
    assert found is not None and found.status == VALID  # the failed write rolled back whole


def test_reject_policy_is_decided_inside_the_write(ledger: Ledger) -> None:
    """RFC 7030 duplicate-subject policy `reject` (issue 5), atomic: of many writers for one
    subject at once, exactly one is recorded; an expired or retired one does not count."""
    expired = record(issued=NOW - dt.timedelta(days=400), days=30)
    ledger.record_issuance(expired)
    outcomes: list[str] = []
    lock = threading.Lock()

    def enroll() -> None:
        try:
            ledger.record_issuance(record(issued=NOW), subject_policy="reject")
            result = "recorded"
        except SubjectTaken as taken:
            result = f"taken:{taken.serial}"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=enroll) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("recorded") == 1, outcomes
    (winner,) = ledger.valid_for_subject("CN=pump-1", NOW)
    assert sorted(set(outcomes) - {"recorded"}) == [f"taken:{winner.serial}"]
    # Negative control: another subject, and the same subject under `allow`, are recorded.
    ledger.record_issuance(record("CN=pump-2"), subject_policy="reject")
    ledger.record_issuance(record(issued=NOW), subject_policy="allow")


def test_supersede_policy_retires_every_valid_certificate_of_the_subject(ledger: Ledger) -> None:
    first, second = record(issued=NOW - dt.timedelta(days=2)), record(issued=NOW)
    ledger.record_issuance(first)
    ledger.record_issuance(second)  # recorded under `allow`: two valid at once
    third = record(issued=NOW + dt.timedelta(seconds=1))
    # The caller knew only of `first`; the ledger retires `second` too, in the same write.
    ledger.record_issuance(third, retire=(first.serial,), subject_policy="supersede")
    assert [r.serial for r in ledger.valid_for_subject("CN=pump-1", NOW)] == [third.serial]
    for old in (first, second):
        found = ledger.find(old.serial)
        assert found is not None and found.status == SUPERSEDED


def test_set_status(ledger: Ledger) -> None:
    r = record()
    ledger.record_issuance(r)
    assert ledger.set_status(r.serial, REVOKED, NOW)
    assert not ledger.set_status("abcdef", REVOKED, NOW)
    with pytest.raises(ValueError, match="unknown certificate status"):
        ledger.set_status(r.serial, "lost", NOW)


def test_pending_requests_are_recorded_once_and_decided_once(ledger: Ledger) -> None:
    first = ledger.add_pending(pending())
    again = ledger.add_pending(pending())
    assert again.id == first.id and first.state is ApprovalState.PENDING
    other = ledger.add_pending(pending("fp-2"))
    assert other.id != first.id
    decided = ledger.decide(first.id, ApprovalState.APPROVED, NOW)
    assert decided.state is ApprovalState.APPROVED and decided.decided == NOW
    with pytest.raises(ValueError, match="already approved"):
        ledger.decide(first.id, ApprovalState.REJECTED, NOW)
    with pytest.raises(ValueError, match="no request"):
        ledger.decide(9999, ApprovalState.APPROVED, NOW)
    ledger.mark_issued(first.id, "abc123")
    found = ledger.find_approval("ward", "simpleenroll", "fp-1")
    assert found is not None and found.serial == "abc123" and found.csr_der == b"\x30\x03csr"
    assert [a.id for a in ledger.approvals(ApprovalState.PENDING)] == [other.id]
    assert [a.id for a in ledger.approvals()] == [first.id, other.id]


def test_crl_numbers_are_unique_and_increasing_under_concurrency(ledger: Ledger) -> None:
    assert ledger.last_crl_number() == 0
    numbers: list[int] = []
    lock = threading.Lock()

    def allocate() -> None:
        for _ in range(20):
            n = ledger.next_crl_number()
            with lock:
                numbers.append(n)

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 121))
    assert ledger.last_crl_number() == 120
    ledger.restore_crl_number(50)  # never goes backwards
    assert ledger.next_crl_number() == 121
    ledger.restore_crl_number(500)
    assert ledger.next_crl_number() == 501


def test_crl_generation_is_exclusive_across_ledger_instances(ledger_config: LedgerConfig) -> None:
    """Two instances on one database stand for two nodes (or two workers)."""
    nodes = [open_ledger(ledger_config), open_ledger(ledger_config)]
    inside = 0
    overlaps = 0
    mutex = threading.Lock()

    def generate(node: Ledger) -> None:
        nonlocal inside, overlaps
        for _ in range(5):
            with node.crl_generation():
                with mutex:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0.01)
                with mutex:
                    inside -= 1

    try:
        threads = [threading.Thread(target=generate, args=(n,)) for n in nodes * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for n in nodes:
            n.close()
    assert overlaps == 0


def test_a_write_on_one_node_is_read_at_once_on_another(ledger_config: LedgerConfig) -> None:
    node_a, node_b = open_ledger(ledger_config), open_ledger(ledger_config)
    try:
        r = record()
        node_a.record_issuance(r)
        seen = node_b.find(r.serial)
        assert seen is not None and seen.status == VALID
        assert node_a.set_status(r.serial, REVOKED, NOW)
        seen = node_b.find(r.serial)
        assert seen is not None and seen.status == REVOKED
        with pytest.raises(DuplicateSerial):
            node_b.record_issuance(record(serial=r.serial))
    finally:
        node_a.close()
        node_b.close()
