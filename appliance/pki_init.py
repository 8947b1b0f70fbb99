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
from appliance.pem_files import write_certificates, write_private_key


@dataclass(frozen=True)
class CreatedPki:
    ca: x509.Certificate
    server: x509.Certificate
    ra: x509.Certificate
    files: tuple[Path, ...]


def create_pki(pki: PkiConfig, clock: Clock, *, force: bool = False) -> CreatedPki:
    """Create all three; refuse to replace an existing CA unless forced, because every
    certificate it issued (every pump on the network) would stop being trusted."""
    existing = [p for p in (pki.ca_cert, pki.ca_key) if p.exists()]
    if existing and not force:
        raise PkiError(
            f"{existing[0]}: a CA already exists; replacing it invalidates every certificate it "
            "issued. Use --force to replace it anyway."
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
    write_private_key(pki.ca_key, ca_key)
    write_private_key(pki.server_key, server_key)
    write_private_key(pki.ra_key, ra_key)
    write_certificates(pki.server_cert, [server_cert])
    write_certificates(pki.ra_cert, [ra_cert])
    write_certificates(pki.ca_cert, [ca_cert])
    files = (pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key, pki.ra_cert, pki.ra_key)
    return CreatedPki(ca=ca_cert, server=server_cert, ra=ra_cert, files=files)
