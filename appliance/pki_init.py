"""`est-appliance init`: the CA, the server's TLS certificate, the IQE gateway's RA certificate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from appliance.clock import Clock
from appliance.config import PkiConfig
from appliance.errors import PkiError
from appliance.issuer import CaMaterial, build_ca, build_ra_cert, build_server_cert
from appliance.keys import generate_key
from appliance.pem_files import ca_key_passphrase, write_certificates, write_private_key


@dataclass(frozen=True)
class CreatedPki:
    ca: x509.Certificate
    server: x509.Certificate
    ra: x509.Certificate
    files: tuple[Path, ...]


def create_pki(
    pki: PkiConfig, clock: Clock, *, force: bool = False, encrypt_ca_key: bool = False
) -> CreatedPki:
    """Create all three; refuse to replace an existing CA unless forced, because every
    certificate it issued (every pump on the network) would stop being trusted. With
    `encrypt_ca_key` the CA key is written encrypted under the configured passphrase."""
    existing = [p for p in (pki.ca_cert, pki.ca_key) if p.exists()]
    if existing and not force:
        raise PkiError(
            f"{existing[0]}: a CA already exists; replacing it invalidates every certificate it "
            "issued. Use --force to replace it anyway."
        )
    passphrase = ca_key_passphrase(pki)
    if encrypt_ca_key and passphrase is None:
        raise PkiError(
            "--encrypt-ca-key needs a passphrase: set pki.ca_key_passphrase_file (a 0600 file) "
            "or pki.ca_key_credential (a systemd credential) in config.yaml"
        )
    pki.dir.mkdir(parents=True, exist_ok=True)
    pki.dir.chmod(0o750)
    now = clock()
    ca_key = generate_key(pki.key_algorithm)
    ca_cert = build_ca(ca_key, pki, now)
    ca = CaMaterial(cert=ca_cert, key=ca_key, chain=(ca_cert,))
    server_key = generate_key(pki.key_algorithm)
    server_cert = build_server_cert(ca, server_key, pki, now)
    ra_key = generate_key(pki.key_algorithm)
    ra_cert = build_ra_cert(ca, ra_key, pki, now)

    # Keys first, certificates last: a half-written PKI never looks complete.
    write_private_key(pki.ca_key, ca_key, passphrase if encrypt_ca_key else None)
    write_private_key(pki.server_key, server_key)
    write_private_key(pki.ra_key, ra_key)
    write_certificates(pki.server_cert, [server_cert])
    write_certificates(pki.ra_cert, [ra_cert])
    write_certificates(pki.ca_cert, [ca_cert])
    files = (pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key, pki.ra_cert, pki.ra_key)
    return CreatedPki(ca=ca_cert, server=server_cert, ra=ra_cert, files=files)


@dataclass(frozen=True)
class IssuedRa:
    cert: x509.Certificate
    cert_path: Path
    key_path: Path


def issue_ra(
    pki: PkiConfig, clock: Clock, cert_path: Path, key_path: Path, *, force: bool = False
) -> IssuedRa:
    """A new RA certificate and key from the existing CA (rotation): the CA, the server
    certificate and every pump certificate stay as they are."""
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise PkiError(
            f"{existing[0]}: already exists; choose new file names (keep the old RA working "
            "until the gateway has the new one) or use --force to overwrite"
        )
    now = clock()
    ca = CaMaterial.load(pki, now)
    key = generate_key(pki.key_algorithm)
    cert = build_ra_cert(ca, key, pki, now)
    write_private_key(key_path, key)
    write_certificates(cert_path, [cert])
    return IssuedRa(cert=cert, cert_path=cert_path, key_path=key_path)
