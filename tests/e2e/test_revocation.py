"""The acceptance of revocation: a pump revoked through the CLI (and another through the device
API) is listed by `openssl crl` and rejected by FreeRADIUS (check_crl = yes, the appliance's CRL
file) on its next EAP-TLS authentication, while the other pumps are still accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.eapol import authenticate
from simulator.radius import RadiusServer
from tests.e2e.test_radius import enrolled_pump
from tests.lifecycle.conftest import ADMIN_PASSWORD, ADMIN_USER, admin_hash
from tests.support import Lab, RunningAppliance, curl, make_lab, openssl, run_cli, start_appliance

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ops_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(
        tmp_path_factory.mktemp("revocation"), {"admin": {"users": {ADMIN_USER: admin_hash()}}}
    )


@pytest.fixture(scope="module")
def ops_appliance(ops_lab: Lab) -> Iterator[RunningAppliance]:
    running = start_appliance(ops_lab)
    yield running
    running.stop()


def crl_serials(crl: Path) -> str:
    result = openssl("crl", "-in", str(crl), "-noout", "-text")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().upper()


def test_revoked_pump_is_rejected_by_eap_tls_and_the_others_accepted(
    ops_appliance: RunningAppliance, out: Path
) -> None:
    lab = ops_appliance.lab
    crl = lab.folder / "var" / "crl" / "ca-crl.pem"
    assert crl.is_file(), "the appliance publishes a CRL before it listens"
    pumps = [enrolled_pump(ops_appliance, f"NPPREV{i}", out) for i in (1, 2, 3)]
    serial = {p.serial: format(p.certificate.serial_number, "x") for p in pumps if p.certificate}

    with RadiusServer(lab.ca_cert, out / "radius", crl_files=[crl]) as radius:
        # Control: with the appliance's (empty) CRL every pump is accepted.
        assert all(authenticate(p, radius).accepted for p in pumps)

        # 1. Revoked through the CLI.
        run_cli("revoke", "--subject", "NPPREV1", "--reason", "keyCompromise",
                "--config", str(lab.config))  # fmt: skip
        assert serial["NPPREV1"].upper() in crl_serials(crl)
        assert serial["NPPREV2"].upper() not in crl_serials(crl)
        radius.restart()  # FreeRADIUS reads CRLs at start
        verdict = authenticate(pumps[0], radius, explain=True)
        assert not verdict.accepted
        assert "revoked" in verdict.reason
        assert authenticate(pumps[1], radius).accepted
        assert authenticate(pumps[2], radius).accepted

        # 2. Revoked through the device API.
        status, _h, body = curl(
            ["--cacert", str(lab.ca_cert), "-u", f"{ADMIN_USER}:{ADMIN_PASSWORD}",
             "-X", "POST", "-H", "Content-Type: application/json",
             "--data", '{"reason": "cessationOfOperation"}',
             f"{ops_appliance.base}/api/devices/NPPREV2/revoke"]
        )  # fmt: skip
        assert status == 200, body
        assert json.loads(body)["revoked"] == [serial["NPPREV2"]]
        assert serial["NPPREV2"].upper() in crl_serials(crl)
        radius.restart()
        assert not authenticate(pumps[0], radius).accepted
        verdict = authenticate(pumps[1], radius, explain=True)
        assert not verdict.accepted and "revoked" in verdict.reason
        assert authenticate(pumps[2], radius).accepted  # the untouched pump still joins
