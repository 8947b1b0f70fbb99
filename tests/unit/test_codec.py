"""codec.decode_csr: RFC 7030 §4.2.1 / RFC 8951 §3 encodings decided by content."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.codec import decode_csr, encode_certs_only, wrap_base64
from appliance.errors import BadRequest

KEY = ec.generate_private_key(ec.SECP256R1())


def _csr(cn: str = "NPPBBB5") -> x509.CertificateSigningRequest:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(KEY, hashes.SHA256())


CSR = _csr()
DER = CSR.public_bytes(serialization.Encoding.DER)
B64 = base64.b64encode(DER)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DER, id="raw DER"),
        pytest.param(CSR.public_bytes(serialization.Encoding.PEM), id="PEM"),
        pytest.param(B64, id="base64 one line"),
        pytest.param(base64.encodebytes(DER), id="base64 76 columns LF"),
        pytest.param(wrap_base64(DER), id="base64 64 columns CRLF"),
        pytest.param(B64.rstrip(b"="), id="base64 without padding"),
        pytest.param(b"\r\n" + B64 + b"\r\n\r\n", id="base64 with blank lines"),
        pytest.param(
            CSR.public_bytes(serialization.Encoding.PEM).replace(
                b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"
            ),
            id="PEM NEW CERTIFICATE REQUEST",
        ),
    ],
)
def test_accepted_encodings(body: bytes) -> None:
    assert decode_csr(body).subject == CSR.subject


def test_der_ending_in_a_whitespace_byte_is_not_stripped() -> None:
    for i in range(400):
        csr = _csr(f"pump-{i}")
        der = csr.public_bytes(serialization.Encoding.DER)
        if der[-1] in b" \t\r\n\x0b\x0c":
            assert decode_csr(der).subject == csr.subject
            return
    pytest.fail("no CSR ending in a whitespace byte was produced in 400 tries")


@pytest.mark.parametrize(
    "body,message",
    [
        (b"", "CSR is empty"),
        (b"\r\n \r\n", "CSR is empty"),
        (b"hello world!", "CSR is neither base64 nor DER"),
        (DER[:-10], "length does not match"),
        (DER + b"\x00", "length does not match"),
        (B64[:-8], "truncated"),
        (base64.b64encode(b"plain text, not DER"), "does not decode to DER"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB", "incomplete"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "armour"),
        (b"\x30\x03\x02\x01\x01", "not a valid PKCS#10 structure"),
    ],
)
def test_rejected_with_actionable_sentence(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_csr(body)
    assert message in caught.value.message
    assert caught.value.status == 400


def test_tampered_signature_is_rejected() -> None:
    tampered = bytearray(DER)
    tampered[-5] ^= 0x01
    with pytest.raises(BadRequest, match="CSR signature does not verify"):
        decode_csr(bytes(tampered))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_accepted_or_a_400(body: bytes) -> None:
    try:
        decode_csr(body)
    except BadRequest as error:
        assert error.message


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(DER) - 1), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_a_400_or_the_same_subject(index: int, xor: int) -> None:
    mutated = bytearray(DER)
    mutated[index] ^= xor
    try:
        decode_csr(bytes(mutated))
    except BadRequest:
        return
    # A change that still parses and verifies can only be in encoding slack, never the content.
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    assert decode_csr(bytes(mutated)).public_key().public_bytes(pem, spki) == (
        KEY.public_key().public_bytes(pem, spki)
    )


def test_base64_answer_is_wrapped_at_64_with_crlf() -> None:
    body = wrap_base64(b"x" * 200)
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == 64 for line in lines[:-2])
    assert base64.b64decode(body) == b"x" * 200


def test_encode_formats_carry_the_right_headers() -> None:
    cert = (
        x509.CertificateBuilder()
        .subject_name(CSR.subject)
        .issuer_name(CSR.subject)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(__import__("datetime").datetime(2026, 1, 1))
        .not_valid_after(__import__("datetime").datetime(2027, 1, 1))
        .sign(KEY, hashes.SHA256())
    )
    der = encode_certs_only([cert], "der")
    assert der.headers() == {"Content-Type": "application/pkcs7-mime; smime-type=certs-only"}
    b64 = encode_certs_only([cert], "base64")
    assert b64.headers()["Content-Transfer-Encoding"] == "base64"
    assert base64.b64decode(b64.content) == der.content
    pem = encode_certs_only([cert], "pem")
    assert pem.content.startswith(b"-----BEGIN PKCS7-----\n")
