"""The ledger methods of the certificate lifecycle on both backends (SQLite and a real
PostgreSQL, with the ledger suite's fixtures): revocation, device queries, statistics, failure
events and dashboard sessions — the same SQL must mean the same on both."""

from __future__ import annotations

import datetime as dt

from appliance.ledger import AdminSession, CertificateQuery, Event, IssuanceRecord, Ledger
from tests.ledger.conftest import ledger, ledger_config, postgres  # noqa: F401 - fixtures

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def issue(book: Ledger, serial: str, cn: str, *, at: dt.datetime, days: int = 365) -> None:
    book.record_issuance(
        IssuanceRecord(
            serial=serial, subject=f"CN={cn}", sans=(), not_before=at,
            not_after=at + dt.timedelta(days=days), requester="CN=RA",
            auth_method="client-certificate",
            endpoint="simpleenroll", issued_at=at, der=b"x",
        )
    )  # fmt: skip


def query(**kwargs: object) -> CertificateQuery:
    return CertificateQuery(now=NOW, expiring_before=NOW + dt.timedelta(days=30), **kwargs)  # type: ignore[arg-type]


def test_revocation_devices_and_counts(ledger: Ledger) -> None:  # noqa: F811 - fixture
    issue(ledger, "a1", "NPP_1", at=NOW - dt.timedelta(days=10))
    issue(ledger, "a2", "NPP_1", at=NOW - dt.timedelta(days=1))  # newer certificate, same pump
    issue(ledger, "b1", "NPP%2", at=NOW - dt.timedelta(days=350))  # expiring within 30 days
    issue(ledger, "c1", "NPPX3", at=NOW - dt.timedelta(days=400))  # expired
    revoked = ledger.revoke("a2", "keyCompromise", NOW, "cli:ops")
    assert revoked is not None and revoked.status == "revoked"
    again = ledger.revoke("a2", "superseded", NOW + dt.timedelta(hours=1), "cli:other")
    assert again is not None
    assert ledger.revoke("ffff", "keyCompromise", NOW, "cli:ops") is None
    (entry,) = ledger.revocations(NOW)
    assert (entry.serial, entry.reason, entry.revoked_by) == ("a2", "keyCompromise", "cli:ops")
    assert ledger.revocation("a1") is None

    found, total = ledger.search_certificates(query())
    assert total == 3  # one row per device
    assert {r.serial for r in found} == {"a2", "b1", "c1"}
    # LIKE wildcards in the search text are literal characters.
    assert ledger.search_certificates(query(text="npp_"))[1] == 1
    assert ledger.search_certificates(query(text="npp%"))[1] == 1
    assert ledger.search_certificates(query(text="A2"))[0][0].serial == "a2"  # serial prefix
    assert ledger.search_certificates(query(state="expiring"))[0][0].serial == "b1"
    assert ledger.search_certificates(query(state="expired"))[0][0].serial == "c1"
    assert ledger.search_certificates(query(latest_per_subject=False))[1] == 4
    page, total = ledger.search_certificates(query(limit=2, offset=2))
    assert total == 3 and len(page) == 1
    counts = ledger.state_counts(NOW, NOW + dt.timedelta(days=30), latest_per_subject=True)
    assert counts == {"valid": 0, "expiring": 1, "expired": 1, "superseded": 0, "revoked": 1}
    all_counts = ledger.state_counts(NOW, NOW + dt.timedelta(days=30), latest_per_subject=False)
    assert all_counts["valid"] == 1
    assert [r.serial for r in ledger.subject_history("CN=NPP_1")] == ["a1", "a2"]
    days = dict(ledger.issuance_counts(NOW - dt.timedelta(days=11), 10))
    assert days == {"2026-02-19": 1, "2026-02-28": 1}


def test_events_and_sessions(ledger: Ledger) -> None:  # noqa: F811 - fixture
    events = [
        Event(NOW - dt.timedelta(hours=h), "failure", "simpleenroll", reason, "d", "r", "127.0.0.1")
        for h, reason in ((1, "bad_request"), (2, "bad_request"), (30, "forbidden"))
    ]
    ledger.record_events(events)
    assert [e.reason for e in ledger.recent_events("failure", 2)] == ["bad_request", "bad_request"]
    counts = ledger.event_counts("failure", NOW - dt.timedelta(days=2), 10)
    assert counts == [("2026-02-28", "forbidden", 1), ("2026-03-01", "bad_request", 2)]
    assert ledger.prune_events(NOW - dt.timedelta(hours=24)) == 1

    session = AdminSession("h1", "ops", "csrf", NOW, NOW, NOW + dt.timedelta(hours=12))
    ledger.create_session(session)
    assert ledger.find_session("h1") == session
    ledger.touch_session("h1", NOW + dt.timedelta(minutes=5))
    found = ledger.find_session("h1")
    assert found is not None and found.last_seen == NOW + dt.timedelta(minutes=5)
    assert ledger.prune_sessions(NOW + dt.timedelta(hours=13)) == 1
    assert ledger.find_session("h1") is None
    ledger.create_session(session)
    ledger.delete_session("h1")
    assert ledger.find_session("h1") is None
