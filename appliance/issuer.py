"""CA material and the certificate profiles the appliance issues.

Profiles decide every extension themselves; from a CSR only the subject, the public key and the
subjectAltName are taken, so a CSR asking for CA:TRUE, an RA EKU or anything else gets nothing
of it. That is what keeps a pump's certificate from ever acting as an RA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from appliance.clock import Clock
from appliance.config import EnrollmentConfig, PkiConfig
from appliance.errors import PkiError
from appliance.keys import SigningKey, signature_hash
from appliance.pem_files import ca_key_passphrase, load_certificates, load_private_key


class CertificateRequest(Protocol):
    """What the issuer takes from a request: a CSR, or a CSR after csr_policy vetted it."""

    @property
    def subject(self) -> x509.Name: ...

    @property
    def extensions(self) -> x509.Extensions: ...

    def public_key(self) -> CertificatePublicKeyTypes: ...


# RFC 6402 §2.10: id-kp-cmcRA marks a certificate as a CMC/EST Registration Authority.
ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")


@dataclass(frozen=True)
class CaMaterial:
    cert: x509.Certificate
    key: SigningKey
    # What /cacerts serves: the CA certificate and any parents found in ca-cert.pem.
    chain: tuple[x509.Certificate, ...]

    @classmethod
    def load(cls, pki: PkiConfig, now: dt.datetime) -> CaMaterial:
        certs = load_certificates(pki.ca_cert)
        key = load_private_key(pki.ca_key, ca_key_passphrase(pki))
        cert = certs[0]
        if not public_keys_match(cert.public_key(), key):
            raise PkiError(f"{pki.ca_key}: private key does not match {pki.ca_cert}")
        if cert.not_valid_after_utc <= now:
            raise PkiError(
                f"{pki.ca_cert}: CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
            )
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise PkiError(
                f"{pki.ca_cert}: not a CA certificate (BasicConstraints CA:TRUE missing)"
            )
        return cls(cert=cert, key=key, chain=tuple(certs))


def public_keys_match(public: CertificatePublicKeyTypes, key: SigningKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(public.public_bytes(der, spki) == key.public_key().public_bytes(der, spki))


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _extension(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, value)


def _encoded(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    """An extension every pump certificate carries unchanged, encoded once: the signer copies
    its DER instead of reading the value's attributes back from Python for each certificate
    (the certificate's bytes are the same)."""
    return _extension(
        x509.UnrecognizedExtension(value.oid, value.public_bytes()), critical=critical
    )


_LEAF_CONSTRAINTS = _encoded(x509.BasicConstraints(ca=False, path_length=None), critical=True)


def _leaf_builder(
    issuer: x509.Name,
    ca_not_after: dt.datetime,
    *,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: dt.datetime,
    not_after: dt.datetime,
    aki: x509.Extension[x509.ExtensionType],
    extensions: Sequence[x509.Extension[x509.ExtensionType]],
) -> x509.CertificateBuilder:
    """A builder for a certificate the CA signs, all fields given at once: one builder, not one
    per field and extension as the chained setters make (measured for a pump certificate, in a
    loop: 320 µs with the chain, 292 µs without, of which the RSA-2048 signature is 250)."""
    # A leaf never outlives its CA: clients reject such a chain after the CA expires anyway.
    not_after = min(not_after, ca_not_after)
    if not_after <= not_before:
        raise PkiError(
            f"the CA certificate expires on {ca_not_after:%Y-%m-%d %H:%M} UTC, before a new "
            "certificate would start; renew the CA"
        )
    return x509.CertificateBuilder(
        issuer_name=issuer,
        subject_name=subject,
        public_key=public_key,
        serial_number=x509.random_serial_number(),
        # What the chained setters would store: naive UTC.
        not_valid_before=_naive_utc(not_before),
        not_valid_after=_naive_utc(not_after),
        extensions=[
            _LEAF_CONSTRAINTS,
            _extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False),
            aki,
            *extensions,
        ],
    )


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _aki(ca: CaMaterial) -> x509.Extension[x509.ExtensionType]:
    value = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return _encoded(value, critical=False)


def build_ca(key: SigningKey, pki: PkiConfig, now: dt.datetime) -> x509.Certificate:
    name = _name(pki.ca_common_name, pki.organization)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=pki.ca_validity_days))
        # pathlen 0: this CA signs end entities only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )


def build_server_cert(
    ca: CaMaterial, key: SigningKey, pki: PkiConfig, now: dt.datetime
) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for value in pki.server_san_values():
        names.append(x509.DNSName(value) if isinstance(value, str) else x509.IPAddress(value))
    extensions = [
        _extension(x509.SubjectAlternativeName(names), critical=False),
        _extension(
            _key_usage(digital_signature=True, key_encipherment=_is_rsa(key.public_key())),
            critical=True,
        ),
        _extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False),
    ]
    return _leaf_builder(
        ca.cert.subject,
        ca.cert.not_valid_after_utc,
        subject=_name(pki.server_common_name, pki.organization),
        public_key=key.public_key(),
        not_before=now - dt.timedelta(minutes=5),
        not_after=now + dt.timedelta(days=pki.server_validity_days),
        aki=_aki(ca),
        extensions=extensions,
    ).sign(ca.key, signature_hash(ca.key))


def build_ra_cert(
    ca: CaMaterial, key: SigningKey, pki: PkiConfig, now: dt.datetime
) -> x509.Certificate:
    extensions = [
        _extension(_key_usage(digital_signature=True), critical=True),
        _extension(
            x509.ExtendedKeyUsage([ID_KP_CMC_RA, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        ),
    ]
    return _leaf_builder(
        ca.cert.subject,
        ca.cert.not_valid_after_utc,
        subject=_name(pki.ra_common_name, pki.organization),
        public_key=key.public_key(),
        not_before=now - dt.timedelta(minutes=5),
        not_after=now + dt.timedelta(days=pki.ra_validity_days),
        aki=_aki(ca),
        extensions=extensions,
    ).sign(ca.key, signature_hash(ca.key))


class Issuer:
    """Signs pump (EAP-TLS client) certificates with the CA key."""

    def __init__(
        self, ca: CaMaterial, profile: EnrollmentConfig, clock: Clock, crl_url: str = ""
    ) -> None:
        self._ca = ca
        self._profile = profile
        self._clock = clock
        self._hash = signature_hash(ca.key)
        self._aki = _aki(ca)
        # Read once: each read of a certificate's subject builds a new Name.
        self._issuer_name = ca.cert.subject
        self._ca_not_after = ca.cert.not_valid_after_utc
        # RFC 5280 §4.2.1.13: where relying parties fetch the CRL (crl.distribution_url).
        cdp = (
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            )
            if crl_url
            else None
        )
        # Every pump certificate ends with the same extensions, by the kind of its key.
        self._closing = {
            is_rsa: (
                *((_encoded(cdp, critical=False),) if cdp is not None else ()),
                _encoded(
                    _key_usage(digital_signature=True, key_encipherment=is_rsa), critical=True
                ),
                _encoded(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False),
            )
            for is_rsa in (True, False)
        }

    @property
    def ca(self) -> CaMaterial:
        return self._ca

    def issue_pump_certificate(
        self,
        csr: CertificateRequest,
        public_key: CertificatePublicKeyTypes | None = None,
    ) -> x509.Certificate:
        """Subject and SAN from the CSR; the key from the CSR unless the appliance generated
        it (RFC 7030 §4.4.1: serverkeygen ignores the CSR's key)."""
        now = self._clock()
        public_key = public_key or csr.public_key()
        san = requested_san(csr)
        return _leaf_builder(
            self._issuer_name,
            self._ca_not_after,
            subject=csr.subject,
            public_key=public_key,
            not_before=now - dt.timedelta(seconds=self._profile.backdate_seconds),
            not_after=now + dt.timedelta(days=self._profile.validity_days),
            aki=self._aki,
            extensions=(
                *((_extension(san, critical=False),) if san is not None else ()),
                *self._closing[_is_rsa(public_key)],
            ),
        ).sign(self._ca.key, self._hash)


def requested_san(csr: CertificateRequest) -> x509.SubjectAlternativeName | None:
    try:
        return csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _is_rsa(key: CertificatePublicKeyTypes) -> bool:
    return isinstance(key, rsa.RSAPublicKey)
