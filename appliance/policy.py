"""Small, single-purpose checks on a CSR before anything is signed.

Each check raises an EstError whose message says what to change. `default_csr_policy` returns
the list the enrollment service applies, so a profile can add or drop checks without touching
the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from appliance.config import EnrollmentConfig
from appliance.errors import BadRequest

CsrCheck = Callable[[x509.CertificateSigningRequest], None]


def key_strength(profile: EnrollmentConfig) -> CsrCheck:
    """RSA within [min, max] bits, EC on an allowed curve; nothing else."""

    def check(csr: x509.CertificateSigningRequest) -> None:
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


def subject_has_common_name(csr: x509.CertificateSigningRequest) -> None:
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
