"""The operator's view of the fleet: a device is a subject (a pump's CN), shown by its newest
certificate; its history is every certificate it held. Used by the device API, the dashboard,
the metrics and `est-appliance expiring`; no HTTP in here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.clock import Clock
from appliance.ledger import (
    DEVICE_STATES,
    REVOKED,
    SUPERSEDED,
    VALID,
    CertificateQuery,
    Event,
    IssuanceRecord,
    Ledger,
)

MAX_PAGE = 500


@dataclass(frozen=True)
class Device:
    record: IssuanceRecord  # the newest certificate of the subject
    state: str  # one of DEVICE_STATES


@dataclass(frozen=True)
class DevicePage:
    devices: tuple[Device, ...]
    total: int
    page: int
    per_page: int


@dataclass(frozen=True)
class HistoryEntry:
    at: dt.datetime
    event: str  # issued | renewed | superseded | revoked
    serial: str
    detail: str


@dataclass(frozen=True)
class Statistics:
    devices: dict[str, int]  # devices (by their newest certificate) per state
    certificates: dict[str, int]  # every certificate per state
    expiring_days: int
    enrollments: tuple[tuple[str, int], ...]  # (bucket, count), oldest first
    failures: tuple[tuple[str, str, int], ...]  # (bucket, reason, count)
    failures_by_reason: dict[str, int]
    bucket: str  # hour | day
    since: dt.datetime


def state_of(record: IssuanceRecord, now: dt.datetime, expiring_days: int) -> str:
    if record.status in (REVOKED, SUPERSEDED):
        return record.status
    if record.not_after <= now:
        return "expired"
    if record.not_after <= now + dt.timedelta(days=expiring_days):
        return "expiring"
    return VALID


class Fleet:
    def __init__(self, ledger: Ledger, clock: Clock, expiring_days: int = 30) -> None:
        self._ledger = ledger
        self._clock = clock
        self.expiring_days = expiring_days

    def devices(
        self,
        *,
        text: str = "",
        state: str | None = None,
        page: int = 1,
        per_page: int = 50,
        expiring_days: int | None = None,
        latest_per_subject: bool = True,
    ) -> DevicePage:
        if state is not None and state not in DEVICE_STATES:
            raise ValueError(f"state must be one of {', '.join(DEVICE_STATES)}, got {state!r}")
        page = max(1, page)
        per_page = min(max(1, per_page), MAX_PAGE)
        days = self.expiring_days if expiring_days is None else expiring_days
        now = self._clock()
        records, total = self._ledger.search_certificates(
            CertificateQuery(
                now=now,
                expiring_before=now + dt.timedelta(days=days),
                text=text,
                state=state,
                latest_per_subject=latest_per_subject,
                limit=per_page,
                offset=(page - 1) * per_page,
            )
        )
        devices = tuple(Device(r, state_of(r, now, days)) for r in records)
        return DevicePage(devices, total, page, per_page)

    def history(self, subject: str) -> list[HistoryEntry]:
        entries: list[HistoryEntry] = []
        for record in self._ledger.subject_history(subject):
            renewed = record.endpoint == "simplereenroll"
            entries.append(
                HistoryEntry(
                    record.issued_at,
                    "renewed" if renewed else "issued",
                    record.serial,
                    f"{record.endpoint} by {record.requester}"
                    + (f", replaces {record.replaces}" if record.replaces else ""),
                )
            )
            if record.status in (REVOKED, SUPERSEDED) and record.status_changed_at is not None:
                detail = ""
                if record.status == REVOKED:
                    revocation = self._ledger.revocation(record.serial)
                    if revocation is not None:
                        detail = f"reason {revocation.reason} by {revocation.revoked_by}"
                entries.append(
                    HistoryEntry(record.status_changed_at, record.status, record.serial, detail)
                )
        entries.sort(key=lambda e: (e.at, e.event != "issued"))
        return entries

    def statistics(
        self, *, expiring_days: int | None = None, window_days: int = 14, bucket: str = "day"
    ) -> Statistics:
        days = self.expiring_days if expiring_days is None else expiring_days
        chars = 13 if bucket == "hour" else 10
        now = self._clock()
        soon = now + dt.timedelta(days=days)
        since = now - dt.timedelta(days=window_days)
        if bucket == "day":
            since = since.replace(hour=0, minute=0, second=0, microsecond=0)
        failures = tuple(self._ledger.event_counts("failure", since, chars))
        by_reason: dict[str, int] = {}
        for _bucket, reason, count in failures:
            by_reason[reason] = by_reason.get(reason, 0) + count
        return Statistics(
            devices=self._ledger.state_counts(now, soon, latest_per_subject=True),
            certificates=self._ledger.state_counts(now, soon, latest_per_subject=False),
            expiring_days=days,
            enrollments=tuple(self._ledger.issuance_counts(since, chars)),
            failures=failures,
            failures_by_reason=by_reason,
            bucket="hour" if chars == 13 else "day",
            since=since,
        )

    def recent_failures(self, limit: int = 10) -> Sequence[Event]:
        return self._ledger.recent_events("failure", limit)

    def recent_enrollments(self, limit: int = 10) -> Sequence[IssuanceRecord]:
        return self._ledger.certificates(limit=limit)


def device_json(device: Device) -> dict[str, object]:
    r = device.record
    return {
        "subject": r.subject,
        "serial": r.serial,
        "state": device.state,
        "status": r.status,
        "not_before": r.not_before.isoformat(),
        "not_after": r.not_after.isoformat(),
        "issued_at": r.issued_at.isoformat(),
        "requester": r.requester,
        "endpoint": r.endpoint,
        "profile": r.profile,
        "replaces": r.replaces,
        "sans": list(r.sans),
    }
