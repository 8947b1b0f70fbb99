"""gateway.response_format: der (IQE), base64 (RFC 7030 default), pem — each parsed by openssl."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.support import (
    curl,
    curl_ra_enroll,
    make_csr,
    make_lab,
    pkcs7_certificates,
    running_appliance,
    verify_with_ca,
)


@pytest.mark.parametrize("fmt", ["der", "base64", "pem"])
def test_enrollment_answer_in_configured_format(
    fmt: str, tmp_path_factory: pytest.TempPathFactory, work: Path
) -> None:
    lab = make_lab(tmp_path_factory.mktemp(f"fmt-{fmt}"), {"gateway": {"response_format": fmt}})
    csr, _key = make_csr(work, f"pump-{fmt}")
    with running_appliance(lab) as appliance:
        status, headers, body = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr)
        assert status == 200, body
        assert headers["content-length"] == str(len(body))
        if fmt == "der":
            assert headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
            assert "content-transfer-encoding" not in headers
            certs = pkcs7_certificates(body, "DER")
        elif fmt == "base64":
            assert headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
            assert headers["content-transfer-encoding"] == "base64"
            lines = body.split(b"\r\n")
            assert lines[-1] == b"", "base64 answer ends with CRLF"
            assert all(len(line) <= 64 for line in lines)
            certs = pkcs7_certificates(base64.b64decode(body), "DER")
        else:
            assert body.startswith(b"-----BEGIN PKCS7-----")
            certs = pkcs7_certificates(body, "PEM")
        assert f"CN = pump-{fmt}" in certs
        assert verify_with_ca(certs, lab.ca_cert, work).returncode == 0

        status, _h, body = curl(["--cacert", str(lab.ca_cert), appliance.url("cacerts")])
        assert status == 200
        raw = base64.b64decode(body) if fmt == "base64" else body
        assert "EST Appliance Device CA" in pkcs7_certificates(
            raw, "PEM" if fmt == "pem" else "DER"
        )
