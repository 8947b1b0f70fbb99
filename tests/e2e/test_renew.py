"""`iqe-sim renew`: a pump renews with its current certificate (RFC 7030 §4.2.2
simplereenroll) and the renewed certificate passes EAP-TLS against a real FreeRADIUS."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509

from appliance.ledger import SUPERSEDED, VALID, SqliteLedger
from tests.e2e.conftest import iqe_sim
from tests.support import Lab, RunningAppliance

pytestmark = pytest.mark.e2e


def _enroll(appliance: RunningAppliance, lab: Lab, serial: str, out: Path) -> x509.Certificate:
    result = iqe_sim(
        "enroll",
        "--url",
        appliance.base,
        "--ca-file",
        str(lab.ca_cert),
        "--approach",
        "ra",
        "--ra-cert",
        str(lab.ra_cert),
        "--ra-key",
        str(lab.ra_key),
        "--serial",
        serial,
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())


def test_renew_then_eap_tls_rfc7030_4_2_2(appliance: RunningAppliance, lab: Lab, out: Path) -> None:
    """Renew (same key): the new certificate is installed, linked to the old one in the
    ledger, and authenticates by EAP-TLS; the superseded old certificate cannot renew again."""
    bundle = out / "NPP801"
    old = _enroll(appliance, lab, "NPP801", bundle)
    shutil.copytree(bundle, out / "old-bundle")
    old_key = (bundle / "key.pem").read_bytes()

    result = iqe_sim("renew", "--url", appliance.base, "--pump", str(bundle), "--eap-tls")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"NPP801: renewed, certificate {old.serial_number:x} replaced by" in result.stdout
    assert "EAP-TLS: NPP801: Access-Accept" in result.stdout
    new = x509.load_pem_x509_certificate((bundle / "cert.pem").read_bytes())
    assert new.serial_number != old.serial_number
    assert (bundle / "key.pem").read_bytes() == old_key  # renew keeps the key

    ledger = SqliteLedger(lab.ledger)
    try:
        record = ledger.find(format(new.serial_number, "x"))
        assert record is not None and record.replaces == format(old.serial_number, "x")
        assert record.status == VALID
        assert ledger.find(format(old.serial_number, "x")).status == SUPERSEDED  # type: ignore[union-attr]
    finally:
        ledger.close()

    # Negative control: the superseded certificate is refused, with the appliance's sentence.
    again = iqe_sim("renew", "--url", appliance.base, "--pump", str(out / "old-bundle"))
    assert again.returncode == 1
    assert "HTTP 403" in again.stderr and "is superseded" in again.stderr


def test_rekey_then_eap_tls_rfc7030_4_2_2(appliance: RunningAppliance, lab: Lab, out: Path) -> None:
    """Rekey: a new EC key, a certificate for it, and EAP-TLS with the new key."""
    bundle = out / "NPP802"
    _enroll(appliance, lab, "NPP802", bundle)
    old_key = (bundle / "key.pem").read_bytes()
    result = iqe_sim(
        "renew",
        "--url",
        appliance.base,
        "--pump",
        str(bundle),
        "--rekey",
        "--key-type",
        "ec-p256",
        "--eap-tls",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NPP802: rekeyed" in result.stdout
    assert "EAP-TLS: NPP802: Access-Accept" in result.stdout
    assert (bundle / "key.pem").read_bytes() != old_key
    assert (bundle / "key.pem").stat().st_mode & 0o077 == 0
