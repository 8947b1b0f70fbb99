"""One appliance for the conformance module, with a CA label per rule under test.

| label     | what it exercises                                                          |
|-----------|----------------------------------------------------------------------------|
| (default) | the shipped gateway profile: DER answers, duplicates allowed               |
| rfc       | RFC clients: base64 answers, duplicate subjects rejected, the RFC 7030     |
|           | §4.5.2 example CsrAttrs (challengePassword, P-384, macAddress, SHA-384)    |
| supersede | duplicate subjects supersede the old certificate, which is also revoked    |
| manual    | manual approval (RFC 7030 §4.2.3), Retry-After 30                          |
| pop       | proof-of-possession linking (RFC 7030 §3.5), TLS 1.3 refused               |
| pop13     | proof-of-possession linking, TLS 1.3 accepted unlinked                     |
| keygen    | serverkeygen with EC P-256 keys, base64 parts                              |
| noreg     | an RA may not renew on a pump's behalf                                     |
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.support import (
    Lab,
    RunningAppliance,
    curl,
    make_lab,
    openssl,
    pkcs7_certificates,
    start_appliance,
)

PROFILES = {
    "rfc": {
        "response_format": "base64",
        "enrollment": {
            "duplicate_subject": "reject",
            "csr_attributes": {
                "challenge_password": True,
                "key_type": "ec-p384",
                "extension_requests": ["macAddress"],
            },
        },
    },
    "supersede": {
        "response_format": "base64",
        "enrollment": {"duplicate_subject": "supersede", "revoke_superseded": True},
    },
    "manual": {
        "response_format": "base64",
        "enrollment": {"manual_approval": True, "retry_after_seconds": 30},
    },
    "pop": {"response_format": "base64", "enrollment": {"pop_linking": True}},
    "pop13": {
        "response_format": "base64",
        "enrollment": {"pop_linking": True, "pop_on_tls13": "skip"},
    },
    "keygen": {"response_format": "base64", "enrollment": {"serverkeygen_key": "ec-p256"}},
    "noreg": {"response_format": "base64", "enrollment": {"ra_may_reenroll": False}},
}

CSR_TYPE = ["-H", "Content-Type: application/pkcs10"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(tmp_path_factory.mktemp("conformance"), {"profiles": PROFILES})


@pytest.fixture(scope="module")
def appliance(lab: Lab) -> Iterator[RunningAppliance]:
    running = start_appliance(lab)
    yield running
    running.stop()


@dataclass(frozen=True)
class PumpCert:
    cert: Path
    key: Path
    serial: str
    pem: str


def ra(lab: Lab) -> list[str]:
    return ["--cacert", str(lab.ca_cert), "--cert", str(lab.ra_cert), "--key", str(lab.ra_key)]


def url(appliance: RunningAppliance, operation: str, label: str = "") -> str:
    return appliance.url(f"{label}/{operation}" if label else operation)


def new_csr(
    work: Path,
    cn: str,
    *,
    key: Path | None = None,
    san: str | None = None,
    subject: str | None = None,
) -> tuple[Path, Path]:
    """A DER CSR made by openssl; reuses `key` when given (renew), else a new RSA key."""
    csr = work / f"{cn}-{len(list(work.iterdir()))}.der"
    args = ["req", "-new", "-outform", "DER", "-out", str(csr), "-subj", subject or f"/CN={cn}"]
    if key is None:
        key = work / f"{cn}-{len(list(work.iterdir()))}-key.pem"
        args += ["-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
    else:
        args += ["-key", str(key)]
    if san:
        args += ["-addext", f"subjectAltName={san}"]
    result = openssl(*args)
    assert result.returncode == 0, result.stderr.decode()
    return csr, key


def enroll_pump(
    appliance: RunningAppliance, work: Path, cn: str, *, san: str | None = None, label: str = ""
) -> PumpCert:
    """A pump certificate through the RA, written as PEM for curl --cert."""
    csr, key = new_csr(work, cn, san=san)
    status, _h, body = curl(
        [
            *ra(appliance.lab),
            *CSR_TYPE,
            "--data-binary",
            f"@{csr}",
            url(appliance, "simpleenroll", label),
        ]
    )
    assert status == 200, body
    return save_cert(body, key, work, cn, base64_body=bool(label))


def save_cert(body: bytes, key: Path, work: Path, cn: str, *, base64_body: bool) -> PumpCert:
    der = base64.b64decode(body) if base64_body else body
    pem = pkcs7_certificates(der, "DER")
    cert = x509.load_pem_x509_certificate(pem.encode())
    path = work / f"{cn}-{cert.serial_number:x}.pem"
    path.write_text(pem)
    return PumpCert(path, key, format(cert.serial_number, "x"), pem)


def cert_of(body: bytes, *, base64_body: bool) -> x509.Certificate:
    der = base64.b64decode(body) if base64_body else body
    return x509.load_pem_x509_certificate(pkcs7_certificates(der, "DER").encode())


def cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    from tests.support import run_cli

    return run_cli(*args, "--config", str(lab.config), check=False)
