"""GET /metrics in the Prometheus text format (prometheus-client).

Worker processes (workers.py) each count their own requests, so counters and histograms use
prometheus-client's multiprocess mode: every process writes its values to a small mmap file in
`metrics.dir` and /metrics sums the files, whichever worker answers the scrape. The directory is
emptied when the appliance starts (server.serve), before any worker forks; files of a worker
that died stay, so totals never go backwards when the supervisor replaces it.

Certificates by state and the CRL's age are not counted by anyone: they are read from the
ledger and the CRL file at scrape time by a custom collector, which every worker sees alike.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.clock import Clock
from appliance.config import EST_OPERATIONS
from appliance.crl import CrlPublisher
from appliance.devices import Fleet

_ENV = "PROMETHEUS_MULTIPROC_DIR"
ENROLLING = frozenset({"simpleenroll", "simplereenroll", "serverkeygen", "bootstrap"})
# Enrollment takes milliseconds; a slow Argon2 check or a busy ledger shows in the upper buckets.
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def enable_multiprocess(directory: Path) -> None:
    """Switch prometheus-client to multiprocess mode with a clean `directory`. Call once in
    the serving parent before any metric is created and before workers fork."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[_ENV] = str(directory)
    # prometheus-client picks the value class when it is imported, from this environment
    # variable; the appliance imports it before reading config.yaml, so choose again here.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def endpoint_label(segments: tuple[str, ...]) -> str:
    """A bounded label: the EST operation name, or `unknown` (never the raw client path)."""
    name = segments[-1] if segments else ""
    return name if name in EST_OPERATIONS else "unknown"


class Metrics:
    def __init__(self, fleet: Fleet, crl: CrlPublisher, clock: Clock) -> None:
        self._fleet = fleet
        self._crl = crl
        self._clock = clock
        # registry=None: in multiprocess mode the files are the registry; otherwise the
        # per-process registry below collects these objects.
        self.requests = Counter(
            "est_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=None,
        )
        self.enrollment_seconds = Histogram(
            "est_enrollment_duration_seconds",
            "Time to answer a successful enrollment (simpleenroll, simplereenroll, "
            "serverkeygen, bootstrap)",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.auth_failures = Counter(
            "est_auth_failures",
            "Refused credentials (401/403) by endpoint and reason",
            ["endpoint", "reason"],
            registry=None,
        )
        self.revocations = Counter(
            "est_revocations", "Certificates revoked, by RFC 5280 reason", ["reason"], registry=None
        )
        self._directory = os.environ.get(_ENV)

    def observe(self, endpoint: str, status: int, seconds: float, reason: str = "-") -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status == 200 and endpoint in ENROLLING:
            self.enrollment_seconds.labels(endpoint).observe(seconds)
        if status in (401, 403):
            self.auth_failures.labels(endpoint, reason).inc()

    def render(self) -> tuple[bytes, str]:
        registry = CollectorRegistry()
        if self._directory:
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                registry, path=self._directory
            )
        else:
            for metric in (
                self.requests,
                self.enrollment_seconds,
                self.auth_failures,
                self.revocations,
            ):
                registry.register(metric)
        registry.register(_StateCollector(self._fleet, self._crl, self._clock))
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _StateCollector(Collector):
    def __init__(self, fleet: Fleet, crl: CrlPublisher, clock: Clock) -> None:
        self._fleet = fleet
        self._crl = crl
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        stats = self._fleet.statistics(window_days=1)
        certificates = GaugeMetricFamily(
            "est_certificates",
            f"Issued certificates by state (expiring: within {stats.expiring_days} days)",
            labels=["state"],
        )
        for state, count in stats.certificates.items():
            certificates.add_metric([state], count)
        yield certificates
        devices = GaugeMetricFamily(
            "est_devices",
            "Devices (subjects) by the state of their newest certificate",
            labels=["state"],
        )
        for state, count in stats.devices.items():
            devices.add_metric([state], count)
        yield devices
        published = self._crl.current()
        now = self._clock()
        yield GaugeMetricFamily(
            "est_crl_age_seconds",
            "Seconds since the published CRL's thisUpdate",
            value=(now - published.this_update).total_seconds(),
        )
        yield GaugeMetricFamily(
            "est_crl_next_update_seconds",
            "Seconds until the published CRL's nextUpdate",
            value=(published.next_update - now).total_seconds(),
        )
        yield GaugeMetricFamily(
            "est_crl_number", "The published CRL's number", value=published.number
        )
        yield GaugeMetricFamily(
            "est_crl_entries", "Certificates listed in the published CRL", value=published.entries
        )
