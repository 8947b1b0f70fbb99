"""Revocation end to end through the CLI and the API: the CRL (file and GET /crl, read by
`openssl crl`), the CRL Distribution Point, a revoked RA refused at once, a revoked pump unable
to renew — each beside a control that still works."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509

from tests.lifecycle.conftest import CDP_URL, admin_curl, enroll
from tests.support import RunningAppliance, curl, make_csr, openssl, run_cli


def crl_text(appliance: RunningAppliance, folder: Path) -> str:
    status, headers, der = curl(["--cacert", str(appliance.lab.ca_cert), appliance.base + "/crl"])
    assert status == 200
    assert headers["content-type"] == "application/pkix-crl"
    path = folder / "fetched.crl"
    path.write_bytes(der)
    result = openssl(
        "crl", "-inform", "DER", "-in", str(path), "-noout", "-text",
        "-CAfile", str(appliance.lab.ca_cert),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "verify OK" in result.stderr.decode() + result.stdout.decode()
    return result.stdout.decode().upper()


def crl_number(text: str) -> int:
    return int(text.split("X509V3 CRL NUMBER:")[1].split(maxsplit=1)[0].replace("0X", ""), 16)


def test_cli_revocation_lands_in_the_crl_file_and_on_get_crl(
    appliance: RunningAppliance, work: Path
) -> None:
    lab = appliance.lab
    _cert, _key, lost = enroll(appliance, "NPPLOST1", work)
    _cert, _key, kept = enroll(appliance, "NPPKEPT1", work)
    before = crl_text(appliance, work)
    assert lost.upper() not in before

    result = run_cli("revoke", "--subject", "NPPLOST1", "--reason", "keyCompromise",
                     "--config", str(lab.config))  # fmt: skip
    assert f"revoked {lost}" in result.stdout

    crl_file = lab.folder / "var" / "crl" / "ca-crl.pem"
    text = openssl("crl", "-in", str(crl_file), "-noout", "-text").stdout.decode().upper()
    assert lost.upper() in text
    assert "KEY COMPROMISE" in text
    assert kept.upper() not in text  # control: the other pump is not listed
    served = crl_text(appliance, work)
    assert lost.upper() in served and kept.upper() not in served
    # The CRL number moved on (RFC 5280 §5.2.3).
    assert crl_number(served) > crl_number(before)

    status, _h, pem = curl(["--cacert", str(lab.ca_cert), appliance.base + "/crl?format=pem"])
    assert status == 200 and pem.startswith(b"-----BEGIN X509 CRL-----")
    assert x509.load_pem_x509_crl(pem).get_revoked_certificate_by_serial_number(int(lost, 16))
    status, _h, _b = curl(["--cacert", str(lab.ca_cert), appliance.base + "/crl?format=xml"])
    assert status == 400


def test_issued_certificates_carry_the_crl_distribution_point(
    appliance: RunningAppliance, work: Path
) -> None:
    cert_path, _key, _serial = enroll(appliance, "NPPCDP1", work)
    text = openssl("x509", "-in", str(cert_path), "-noout", "-text").stdout.decode()
    assert "X509v3 CRL Distribution Points" in text
    assert CDP_URL in text
    # Control: the CA certificate itself carries none.
    ca_text = openssl("x509", "-in", str(appliance.lab.ca_cert), "-noout", "-text").stdout.decode()
    assert "CRL Distribution Points" not in ca_text


def test_revoked_pump_cannot_reenroll_but_another_can(
    appliance: RunningAppliance, work: Path
) -> None:
    lab = appliance.lab

    def reenroll(cn: str, cert: Path, key: Path) -> tuple[int, bytes]:
        csr = work / f"{cn}-renew.der"
        made = openssl("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-outform", "DER",
                       "-out", str(csr))  # fmt: skip
        assert made.returncode == 0
        status, _h, body = curl(
            ["--cacert", str(lab.ca_cert), "--cert", str(cert), "--key", str(key),
             "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}",
             appliance.url("simplereenroll")]
        )  # fmt: skip
        return status, body

    lost_cert, lost_key, lost = enroll(appliance, "NPPREN1", work)
    ok_cert, ok_key, _ok = enroll(appliance, "NPPREN2", work)
    status, _h, body = admin_curl(
        appliance, f"/api/certificates/{lost}/revoke", "-X", "POST",
        "-H", "Content-Type: application/json", "--data", '{"reason": "cessationOfOperation"}',
    )  # fmt: skip
    assert status == 200, body
    assert json.loads(body)["revoked"] == [lost]
    status, body = reenroll("NPPREN1", lost_cert, lost_key)
    assert status == 403
    assert b"revoked" in body
    status, _body = reenroll("NPPREN2", ok_cert, ok_key)
    assert status == 200


def test_revoked_ra_certificate_stops_working_at_once(
    appliance: RunningAppliance, work: Path
) -> None:
    """Runs last in this module: it revokes the lab's RA certificate."""
    lab = appliance.lab
    csr, _key = make_csr(work, "NPPAFTERRA")
    args = ["--cacert", str(lab.ca_cert), "--cert", str(lab.ra_cert), "--key", str(lab.ra_key),
            "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}",
            appliance.url("simpleenroll")]  # fmt: skip
    assert curl(args)[0] == 200  # control: before the revocation the RA enrolls
    ra_serial = format(x509.load_pem_x509_certificate(lab.ra_cert.read_bytes()).serial_number, "x")
    result = run_cli("revoke", ra_serial, "--reason", "privilegeWithdrawn",
                     "--config", str(lab.config))  # fmt: skip
    assert f"revoked {ra_serial}" in result.stdout
    status, _h, body = curl(args)
    assert status == 403
    assert b"revoked" in body
    assert ra_serial.upper() in crl_text(appliance, work)
