"""Pre-generated pump CSRs: RSA-2048 keys (what most pump supplicants use), one CN each."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def pump_csrs(count: int, keys: int) -> list[bytes]:
    """`count` DER CSRs over `keys` RSA-2048 keys (keys are the slow part to make)."""
    private_keys = [
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(keys)
    ]
    csrs = []
    for index in range(count):
        serial = f"BENCH{index:06d}"
        builder = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hospital Clinical Network"),
                        x509.NameAttribute(NameOID.COMMON_NAME, serial),
                    ]
                )
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(f"{serial.lower()}.pumps.example")]),
                critical=False,
            )
        )
        csr = builder.sign(private_keys[index % keys], hashes.SHA256())
        csrs.append(csr.public_bytes(serialization.Encoding.DER))
    return csrs
