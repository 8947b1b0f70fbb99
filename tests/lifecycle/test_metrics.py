"""GET /metrics is Prometheus text that prometheus-client's own parser reads, and its counters
move after an enrollment; certificates by state and the CRL age are there."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lifecycle.conftest import enroll
from tests.support import RunningAppliance, curl, make_lab, running_appliance


def scrape(appliance: RunningAppliance) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = curl(
        ["--cacert", str(appliance.lab.ca_cert), appliance.base + "/metrics"]
    )
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


def test_metrics_parse_and_move_after_an_enrollment(
    appliance: RunningAppliance, work: Path
) -> None:
    before = scrape(appliance)
    enroll(appliance, "NPPMETRIC1", work)
    after = scrape(appliance)
    ok = {"endpoint": "simpleenroll", "status": "200"}
    assert value(after, "est_requests_total", **ok) == value(before, "est_requests_total", **ok) + 1
    count = "est_enrollment_duration_seconds_count"
    assert (
        value(after, count, operation="simpleenroll")
        == value(before, count, operation="simpleenroll") + 1
    )
    assert (
        value(after, "est_certificates", state="valid")
        == value(before, "est_certificates", state="valid") + 1
    )
    # Control: an endpoint nobody called did not move.
    assert value(after, "est_requests_total", endpoint="serverkeygen", status="200") == 0
    assert 0 <= value(after, "est_crl_age_seconds") < 24 * 3600
    assert value(after, "est_crl_number") >= 1


def test_auth_failures_are_counted(appliance: RunningAppliance, work: Path) -> None:
    before = scrape(appliance)
    status, _h, _b = curl(
        ["--cacert", str(appliance.lab.ca_cert), "-H", "Content-Type: application/pkcs10",
         "--data", "x", appliance.url("simpleenroll")]
    )  # fmt: skip
    assert status == 401
    after = scrape(appliance)
    labels = {"endpoint": "simpleenroll", "reason": "unauthenticated"}
    assert (
        value(after, "est_auth_failures_total", **labels)
        == value(before, "est_auth_failures_total", **labels) + 1
    )


def test_counters_are_summed_over_worker_processes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With two workers on one port, every scrape (whichever worker answers) reports the
    enrollments of both (prometheus-client multiprocess mode)."""
    lab = make_lab(tmp_path_factory.mktemp("metrics-workers"), {"server": {"workers": 2}})
    with running_appliance(lab) as appliance:
        work = lab.folder / "work"
        work.mkdir()
        for i in range(6):  # a new connection each: they alternate between the workers
            enroll(appliance, f"NPPWORKER{i}", work)
        ok = {"endpoint": "simpleenroll", "status": "200"}
        seen = {value(scrape(appliance), "est_requests_total", **ok) for _ in range(6)}
        assert seen == {6.0}
        pids = {p.name.split("_")[-1] for p in (lab.folder / "var" / "metrics").glob("*.db")}
        assert len(pids) >= 2  # control: more than one process really counted
