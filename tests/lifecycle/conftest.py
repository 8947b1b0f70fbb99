"""One appliance per module with operators, a CRL distribution URL and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth import hash_password
from tests.support import Lab, RunningAppliance, curl, make_csr, make_lab, start_appliance

ADMIN_USER = "netops"
ADMIN_PASSWORD = "operator-pass-2024"
CDP_URL = "http://pki.hospital.example/est-ca.crl"

_ADMIN_HASH: str | None = None


def admin_hash() -> str:
    global _ADMIN_HASH  # noqa: PLW0603 - Argon2 is slow on purpose; hash once
    if _ADMIN_HASH is None:
        _ADMIN_HASH = hash_password(ADMIN_PASSWORD)
    return _ADMIN_HASH


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(
        tmp_path_factory.mktemp("lifecycle"),
        {
            "admin": {"users": {ADMIN_USER: admin_hash()}},
            "crl": {"distribution_url": CDP_URL},
        },
    )


@pytest.fixture(scope="module")
def appliance(lab: Lab) -> Iterator[RunningAppliance]:
    running = start_appliance(lab)
    yield running
    running.stop()


def enroll(appliance: RunningAppliance, cn: str, folder: Path) -> tuple[Path, Path, str]:
    """Enroll `cn` through the RA with real curl; returns (cert PEM path, key path, serial)."""
    lab = appliance.lab
    csr, key = make_csr(folder, cn)
    status, _h, body = curl(
        [
            "--cacert", str(lab.ca_cert), "--cert", str(lab.ra_cert), "--key", str(lab.ra_key),
            "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}",
            appliance.url("simpleenroll"),
        ]
    )  # fmt: skip
    assert status == 200, body
    from cryptography.hazmat.primitives.serialization import pkcs7

    (cert,) = pkcs7.load_der_pkcs7_certificates(body)
    from cryptography.hazmat.primitives.serialization import Encoding

    path = folder / f"{cn}-cert.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return path, key, format(cert.serial_number, "x")


def admin_curl(
    appliance: RunningAppliance, path: str, *extra: str
) -> tuple[int, dict[str, str], bytes]:
    return curl(
        [
            "--cacert", str(appliance.lab.ca_cert), "-u", f"{ADMIN_USER}:{ADMIN_PASSWORD}",
            *extra, appliance.base + path,
        ]
    )  # fmt: skip
