"""A pump renews its own certificate (RFC 7030 §4.2.2 simplereenroll).

The pump authenticates with the certificate it holds (its installed bundle: key.pem, cert.pem,
ca.pem), sends a CSR with exactly that certificate's Subject and SubjectAltName, and installs
the answer. Same key = renew; `rekey=True` makes a new key first.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from simulator.gateway import Approach, est_base, http_error
from simulator.pkcs7 import ExpectedFormat, read_certs_only
from simulator.pki import (
    KeyType,
    PrivateKey,
    generate_key,
    load_certificates,
    load_key_pem,
    signature_hash,
)
from simulator.pump import ChainError, Pump
from simulator.troubleshooting import FIXES, Branch, EnrollmentError

log = logging.getLogger(__name__)

CSR_MEDIA_TYPE = "application/pkcs10"


@dataclass(frozen=True)
class Renewal:
    pump: Pump
    old_serial: int
    new_serial: int
    rekeyed: bool
    seconds: float


def load_installed_pump(folder: Path) -> tuple[Pump, x509.Certificate]:
    """The pump whose bundle is installed in `folder`, and its current certificate."""
    folder = Path(folder)
    for name in ("key.pem", "cert.pem", "ca.pem"):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: no {name}; enroll the pump first (iqe-sim enroll)")
    key = load_key_pem((folder / "key.pem").read_bytes())
    cert = load_certificates(folder / "cert.pem")[0]
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    serial = str(cns[0].value) if cns else folder.name
    pump = Pump(serial=serial, folder=folder, key=key, csr_der=b"")
    pump.certificate = cert
    pump.ca_chain = tuple(load_certificates(folder / "ca.pem"))
    return pump, cert


def reenroll_csr(cert: x509.Certificate, key: PrivateKey) -> bytes:
    """RFC 7030 §4.2.2: the CSR repeats the certificate's Subject and SubjectAltName."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(cert.subject)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(san.value, critical=san.critical)
    except x509.ExtensionNotFound:
        pass
    csr = builder.sign(key, signature_hash(key))
    return csr.public_bytes(serialization.Encoding.DER)


def renew_pump(
    url: str,
    folder: Path,
    *,
    ca_file: Path | None = None,
    rekey: bool = False,
    key_type: KeyType = KeyType.RSA_2048,
    response_format: ExpectedFormat = "auto",
    label: str | None = None,
    timeout: float = 15.0,
) -> Renewal:
    """Renew (or rekey) the pump installed in `folder`; EnrollmentError on any failure. The
    new bundle replaces the old one only after the answer checked out."""
    pump, current = load_installed_pump(folder)
    trust = ca_file or pump.ca_file
    new_key = generate_key(key_type) if rekey else pump.key
    csr_der = reenroll_csr(current, new_key)
    base = est_base(url) + (f"/{label}" if label else "")
    started = time.perf_counter()
    with requests.Session() as session:
        session.trust_env = False  # loopback/LAN only: never an environment proxy
        session.verify = str(trust)
        # The pump's own certificate is its credential for simplereenroll.
        session.cert = (str(pump.cert_file), str(pump.key_file))
        try:
            response = session.post(
                f"{base}/simplereenroll",
                data=base64.encodebytes(csr_der),
                headers={"Content-Type": CSR_MEDIA_TYPE, "Content-Transfer-Encoding": "base64"},
                timeout=timeout,
            )
        except requests.exceptions.SSLError as exc:
            # An expired or foreign pump certificate fails the handshake itself.
            raise EnrollmentError(
                Branch.TLS_CLIENT_CERT,
                f"TLS with the pump's certificate failed: {exc}",
                FIXES[Branch.TLS_CLIENT_CERT],
            ) from None
        except requests.exceptions.RequestException as exc:
            raise EnrollmentError(
                Branch.CONNECT, f"no answer from {base}: {exc}", FIXES[Branch.CONNECT]
            ) from None
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise http_error(response, Approach.RA)
    certs = read_certs_only(
        response.content,
        response_format,
        transfer_encoding=response.headers.get("Content-Transfer-Encoding"),
    )
    renewed = Pump(serial=pump.serial, folder=pump.folder, key=new_key, csr_der=csr_der)
    try:
        leaf = renewed.check(certs, pump.ca_chain)
        renewed.install(certs, pump.ca_chain)
    except ChainError as exc:
        raise EnrollmentError(Branch.CHAIN, str(exc), FIXES[Branch.CHAIN]) from None
    log.info(
        "event=pump_renewed serial=%s old=%x new=%x rekey=%s",
        pump.serial,
        current.serial_number,
        leaf.serial_number,
        rekey,
    )
    return Renewal(renewed, current.serial_number, leaf.serial_number, rekey, seconds)
