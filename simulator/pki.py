"""Small PKI helpers the simulator needs around the appliance: keys, PEM files, the RADIUS
server's certificate and a foreign CA for negative controls.

Everything is pyca/cryptography; files are written atomically and private keys are created
0600 from the start (never widened by the umask in between).
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyType(enum.Enum):
    """Pump key types: RSA-2048 is what every pump supplicant supports (see README)."""

    RSA_2048 = "rsa-2048"
    EC_P256 = "ec-p256"


def generate_key(key_type: KeyType) -> PrivateKey:
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key_pem(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("only RSA and EC private keys are supported")
    return key


def certs_pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file created with its final mode, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_key(path: Path, key: PrivateKey) -> None:
    write_file(path, key_pem(key), 0o600)


def load_certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as the operator compares it: AB:CD:..."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CaFiles:
    cert: Path
    key: Path

    def load(self) -> tuple[x509.Certificate, PrivateKey]:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()), load_key_pem(
            self.key.read_bytes()
        )


def create_ca(folder: Path, common_name: str, *, days: int = 30) -> CaFiles:
    """A self-signed CA, e.g. the 'foreign' CA of a negative control."""
    key = generate_key(KeyType.RSA_2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )
    files = CaFiles(folder / "ca-cert.pem", folder / "ca-key.pem")
    write_key(files.key, key)
    write_file(files.cert, certs_pem([cert]))
    return files


def _key_usage(*, cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca: CaFiles,
    subject_cn: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    eku: x509.ObjectIdentifier,
    days: int,
) -> x509.CertificateBuilder:
    ca_cert, ca_key = ca.load()
    now = _utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(public_key, rsa.RSAPublicKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def issue_server_certificate(
    ca: CaFiles, folder: Path, common_name: str = "radius.lab.invalid", *, days: int = 30
) -> tuple[Path, Path]:
    """The RADIUS server's EAP-TLS certificate (EKU serverAuth), signed by `ca`.

    Pumps check the RADIUS server against the CA chain they were given, so in the lab the
    server certificate comes from the same EST CA that issued the pumps' certificates.
    """
    _ca_cert, ca_key = ca.load()
    key = generate_key(KeyType.RSA_2048)
    cert = (
        _leaf(ca, common_name, key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, days)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, signature_hash(ca_key))
    )
    cert_path, key_path = folder / "server-cert.pem", folder / "server-key.pem"
    write_key(key_path, key)
    write_file(cert_path, certs_pem([cert]))
    return cert_path, key_path


def issue_client_certificate(
    ca: CaFiles, csr: x509.CertificateSigningRequest, *, days: int = 30
) -> x509.Certificate:
    """A clientAuth certificate for a CSR, signed by `ca` — a foreign CA in negative controls."""
    public_key = csr.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("only RSA and EC keys are supported")
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    _ca_cert, ca_key = ca.load()
    return _leaf(ca, str(cn), public_key, ExtendedKeyUsageOID.CLIENT_AUTH, days).sign(
        ca_key, signature_hash(ca_key)
    )
