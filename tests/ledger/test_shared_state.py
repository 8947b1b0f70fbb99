"""The ledger state teammates added for revocation, the dashboard and lockout (issues 6, 7),
on both backends: what one node writes, every other node reads."""

from __future__ import annotations

import datetime as dt

from appliance.config import LedgerConfig
from appliance.ledger import ADDRESS_SCOPE, REVOKED, CertificateQuery, Event, Ledger
from appliance.ledger_factory import open_ledger
from tests.ledger.test_ledger import NOW, record


def test_revocations_keep_the_first_reason(ledger: Ledger) -> None:
    r = record()
    live = record("CN=pump-2")
    ledger.record_issuance(r)
    ledger.record_issuance(live)
    revoked = ledger.revoke(r.serial, "keyCompromise", NOW, "operator")
    assert revoked is not None and revoked.status == REVOKED
    ledger.revoke(r.serial, "superseded", NOW + dt.timedelta(hours=1), "someone")
    found = ledger.revocation(r.serial)
    assert found is not None and found.reason == "keyCompromise" and found.revoked_at == NOW
    assert [x.serial for x in ledger.revocations(NOW)] == [r.serial]
    assert ledger.revocation(live.serial) is None
    assert ledger.revoke("abcdef", "keyCompromise", NOW, "operator") is None


def test_search_and_counts(ledger: Ledger) -> None:
    ledger.record_issuance(record("CN=ward-a_1", issued=NOW - dt.timedelta(hours=2)))
    ledger.record_issuance(record("CN=ward-b", issued=NOW - dt.timedelta(hours=1)))
    ledger.record_issuance(record("CN=icu", issued=NOW, days=5))
    soon = NOW + dt.timedelta(days=30)
    rows, total = ledger.search_certificates(
        CertificateQuery(now=NOW, expiring_before=soon, text="WARD")
    )
    assert total == 2 and [r.subject for r in rows] == ["CN=ward-b", "CN=ward-a_1"]
    # LIKE wildcards in the search text are literal on both backends.
    _rows, total = ledger.search_certificates(
        CertificateQuery(now=NOW, expiring_before=soon, text="a_1")
    )
    assert total == 1
    _rows, total = ledger.search_certificates(
        CertificateQuery(now=NOW, expiring_before=soon, text="%")
    )
    assert total == 0
    counts = ledger.state_counts(NOW, soon, latest_per_subject=True)
    assert counts["valid"] == 2 and counts["expiring"] == 1 and counts["revoked"] == 0
    buckets = ledger.issuance_counts(NOW - dt.timedelta(days=1), 13)
    assert buckets == [("2025-03-01T10", 1), ("2025-03-01T11", 1), ("2025-03-01T12", 1)]


def test_events_are_counted_and_pruned(ledger: Ledger) -> None:
    events = [
        Event(NOW - dt.timedelta(days=2), "failure", "simpleenroll", "bad-csr", "d", "r", "p"),
        Event(NOW, "failure", "simpleenroll", "bad-csr", "d", "r", "p"),
        Event(NOW, "failure", "bootstrap", "unauthorized", "d", "r", "p"),
    ]
    ledger.record_events(events)
    assert [e.reason for e in ledger.recent_events("failure", 2)] == ["unauthorized", "bad-csr"]
    assert ledger.event_counts("failure", NOW - dt.timedelta(hours=1), 10) == [
        ("2025-03-01", "bad-csr", 1),
        ("2025-03-01", "unauthorized", 1),
    ]
    assert ledger.prune_events(NOW - dt.timedelta(days=1)) == 1


def test_login_failures_are_shared_counters(ledger_config: LedgerConfig) -> None:
    """Lockout counters live in the ledger so every node counts the same attempts."""
    node_a, node_b = open_ledger(ledger_config), open_ledger(ledger_config)
    forget = NOW - dt.timedelta(minutes=15)
    try:
        assert node_a.count_login_failure(ADDRESS_SCOPE, "192.0.2.7", NOW, forget) == 1
        assert node_b.count_login_failure(ADDRESS_SCOPE, "192.0.2.7", NOW, forget) == 2
        assert node_b.count_login_failure(ADDRESS_SCOPE, "192.0.2.8", NOW, forget) == 1
        node_a.lock_login(ADDRESS_SCOPE, "192.0.2.7", NOW + dt.timedelta(minutes=5))
        state = node_b.login_throttle(ADDRESS_SCOPE, "192.0.2.7")
        assert state is not None and state.failures == 2
        assert state.locked_until == NOW + dt.timedelta(minutes=5)
    finally:
        node_a.close()
        node_b.close()
