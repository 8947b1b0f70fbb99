"""`iqe-sim lab`, the README's main command: both approaches, every pump accepted by a real
FreeRADIUS in EAP-TLS, both negative controls rejected, everything stopped afterwards."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import iqe_sim
from tests.support import openssl

pytestmark = pytest.mark.e2e

PUMPS = 3


@dataclass(frozen=True)
class LabRun:
    result: subprocess.CompletedProcess[str]
    report: dict[str, object]
    workdir: Path


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    base = tmp_path_factory.mktemp("iqe-lab")
    report = base / "report.json"
    workdir = base / "work"
    result = iqe_sim(
        "lab", "--pumps", str(PUMPS), "--report", str(report), "--workdir", str(workdir)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return LabRun(result, json.loads(report.read_text()), workdir)


def test_every_pump_enrolled_by_both_approaches_and_accepted(lab_run: LabRun) -> None:
    report = lab_run.report
    assert report["ok"] is True
    assert report["enrolled"] == 2 * PUMPS
    assert report["failed"] == 0
    assert report["eap_tls_accepted"] == 2 * PUMPS
    assert report["eap_tls_rejected"] == 0
    by_approach = report["by_approach"]
    assert isinstance(by_approach, dict)
    for approach in ("password", "ra"):
        assert by_approach[approach]["enrolled"] == PUMPS
        assert by_approach[approach]["eap_tls_accepted"] == PUMPS
        assert by_approach[approach]["latency_ms"]["p50"] > 0
    pumps = report["pump_results"]
    assert isinstance(pumps, list)
    assert {p["eap_tls"]["accepted"] for p in pumps} == {True}
    assert all(p["eap_tls"]["exit_code"] == 0 for p in pumps)
    assert "result: PASS" in lab_run.result.stdout


def test_negative_controls_rejected_with_their_reasons(lab_run: LabRun) -> None:
    report = lab_run.report
    assert report["negative_controls_total"] == 3
    assert report["negative_controls_rejected"] == 3
    controls = {c["name"]: c for c in report["negative_controls"]}  # type: ignore[attr-defined]
    assert controls["foreign-ca"]["accepted"] is False
    assert "issuer" in controls["foreign-ca"]["reason"]
    assert controls["identity-mismatch"]["accepted"] is False
    assert "does not match" in controls["identity-mismatch"]["reason"]
    # Revocation (issue 6): the pump revoked through the CLI is refused, another still joins.
    assert controls["revoked"]["accepted"] is False
    assert "revoked" in controls["revoked"]["reason"]
    assert "still accepted" in controls["revoked"]["description"]


def test_installed_bundles_verify_with_openssl(lab_run: LabRun) -> None:
    ca = lab_run.workdir / "appliance" / "certs" / "ca-cert.pem"
    folders = sorted((lab_run.workdir / "pumps").glob("*/NPP*"))
    # 2 approaches x PUMPS, plus the foreign-CA control's pump
    assert len(folders) == 2 * PUMPS + 1
    for folder in folders:
        key_mode = stat.S_IMODE((folder / "key.pem").stat().st_mode)
        assert key_mode == 0o600, f"{folder}/key.pem is {key_mode:o}"
        verdict = openssl("verify", "-CAfile", str(ca), str(folder / "cert.pem"))
        subject = openssl("x509", "-noout", "-subject", "-in", str(folder / "cert.pem"))
        assert f"CN = {folder.name}" in subject.stdout.decode()
        if folder.parent.name == "foreign":
            # Negative control beside the positives: its certificate is not from our CA.
            assert verdict.returncode != 0
        else:
            assert verdict.returncode == 0, verdict.stderr.decode()


def test_lab_stops_everything_it_started(lab_run: LabRun) -> None:
    leftovers = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(lab_run.workdir) in cmdline and proc.name != str(os.getpid()):
            leftovers.append(cmdline)
    assert leftovers == []
