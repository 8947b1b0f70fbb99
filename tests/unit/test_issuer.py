"""The pump certificate the issuer signs: its fields and extensions, whatever the clock's zone."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config import EnrollmentConfig
from appliance.errors import PkiError
from appliance.issuer import CaMaterial, Issuer

_NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
_CDP_URL = "http://crl.hospital.example/pumps.crl"


def _ca(not_after: dt.datetime) -> CaMaterial:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Pump CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - dt.timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CaMaterial(cert=cert, key=key, chain=(cert,))


def _csr(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NPPBBB5")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("nppbbb5.pumps.example")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _extensions(cert: x509.Certificate) -> dict[str, tuple[bool, x509.ExtensionType]]:
    return {ext.oid.dotted_string: (ext.critical, ext.value) for ext in cert.extensions}


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_pump_certificate_fields_and_extensions(kind: str) -> None:
    ca = _ca(_NOW + dt.timedelta(days=3650))
    key = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    # An aware clock in another zone: the certificate's times are the same instants in UTC.
    clock = lambda: _NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))  # noqa: E731
    issuer = Issuer(ca, EnrollmentConfig(validity_days=30), clock, crl_url=_CDP_URL)

    cert = issuer.issue_pump_certificate(_csr(key))

    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NPPBBB5")])
    assert cert.issuer == ca.cert.subject
    assert cert.not_valid_before_utc == _NOW - dt.timedelta(seconds=300)
    assert cert.not_valid_after_utc == _NOW + dt.timedelta(days=30)
    cert.verify_directly_issued_by(ca.cert)
    assert _extensions(cert) == {
        "2.5.29.19": (True, x509.BasicConstraints(ca=False, path_length=None)),
        "2.5.29.14": (False, x509.SubjectKeyIdentifier.from_public_key(key.public_key())),
        "2.5.29.35": (
            False,
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
        ),
        "2.5.29.17": (False, x509.SubjectAlternativeName([x509.DNSName("nppbbb5.pumps.example")])),
        "2.5.29.31": (
            False,
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(_CDP_URL)], None, None, None
                    )
                ]
            ),
        ),
        "2.5.29.15": (
            True,
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=kind == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
        ),
        "2.5.29.37": (False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])),
    }


def test_two_certificates_get_different_serials_and_key_identifiers() -> None:
    issuer = Issuer(_ca(_NOW + dt.timedelta(days=3650)), EnrollmentConfig(), lambda: _NOW)
    first = issuer.issue_pump_certificate(_csr(ec.generate_private_key(ec.SECP256R1())))
    second = issuer.issue_pump_certificate(_csr(ec.generate_private_key(ec.SECP256R1())))
    assert first.serial_number != second.serial_number
    ski = x509.SubjectKeyIdentifier
    assert first.extensions.get_extension_for_class(
        ski
    ) != second.extensions.get_extension_for_class(ski)
    assert x509.CRLDistributionPoints.oid.dotted_string not in _extensions(first)


def test_a_leaf_ends_with_its_ca() -> None:
    ca_end = _NOW + dt.timedelta(days=10)
    issuer = Issuer(_ca(ca_end), EnrollmentConfig(validity_days=365), lambda: _NOW)
    cert = issuer.issue_pump_certificate(_csr(ec.generate_private_key(ec.SECP256R1())))
    assert cert.not_valid_after_utc == ca_end


def test_a_ca_that_ends_before_the_certificate_would_start_is_named() -> None:
    ca_end = _NOW - dt.timedelta(days=1)
    issuer = Issuer(_ca(ca_end), EnrollmentConfig(), lambda: _NOW)
    with pytest.raises(PkiError, match="CA certificate expires on 2026-11-26 12:00 UTC"):
        issuer.issue_pump_certificate(_csr(ec.generate_private_key(ec.SECP256R1())))
