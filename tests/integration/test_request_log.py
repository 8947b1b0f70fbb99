"""The log an integrator reads: one line per request, saying what the request got."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from cryptography import x509

from tests.support import (
    RunningAppliance,
    curl,
    curl_ra_enroll,
    make_csr,
    pkcs7_certificates,
)

CSR_TYPE = ["-H", "Content-Type: application/pkcs10"]


def _der(body: bytes) -> bytes:
    # The lab answers in the gateway's configured format; DER or base64.
    return body if body[:1] == b"\x30" else base64.b64decode(body)


def _lines_of(appliance: RunningAppliance, request_id: str) -> list[str]:
    return [line for line in appliance.log_text().splitlines() if request_id in line]


def test_an_enrollment_is_one_log_line_with_its_certificate(
    appliance: RunningAppliance, work: Path
) -> None:
    lab = appliance.lab
    csr, _key = make_csr(work, "LOGLINE-PUMP-1")
    status, headers, body = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr)
    assert status == 200, body
    cert = x509.load_pem_x509_certificate(pkcs7_certificates(_der(body)).encode())
    request_id = headers["x-request-id"]
    # The line is written before the answer leaves, so it is in the log by now.
    lines = _lines_of(appliance, request_id)
    assert len(lines) == 1, lines
    assert re.search(
        rf"INFO appliance\.web event=request id={request_id} peer=127\.0\.0\.1 method=POST "
        rf"endpoint=simpleenroll identity=client-certificate:CN=[^ ]+.* status=200 "
        rf"serial={cert.serial_number:x} kind=enroll profile=\S+ replaces=- retired=- "
        rf"ms=[0-9.]+ reason=-$",
        lines[0],
    ), lines[0]
    # No second line about the same serial (the issuance is part of the request's line).
    assert appliance.log_text().count(f"{cert.serial_number:x}") == 1


def test_a_refused_request_says_why_on_its_one_line(
    appliance: RunningAppliance, work: Path
) -> None:
    lab = appliance.lab
    bad = work / "bad.der"
    bad.write_bytes(b"\x30\x03\x02\x01\x00")
    status, headers, _body = curl(
        [
            "--cacert", str(lab.ca_cert),
            "--cert", str(lab.ra_cert), "--key", str(lab.ra_key),
            *CSR_TYPE, "--data-binary", f"@{bad}",
            appliance.url("simpleenroll"),
        ]
    )  # fmt: skip
    assert status == 400
    (line,) = _lines_of(appliance, headers["x-request-id"])
    assert " status=400 serial=- kind=- profile=- replaces=- retired=- " in line
    assert 'reason="CSR is not a valid PKCS#10 structure' in line
