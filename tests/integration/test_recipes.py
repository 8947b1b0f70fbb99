"""The integration guide's two curl recipes, run with real curl and openssl (issue acceptance)."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

from tests.support import (
    LAB_PASSWORD,
    LAB_USER,
    Lab,
    RunningAppliance,
    curl,
    curl_ra_enroll,
    make_csr,
    openssl,
    pkcs7_certificates,
    verify_with_ca,
)


def test_password_recipe_base64_csr_on_bootstrap(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    csr_der, _key = make_csr(work, "test-pump-001")
    csr_b64 = work / "csr.b64"
    # `base64 csr.der > csr.b64`: wrapped at 76 columns with LF, as coreutils writes it.
    csr_b64.write_bytes(base64.encodebytes(csr_der.read_bytes()))
    status, headers, body = curl(
        [
            "-u",
            f"{LAB_USER}:{LAB_PASSWORD}",
            "-H",
            "Content-Type: application/pkcs10",
            "-H",
            "Content-Transfer-Encoding: base64",
            "--data",
            f"@{csr_b64}",
            "--cacert",
            str(lab.ca_cert),
            appliance.url("bootstrap"),
        ]
    )
    assert status == 200, body
    assert headers["content-type"].startswith("application/pkcs7-mime")
    certs = pkcs7_certificates(body)
    assert "subject=CN = test-pump-001" in certs
    assert verify_with_ca(certs, lab.ca_cert, work).returncode == 0


def test_ra_recipe_der_csr_on_simpleenroll(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    csr_der, _key = make_csr(work, "test-pump-002")
    status, _headers, body = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr_der)
    assert status == 200, body
    certs = pkcs7_certificates(body)
    assert "subject=CN = test-pump-002" in certs
    verified = verify_with_ca(certs, lab.ca_cert, work)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_issued_pump_certificate_profile(appliance: RunningAppliance, lab: Lab, work: Path) -> None:
    """EAP-TLS client profile: clientAuth only, CA:FALSE, key usage for RSA, SKI/AKI, SHA-256."""
    csr_der, _key = make_csr(
        work,
        "NPPBBB5",
        extra=(
            "-addext",
            "subjectAltName=DNS:nppbbb5.pumps.example",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "extendedKeyUsage=1.3.6.1.5.5.7.3.28,serverAuth",
        ),
    )
    status, _h, body = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr_der)
    assert status == 200, body
    text = openssl("x509", "-noout", "-text", input_bytes=pkcs7_certificates(body).encode())
    dump = text.stdout.decode()
    assert "CA:FALSE" in dump
    assert "CA:TRUE" not in dump
    assert "TLS Web Client Authentication" in dump
    assert "TLS Web Server Authentication" not in dump
    assert "1.3.6.1.5.5.7.3.28" not in dump and "CMC Registration Authority" not in dump
    assert "Digital Signature, Key Encipherment" in dump
    assert "DNS:nppbbb5.pumps.example" in dump
    assert "X509v3 Subject Key Identifier" in dump
    assert "X509v3 Authority Key Identifier" in dump
    assert "sha256WithRSAEncryption" in dump
    serial_line = dump.split("Serial Number:")[1].strip().splitlines()[0].replace(":", "")
    assert int(serial_line, 16).bit_length() >= 64


def test_every_issued_certificate_is_in_the_ledger(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    csr_der, _key = make_csr(work, "ledger-pump")
    status, _h, body = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr_der)
    assert status == 200
    serial = (
        openssl("x509", "-noout", "-serial", input_bytes=pkcs7_certificates(body).encode())
        .stdout.decode()
        .strip()
        .split("=")[1]
        .lower()
        .lstrip("0")
    )
    with sqlite3.connect(lab.ledger) as db:
        row = db.execute(
            "SELECT subject, requester, endpoint, auth_method FROM certificates WHERE serial=?",
            (serial,),
        ).fetchone()
    assert row == (
        "CN=ledger-pump",
        "CN=IQE Gateway RA,O=Hospital Clinical Network",
        "simpleenroll",
        "client-certificate",
    )
    assert f"serial={serial}" in appliance.log_text()


def test_cacerts_is_unauthenticated_pkcs7_with_the_ca(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    status, headers, body = curl(["--cacert", str(lab.ca_cert), appliance.url("cacerts")])
    assert status == 200
    assert headers["content-type"] == "application/pkcs7-mime"
    assert headers["content-length"] == str(len(body))
    certs = pkcs7_certificates(body)
    assert lab.ca_cert.read_text().strip() in certs.replace("\n\n", "\n")
