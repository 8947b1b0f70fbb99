"""An infusion pump: a serial number, its own key and CSR, and the certificate bundle the IQE
gateway installs on it.

The pump checks what it receives before installing it, as a careful device would: the leaf
must carry its own public key and its serial as CN, and must chain to the CA it was given with
a profile usable as an EAP-TLS client (clientAuth), checked by pyca/cryptography's RFC 5280
path validation. The installed bundle is what the gateway copies to the pump: `key.pem`
(0600), `cert.pem`, `ca.pem` in a per-pump folder.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from simulator.pki import (
    KeyType,
    PrivateKey,
    certs_pem,
    generate_key,
    key_pem,
    load_key_pem,
    signature_hash,
    write_file,
    write_key,
)

log = logging.getLogger(__name__)


class ChainError(ValueError):
    """The certificate the gateway delivered cannot be installed on this pump."""


def make_csr(serial: str, key: PrivateKey) -> bytes:
    """PKCS#10 with CN = serial, DER (what the IQE gateway forwards)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
        .sign(key, signature_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.DER)


def key_and_csr(serial: str, key_type: KeyType) -> tuple[bytes, bytes]:
    """(key PEM, CSR DER): picklable, so a process pool can make many pumps in parallel."""
    key = generate_key(key_type)
    return key_pem(key), make_csr(serial, key)


@dataclass
class Pump:
    serial: str
    folder: Path
    key: PrivateKey
    csr_der: bytes
    certificate: x509.Certificate | None = None
    ca_chain: tuple[x509.Certificate, ...] = field(default_factory=tuple)

    @classmethod
    def create(cls, serial: str, folder: Path, key_type: KeyType = KeyType.RSA_2048) -> Pump:
        """A new pump with a fresh key; `folder` is where its bundle will be installed."""
        key = generate_key(key_type)
        return cls(serial=serial, folder=Path(folder), key=key, csr_der=make_csr(serial, key))

    @classmethod
    def from_key_pem(cls, serial: str, folder: Path, key_pem_bytes: bytes, csr_der: bytes) -> Pump:
        return cls(
            serial=serial, folder=Path(folder), key=load_key_pem(key_pem_bytes), csr_der=csr_der
        )

    @property
    def key_file(self) -> Path:
        return self.folder / "key.pem"

    @property
    def cert_file(self) -> Path:
        return self.folder / "cert.pem"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def installed(self) -> bool:
        return self.certificate is not None and self.cert_file.exists()

    def check(
        self,
        certificates: Sequence[x509.Certificate],
        ca_chain: Sequence[x509.Certificate],
        *,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Find this pump's certificate among `certificates` and validate it; ChainError if not."""
        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        leaf = next(
            (
                c
                for c in certificates
                if c.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                == spki
            ),
            None,
        )
        if leaf is None:
            raise ChainError(
                f"{self.serial}: no certificate in the answer carries this pump's public key"
            )
        cns = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [self.serial]:
            raise ChainError(f"{self.serial}: certificate CN is {cns!r}, expected the serial")
        if not ca_chain:
            raise ChainError(f"{self.serial}: no CA certificate to check the chain against")
        # Path validation (RFC 5280 §6) with the client-certificate policy: the leaf must be
        # usable for clientAuth, which EAP-TLS needs.
        builder = PolicyBuilder().store(Store(list(ca_chain)))
        builder = builder.time(now or dt.datetime.now(dt.UTC))
        # A pump certificate is named by its CN (the serial); the Web PKI rule that a client
        # certificate must carry a subjectAltName does not apply to EAP-TLS devices.
        ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
        )
        builder = builder.extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
        intermediates = [c for c in certificates if c is not leaf]
        try:
            builder.build_client_verifier().verify(leaf, intermediates)
        except VerificationError as exc:
            raise ChainError(
                f"{self.serial}: certificate does not chain to the CA: {exc}"
            ) from None
        return leaf

    def install(
        self,
        certificates: Sequence[x509.Certificate],
        ca_chain: Sequence[x509.Certificate],
    ) -> Path:
        """Check the certificate, then write key (0600), certificate and CA chain; returns the
        folder. Nothing is written when the check fails."""
        leaf = self.check(certificates, ca_chain)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        write_key(self.key_file, self.key)
        write_file(self.cert_file, certs_pem([leaf]))
        write_file(self.ca_file, certs_pem(list(ca_chain)))
        self.certificate = leaf
        self.ca_chain = tuple(ca_chain)
        log.info(
            "event=pump_installed serial=%s cert_serial=%x folder=%s",
            self.serial,
            leaf.serial_number,
            self.folder,
        )
        return self.folder


def pump_serial(prefix: str, index: int) -> str:
    """Serial numbers shaped like the field's (NPPBBB5): a prefix and a zero-padded number."""
    return f"{prefix}{index:03d}"
