"""Bad input and bad credentials: the right status, a sentence a person can act on, and the
appliance still serving afterwards. Every case goes through real curl over real TLS."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    LAB_PASSWORD,
    LAB_USER,
    Lab,
    RunningAppliance,
    curl,
    make_csr,
    make_lab,
    openssl,
    pkcs7_certificates,
)

CSR_TYPE = ["-H", "Content-Type: application/pkcs10"]


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Lab, Path], list[str]]
    status: int
    message: str
    operation: str = "simpleenroll"


def _ra(lab: Lab) -> list[str]:
    return ["--cert", str(lab.ra_cert), "--key", str(lab.ra_key)]


def _body(data: bytes, work: Path) -> list[str]:
    path = work / "body.bin"
    path.write_bytes(data)
    return ["--data-binary", f"@{path}"]


def _csr(work: Path, cn: str = "pump", newkey: str = "rsa:2048") -> bytes:
    der, _key = make_csr(work, cn, newkey=newkey)
    return der.read_bytes()


def _tampered(work: Path) -> bytes:
    der = bytearray(_csr(work))
    der[-20] ^= 0xFF  # inside the signature value
    return bytes(der)


CASES = [
    Case(
        "wrong password",
        lambda lab, w: ["-u", f"{LAB_USER}:wrong-password", *CSR_TYPE, *_body(_csr(w), w)],
        401,
        "user name or password is wrong",
        "bootstrap",
    ),
    Case(
        "unknown user",
        lambda lab, w: ["-u", f"nobody:{LAB_PASSWORD}", *CSR_TYPE, *_body(_csr(w), w)],
        401,
        "user name or password is wrong",
        "bootstrap",
    ),
    Case(
        "no credentials",
        lambda lab, w: [*CSR_TYPE, *_body(_csr(w), w)],
        401,
        "HTTP Basic credentials are required",
        "bootstrap",
    ),
    Case(
        "bearer scheme",
        lambda lab, w: ["-H", "Authorization: Bearer abc", *CSR_TYPE, *_body(_csr(w), w)],
        401,
        "scheme 'Bearer' is not supported",
        "bootstrap",
    ),
    Case(
        "no client certificate",
        lambda lab, w: [*CSR_TYPE, *_body(_csr(w), w)],
        401,
        "a TLS client certificate is required",
    ),
    Case(
        "password on simpleenroll (basic off)",
        lambda lab, w: ["-u", f"{LAB_USER}:{LAB_PASSWORD}", *CSR_TYPE, *_body(_csr(w), w)],
        401,
        "a TLS client certificate is required",
    ),
    Case(
        "garbage CSR",
        lambda lab, w: [*_ra(lab), *CSR_TYPE, *_body(b"this is not a CSR!", w)],
        400,
        "CSR is neither base64 nor DER",
    ),
    Case(
        "empty CSR", lambda lab, w: [*_ra(lab), *CSR_TYPE, "--data-binary", ""], 400, "CSR is empty"
    ),
    Case(
        "truncated DER CSR",
        lambda lab, w: [*_ra(lab), *CSR_TYPE, *_body(_csr(w)[:-30], w)],
        400,
        "length does not match",
    ),
    Case(
        "truncated base64 CSR",
        lambda lab, w: [*_ra(lab), *CSR_TYPE, *_body(base64.b64encode(_csr(w))[:-40], w)],
        400,
        "truncated",
    ),
    Case(
        "tampered signature",
        lambda lab, w: [*_ra(lab), *CSR_TYPE, *_body(_tampered(w), w)],
        400,
        "CSR signature does not verify",
    ),
    Case(
        "1024-bit RSA key",
        lambda lab, w: [*_ra(lab), *CSR_TYPE, *_body(_csr(w, newkey="rsa:1024"), w)],
        400,
        "RSA key of 1024 bits is below the 2048-bit minimum",
    ),
    Case(
        "P-521 curve",
        lambda lab, w: [
            *_ra(lab),
            *CSR_TYPE,
            *_body(_csr(w, newkey="ec:" + str(_p521_params(w))), w),
        ],
        400,
        "EC curve secp521r1 is not allowed",
    ),
    Case(
        "wrong media type",
        lambda lab, w: [*_ra(lab), "-H", "Content-Type: text/plain", *_body(_csr(w), w)],
        415,
        "Content-Type must be application/pkcs10",
    ),
    Case(
        "form media type (curl default)",
        lambda lab, w: [*_ra(lab), *_body(_csr(w), w)],
        415,
        "got 'application/x-www-form-urlencoded'",
    ),
    Case(
        "oversize body",
        lambda lab, w: [*_ra(lab), *CSR_TYPE, *_body(b"M" * 70000, w)],
        413,
        "larger than the 65536-byte limit",
    ),
    Case(
        "oversize chunked body",
        lambda lab, w: [
            *_ra(lab),
            *CSR_TYPE,
            "-H",
            "Transfer-Encoding: chunked",
            *_body(b"M" * 70000, w),
        ],
        413,
        "larger than the 65536-byte limit",
    ),
    Case(
        "unknown operation",
        lambda lab, w: [*_ra(lab)],
        404,
        "unknown EST operation 'fullcmd'",
        "fullcmd",
    ),
]


def _p521_params(work: Path) -> Path:
    path = work / "p521.pem"
    openssl("ecparam", "-name", "secp521r1", "-out", str(path))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rejected_with_status_and_sentence(
    case: Case, appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    status, headers, body = curl(
        ["--cacert", str(lab.ca_cert), *case.args(lab, work), appliance.url(case.operation)]
    )
    assert status == case.status, body
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert case.message in body.decode()
    assert "Traceback" not in body.decode()
    if status == 401 and case.operation == "bootstrap":
        assert headers["www-authenticate"] == 'Basic realm="EST appliance", charset="UTF-8"'
    appliance.assert_alive()


def test_pump_certificate_cannot_act_as_ra(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """A certificate the appliance issued to a pump chains to our CA but is no RA: 403."""
    csr, pump_key = make_csr(work, "NPPBBB6")
    status, _h, body = curl(
        [
            "--cacert",
            str(lab.ca_cert),
            *_ra(lab),
            *CSR_TYPE,
            "--data-binary",
            f"@{csr}",
            appliance.url("simpleenroll"),
        ]
    )
    assert status == 200
    pump_cert = work / "pump-cert.pem"
    pump_cert.write_text(pkcs7_certificates(body))
    other_csr, _ = make_csr(work, "NPPBBB7")
    status, _h, body = curl(
        [
            "--cacert",
            str(lab.ca_cert),
            "--cert",
            str(pump_cert),
            "--key",
            str(pump_key),
            *CSR_TYPE,
            "--data-binary",
            f"@{other_csr}",
            appliance.url("simpleenroll"),
        ]
    )
    assert status == 403
    assert "'CN=NPPBBB6' is not authorized as a registration authority" in body.decode()
    # Negative control: the real RA certificate on the same request succeeds.
    status, _h, _b = curl(
        [
            "--cacert",
            str(lab.ca_cert),
            *_ra(lab),
            *CSR_TYPE,
            "--data-binary",
            f"@{other_csr}",
            appliance.url("simpleenroll"),
        ]
    )
    assert status == 200
    appliance.assert_alive()


def test_certificate_from_a_foreign_ca_fails_the_handshake(
    appliance: RunningAppliance, lab: Lab, tmp_path_factory: pytest.TempPathFactory, work: Path
) -> None:
    foreign = make_lab(tmp_path_factory.mktemp("foreign"))
    csr, _ = make_csr(work, "pump")
    status, headers, _body = curl(
        [
            "--cacert",
            str(lab.ca_cert),
            "--cert",
            str(foreign.ra_cert),
            "--key",
            str(foreign.ra_key),
            *CSR_TYPE,
            "--data-binary",
            f"@{csr}",
            appliance.url("simpleenroll"),
        ]
    )
    assert status == 0, "a foreign RA certificate must not get an HTTP answer"
    assert headers["curl-error"]
    appliance.assert_alive()


def test_wrong_method_is_405_with_allow(appliance: RunningAppliance, lab: Lab) -> None:
    status, headers, body = curl(["--cacert", str(lab.ca_cert), appliance.url("simpleenroll")])
    assert status == 405
    assert headers["allow"] == "POST"
    assert "GET is not allowed on simpleenroll" in body.decode()
    status, headers, _ = curl(
        ["--cacert", str(lab.ca_cert), "--data-binary", "", appliance.url("cacerts")]
    )
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_tls_below_1_2_is_refused(appliance: RunningAppliance, lab: Lab) -> None:
    status, _headers, _ = curl(
        ["--cacert", str(lab.ca_cert), "--tlsv1.1", "--tls-max", "1.1", appliance.url("cacerts")]
    )
    assert status == 0
    status, _h, _b = curl(
        ["--cacert", str(lab.ca_cert), "--tlsv1.2", "--tls-max", "1.2", appliance.url("cacerts")]
    )
    assert status == 200
