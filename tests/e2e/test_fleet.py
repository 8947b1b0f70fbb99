"""`iqe-sim fleet`: many pumps at once, summary and JSON report; EAP-TLS for each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import iqe_sim
from tests.support import LAB_PASSWORD, LAB_USER, RunningAppliance

pytestmark = pytest.mark.e2e


def test_fleet_by_ra_with_eap_tls(appliance: RunningAppliance, out: Path) -> None:
    report = out / "fleet.json"
    lab = appliance.lab
    result = iqe_sim(
        "fleet", "--url", appliance.base, "--ca-file", str(lab.ca_cert), "--approach", "ra",
        "--ra-cert", str(lab.ra_cert), "--ra-key", str(lab.ra_key),
        "--pumps", "6", "--concurrency", "3", "--eap-tls", "--eap-concurrency", "4",
        "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FreeRADIUS (EAP-TLS, 4 threads)" in result.stdout
    data = json.loads(report.read_text())
    assert data["enrolled"] == 6
    assert data["failed"] == 0
    assert data["eap_tls_accepted"] == 6
    assert data["eap_tls_rejected"] == 0
    assert data["eap_concurrency"] == 4
    # Every pump proven by its own Access-Accept: eapol_test exit 0 and a final SUCCESS.
    assert sorted(r["eap_tls"]["identity"] for r in data["pump_results"]) == sorted(
        r["serial"] for r in data["pump_results"]
    )
    assert all(r["eap_tls"]["exit_code"] == 0 for r in data["pump_results"])
    latency = data["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert "p95 ms" in result.stdout


def test_fleet_with_a_wrong_password_reports_failures_by_branch(
    appliance: RunningAppliance, out: Path
) -> None:
    report = out / "fleet.json"
    common = ["fleet", "--url", appliance.base, "--ca-file", str(appliance.lab.ca_cert)]
    common += ["--user", LAB_USER, "--pumps", "3", "--concurrency", "3", "--report", str(report)]
    # With EAP-TLS the pipeline must still end when every enrollment fails, and authenticate
    # only the pumps that were enrolled.
    common += ["--eap-tls"]
    bad = iqe_sim(*common, "--password", "wrong-password-123")
    assert bad.returncode == 1
    data = json.loads(report.read_text())
    assert data["enrolled"] == 0
    assert data["failed_by_reason"] == {"401-credentials": 3}
    assert data["eap_tls_accepted"] == data["eap_tls_rejected"] == 0
    assert "user name or password is wrong" in bad.stdout
    good = iqe_sim(*common, "--password", LAB_PASSWORD)
    assert good.returncode == 0, good.stdout + good.stderr
    data = json.loads(report.read_text())
    assert data["enrolled"] == data["eap_tls_accepted"] == 3
