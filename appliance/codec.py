"""Bytes on the wire <-> CSR and PKCS#7 objects. No HTTP here.

RFC 7030 §4.2.1 says the CSR is base64-encoded DER, and RFC 8951 §3 tells servers to decide the
encoding by content rather than trust `Content-Transfer-Encoding`, because real clients send raw
DER with the header and base64 without it. So `decode_csr` looks at the bytes: PEM armour, DER,
or base64 (wrapped at any width, CRLF or LF).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from appliance.config import ResponseFormat
from appliance.errors import BadRequest, first_line

_PEM_CSR = re.compile(
    rb"-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----\s*(.*?)\s*"
    rb"-----END (?:NEW )?CERTIFICATE REQUEST-----",
    re.DOTALL,
)
_BASE64_ALPHABET: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
)
_WHITESPACE: Final = frozenset(b" \t\r\n")

PKCS7_MIME: Final = "application/pkcs7-mime"
CERTS_ONLY_MIME: Final = "application/pkcs7-mime; smime-type=certs-only"
PEM_MIME: Final = "application/x-pem-file"
CSRATTRS_MIME: Final = "application/csrattrs"


@dataclass(frozen=True)
class EncodedBody:
    """A response body with the headers that describe its encoding."""

    content: bytes
    content_type: str | None
    transfer_encoding: str | None = None
    status: int = 200

    @classmethod
    def no_content(cls) -> EncodedBody:
        """RFC 9110 §15.3.5 204: no body, hence no Content-Type."""
        return cls(b"", None, status=204)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type} if self.content_type else {}
        if self.transfer_encoding:
            headers["Content-Transfer-Encoding"] = self.transfer_encoding
        return headers


def decode_csr(body: bytes) -> x509.CertificateSigningRequest:
    """Parse a PKCS#10 request sent as PEM, DER or base64 and check its self-signature.

    Raises BadRequest with a sentence an integrator can act on.
    """
    if not body or not body.strip(b" \t\r\n\x00"):
        raise BadRequest("CSR is empty: send the PKCS#10 request as base64 or DER in the body")
    der = _csr_der(body)
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise BadRequest(f"CSR is not a valid PKCS#10 structure: {first_line(exc)}") from None
    try:
        signature_ok = csr.is_signature_valid
        # Touch the parts the issuer reads, so a structurally odd CSR fails here as a 400
        # rather than later in signing. The subject is read, and checked the same way, by
        # csr_policy.vet, which every enrollment runs first.
        csr.public_key()
        list(csr.extensions)
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise BadRequest(f"CSR is not a valid PKCS#10 structure: {first_line(exc)}") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and friends
        raise BadRequest(f"CSR uses an unsupported algorithm: {first_line(exc)}") from None
    if not signature_ok:
        raise BadRequest(
            "CSR signature does not verify: the request was altered or signed with another key"
        )
    return csr


def csr_attributes(csr: x509.CertificateSigningRequest) -> list[x509.Attribute]:
    """The CSR's attributes, for the checks that read them (challengePassword, key-encryption
    requests). Not part of decode_csr: a CSR nobody asks attributes of is not refused for them."""
    try:
        return list(csr.attributes)
    except ValueError as exc:
        raise BadRequest(
            f"CSR attributes cannot be read: {first_line(exc)}; send each attribute (such as "
            "challengePassword) with exactly one value"
        ) from None


def _csr_der(body: bytes) -> bytes:
    if b"-----BEGIN" in body[:64]:
        match = _PEM_CSR.search(body)
        if match is None:
            raise BadRequest("CSR PEM armour is not 'BEGIN CERTIFICATE REQUEST' or is incomplete")
        return _b64decode(match.group(1), what="CSR PEM body")
    # DER first: a DER SEQUENCE starts with 0x30 and a base64 CSR starts with 'M', so the two
    # never collide. Raw DER must not be stripped: its last byte may look like whitespace.
    if body[0] == 0x30 and _der_length_matches(body):
        return body
    if all(b in _BASE64_ALPHABET or b in _WHITESPACE for b in body):
        return _b64decode(body, what="CSR")
    bad = next(b for b in body if b not in _BASE64_ALPHABET and b not in _WHITESPACE)
    offset = body.index(bad)
    if body[0] == 0x30:
        raise BadRequest(
            "CSR is neither base64 nor DER: it starts like DER but its length does not match "
            f"the {len(body)} bytes received (truncated or padded?)"
        )
    raise BadRequest(
        f"CSR is neither base64 nor DER: byte 0x{bad:02x} at offset {offset} is not base64, "
        "and DER would start with 0x30"
    )


def _b64decode(text: bytes, *, what: str) -> bytes:
    compact = bytes(b for b in text if b not in _WHITESPACE)
    if not compact:
        raise BadRequest(f"{what} is empty after removing line breaks")
    # Some clients drop the '=' padding; restore it rather than reject the request.
    compact += b"=" * (-len(compact) % 4)
    try:
        der = base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise BadRequest(f"CSR is neither base64 nor DER: base64 decoding failed ({exc})") from None
    if not der or der[0] != 0x30:
        raise BadRequest(
            f"{what} is base64 but does not decode to DER (first byte 0x{der[:1].hex() or '00'})"
        )
    if not _der_length_matches(der):
        raise BadRequest(f"{what} is base64 but its DER length does not match (truncated?)")
    return der


def _der_length_matches(der: bytes) -> bool:
    """True when the outer DER SEQUENCE's declared length covers exactly the given bytes."""
    if len(der) < 2:
        return False
    first = der[1]
    if first < 0x80:
        return 2 + first == len(der)
    count = first & 0x7F
    if count == 0 or count > 4 or len(der) < 2 + count:
        return False
    length = int.from_bytes(der[2 : 2 + count], "big")
    return 2 + count + length == len(der)


def encode_certs_only(certs: list[x509.Certificate], fmt: ResponseFormat) -> EncodedBody:
    """RFC 7030 §4.1.3/§4.2.3: a degenerate (certs-only) PKCS#7 SignedData."""
    return encode_pkcs7(certs_only_der(certs), fmt, CERTS_ONLY_MIME)


def certs_only_der(certs: list[x509.Certificate]) -> bytes:
    return pkcs7.serialize_certificates(certs, serialization.Encoding.DER)


def encode_pkcs7(der: bytes, fmt: ResponseFormat, mime: str) -> EncodedBody:
    if fmt == "der":
        return EncodedBody(der, mime)
    if fmt == "base64":
        return EncodedBody(wrap_base64(der), mime, transfer_encoding="base64")
    pem = b"-----BEGIN PKCS7-----\n" + base64.encodebytes(der) + b"-----END PKCS7-----\n"
    return EncodedBody(pem, PEM_MIME)


def encode_csr_attributes(der: bytes, fmt: ResponseFormat) -> EncodedBody:
    """RFC 7030 §4.5.2: application/csrattrs, base64 (raw DER for a der profile)."""
    if fmt == "der":
        return EncodedBody(der, CSRATTRS_MIME)
    return EncodedBody(wrap_base64(der), CSRATTRS_MIME, transfer_encoding="base64")


def wrap_base64(data: bytes) -> bytes:
    """Base64 in 64-character lines ending in CRLF (RFC 2045 lines, RFC 8951 §3)."""
    text = base64.b64encode(data)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"".join(line + b"\r\n" for line in lines)
