"""Key generation and the signature hash that goes with each key type."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)

from appliance.config import KeyAlgorithm

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def generate_key(algorithm: KeyAlgorithm) -> SigningKey:
    match algorithm:
        case KeyAlgorithm.RSA_2048:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        case KeyAlgorithm.RSA_3072:
            return rsa.generate_private_key(public_exponent=65537, key_size=3072)
        case KeyAlgorithm.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyAlgorithm.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384:
    """SHA-256, except SHA-384 for a P-384 key (RFC 5480 §4 pairs curve and hash strength)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def as_signing_key(key: object, source: str) -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key
    raise TypeError(f"{source}: only RSA and EC private keys are supported")
