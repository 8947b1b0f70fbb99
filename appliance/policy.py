"""Small, single-purpose checks on a CSR before anything is signed.

Each check raises an EstError whose message says what to change. `default_csr_policy` returns
the list the enrollment service applies, so a profile can add or drop checks without touching
the service.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import AttributeOID, NameOID

from appliance.codec import csr_attributes
from appliance.config import EnrollmentConfig
from appliance.errors import BadRequest, Forbidden
from appliance.issuer import CertificateRequest

# Each takes the request as csr_policy vetted it: the subject and key that would be certified.
CsrCheck = Callable[[CertificateRequest], None]


def key_strength(profile: EnrollmentConfig) -> CsrCheck:
    """RSA within [min, max] bits, EC on an allowed curve; nothing else."""

    def check(csr: CertificateRequest) -> None:
        key = csr.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < profile.min_rsa_bits:
                raise BadRequest(
                    f"RSA key of {key.key_size} bits is below the {profile.min_rsa_bits}-bit "
                    "minimum; generate a new key of at least that size"
                )
            if key.key_size > profile.max_rsa_bits:
                raise BadRequest(
                    f"RSA key of {key.key_size} bits is above the {profile.max_rsa_bits}-bit "
                    "maximum"
                )
            return
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in profile.allowed_curves:
                raise BadRequest(
                    f"EC curve {key.curve.name} is not allowed; use one of "
                    f"{', '.join(profile.allowed_curves)}"
                )
            return
        kind = type(key).__name__
        for cls, label in ((ed25519.Ed25519PublicKey, "Ed25519"), (ed448.Ed448PublicKey, "Ed448")):
            if isinstance(key, cls):
                kind = label
        raise BadRequest(f"{kind} keys are not supported; use RSA or EC (P-256/P-384)")

    return check


def subject_has_common_name(csr: CertificateRequest) -> None:
    """EAP-TLS ties the RADIUS identity to the certificate CN (check_cert_cn), so it is required."""
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise BadRequest(
            "CSR subject has no commonName (CN); the pump certificate needs CN = the pump's "
            "serial number"
        )
    if len(names) > 1:
        raise BadRequest("CSR subject has more than one commonName; send exactly one")
    value = names[0].value
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("CSR subject commonName is empty")


def default_csr_policy(profile: EnrollmentConfig) -> Sequence[CsrCheck]:
    return (key_strength(profile), subject_has_common_name)


def same_subject_and_san(csr: CertificateRequest, current: x509.Certificate, *, whose: str) -> None:
    """RFC 7030 §4.2.2: a reenroll CSR's Subject and SubjectAltName MUST be identical to
    those of the certificate being renewed or rekeyed; the 403 names the difference."""
    if csr.subject != current.subject:
        raise Forbidden(
            f"CSR subject '{csr.subject.rfc4514_string()}' differs from {whose} subject "
            f"'{current.subject.rfc4514_string()}'; RFC 7030 §4.2.2 requires them to be identical"
        )
    wanted = _san_names(current.extensions)
    asked = _san_names(csr.extensions)
    if wanted == asked:
        return
    if wanted is None:
        raise Forbidden(
            f"CSR requests subjectAltName {_describe(asked)} but {whose} has none; "
            "RFC 7030 §4.2.2 requires the same subjectAltName"
        )
    if asked is None:
        raise Forbidden(
            f"CSR has no subjectAltName but {whose} has {_describe(wanted)}; "
            "RFC 7030 §4.2.2 requires the same subjectAltName"
        )
    missing = sorted(map(_general_name, wanted - asked))
    extra = sorted(map(_general_name, asked - wanted))
    parts = []
    if missing:
        parts.append(f"lacks {', '.join(missing)}")
    if extra:
        parts.append(f"adds {', '.join(extra)}")
    raise Forbidden(
        f"CSR subjectAltName {' and '.join(parts)} compared with {whose}; "
        "RFC 7030 §4.2.2 requires the same subjectAltName"
    )


def _san_names(extensions: x509.Extensions) -> frozenset[x509.GeneralName] | None:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return frozenset(san)


def _describe(names: frozenset[x509.GeneralName] | None) -> str:
    return ", ".join(sorted(map(_general_name, names or ())))


def _general_name(name: x509.GeneralName) -> str:
    kind = {
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
        x509.UniformResourceIdentifier: "URI",
    }.get(type(name), type(name).__name__)
    return f"{kind}:{name.value}"


@dataclass(frozen=True)
class Channel:
    """What the web layer knows about the TLS connection of a request (RFC 7030 §3.5)."""

    protocol: str | None = None  # "TLSv1.2", "TLSv1.3"
    tls_unique: bytes | None = None  # RFC 5929 channel binding; TLS 1.2 only


def pop_linked(
    csr: x509.CertificateSigningRequest, channel: Channel, profile: EnrollmentConfig
) -> None:
    """RFC 7030 §3.5: the CSR's challengePassword carries the base64 tls-unique of this very
    connection, proving that whoever holds the CSR's key also holds this TLS session."""
    if not profile.pop_linking:
        return
    if channel.tls_unique is None:
        if channel.protocol == "TLSv1.3" and profile.pop_on_tls13 == "skip":
            return
        raise Forbidden(
            "this CA requires the CSR to be linked to the TLS session (RFC 7030 §3.5) and "
            f"{channel.protocol or 'this connection'} has no tls-unique value; connect with "
            "TLS 1.2"
        )
    passwords = [
        attribute.value
        for attribute in csr_attributes(csr)
        if attribute.oid == AttributeOID.CHALLENGE_PASSWORD
    ]
    if not passwords:
        raise BadRequest(
            "CSR has no challengePassword: this CA requires it to carry the base64 tls-unique "
            "value of the TLS connection (RFC 7030 §3.5)"
        )
    value = passwords[0]
    expected = base64.b64encode(channel.tls_unique)
    if value.strip() != expected:
        raise Forbidden(
            "CSR challengePassword does not match this TLS connection's tls-unique value "
            "(RFC 7030 §3.5): build the CSR on the same connection that sends it"
        )
