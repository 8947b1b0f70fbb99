"""Reading certs-only PKCS#7 answers (RFC 7030 §4.1.3, §4.2.3) the way a gateway does.

The appliance answers in DER, base64 (RFC 7030's default, `Content-Transfer-Encoding: base64`)
or PEM. A gateway configured for one encoding fails on another, and the usual case in the
field is base64 text read as DER; `read_certs_only` names that mismatch instead of saying
only "parse error".
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from simulator.troubleshooting import FIXES, Branch, EnrollmentError

ExpectedFormat = Literal["der", "base64", "pem", "auto"]
EXPECTED_FORMATS: tuple[ExpectedFormat, ...] = ("der", "base64", "pem", "auto")
_BASE64 = re.compile(rb"\A[A-Za-z0-9+/=\s]+\Z")


def sniff(body: bytes) -> Literal["der", "base64", "pem", "empty", "unknown"]:
    """What the body looks like, from its content alone."""
    stripped = body.strip()
    if not stripped:
        return "empty"
    if stripped.startswith(b"-----BEGIN PKCS7-----"):
        return "pem"
    if body[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        return "der"
    if _BASE64.match(stripped):
        return "base64"
    return "unknown"


_DESCRIPTIONS = {
    "der": "raw DER",
    "base64": "base64 text",
    "pem": "PEM text",
    "empty": "empty",
    "unknown": "neither DER, base64 nor PEM",
}


def read_certs_only(
    body: bytes, expected: ExpectedFormat, *, transfer_encoding: str | None = None
) -> list[x509.Certificate]:
    """The certificates of a certs-only PKCS#7, decoded as `expected` says; EnrollmentError
    (branch pkcs7-format) naming the mismatch otherwise."""
    actual = sniff(body)
    encoding = expected
    if expected == "auto":
        if transfer_encoding and transfer_encoding.strip().lower() == "base64":
            encoding = "base64"
        elif actual in ("der", "base64", "pem"):
            encoding = actual
        else:
            encoding = "der"
    try:
        if encoding == "der":
            return _load_der(body)
        if encoding == "base64":
            if actual != "base64":
                raise ValueError("not base64")
            return _load_der(base64.b64decode(b"".join(body.split()), validate=True))
        return pkcs7.load_pem_pkcs7_certificates(body)
    except (ValueError, binascii.Error) as exc:
        raise _mismatch(encoding, actual, str(exc)) from None


def _load_der(data: bytes) -> list[x509.Certificate]:
    certs = pkcs7.load_der_pkcs7_certificates(data)
    if not certs:
        raise ValueError("the PKCS#7 holds no certificates")
    return certs


def _mismatch(expected: str, actual: str, detail: str) -> EnrollmentError:
    if actual in ("der", "base64", "pem") and actual != expected:
        message = (
            f"the answer is {_DESCRIPTIONS[actual]} but the gateway reads {expected.upper()}: "
            f"{_DESCRIPTIONS[actual]} read as {expected.upper()}."
        )
        fix = (
            f"set gateway.response_format: {expected} in the appliance's config.yaml, or "
            f"configure the gateway to expect {actual} (or auto)."
        )
    else:
        message = f"the answer is {_DESCRIPTIONS[actual]} and is not a valid PKCS#7 ({detail})."
        fix = FIXES[Branch.PKCS7]
    return EnrollmentError(Branch.PKCS7, message, fix)
