"""An operator's TLS client certificate (issued by our CA, listed in admin.cert_fingerprints)
opens the device API and the dashboard without a password; the same certificate unlisted, or
revoked, does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from simulator.pki import (
    CaFiles,
    KeyType,
    create_ca,
    generate_key,
    issue_client_certificate,
    write_key,
)
from tests.support import curl, make_lab, run_cli, running_appliance


def operator_certificate(lab_certs: Path, folder: Path, cn: str) -> tuple[Path, Path, str]:
    key = generate_key(KeyType.EC_P256)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    cert = issue_client_certificate(
        CaFiles(lab_certs / "ca-cert.pem", lab_certs / "ca-key.pem"), csr
    )
    cert_path, key_path = folder / f"{cn}.pem", folder / f"{cn}-key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    write_key(key_path, key)
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex()


def test_operator_certificate_listed_works_unlisted_or_revoked_does_not(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    lab = make_lab(tmp_path_factory.mktemp("admin-cert"))
    folder = lab.folder
    listed_cert, listed_key, fingerprint = operator_certificate(lab.certs, folder, "netops-alice")
    other_cert, other_key, _fp = operator_certificate(lab.certs, folder, "netops-bob")
    config = yaml.safe_load(lab.config.read_text())
    config["admin"] = {"cert_fingerprints": [fingerprint]}
    lab.config.write_text(yaml.safe_dump(config))
    with running_appliance(lab) as appliance:
        ca = ["--cacert", str(lab.ca_cert)]
        api = f"{appliance.base}/api/stats"
        status, _h, body = curl([*ca, "--cert", str(listed_cert), "--key", str(listed_key), api])
        assert status == 200, body
        status, _h, _b = curl(
            [
                *ca,
                "--cert",
                str(listed_cert),
                "--key",
                str(listed_key),
                f"{appliance.base}/dashboard/",
            ]
        )
        assert status == 200  # no login form for a certificate operator
        status, _h, body = curl([*ca, "--cert", str(other_cert), "--key", str(other_key), api])
        assert status == 403 and b"not an administrator certificate" in body
        serial = format(x509.load_pem_x509_certificate(listed_cert.read_bytes()).serial_number, "x")
        # Not issued through EST, so not in the ledger: by serial the CLI does not know it...
        unknown = run_cli("revoke", serial, "--config", str(lab.config), check=False)
        assert unknown.returncode != 0 and "no certificate with serial" in unknown.stderr
        # ...but given the certificate it checks it against the CA, records and revokes it.
        revoked = run_cli("revoke", "--cert", str(listed_cert), "--reason", "affiliationChanged",
                          "--config", str(lab.config))  # fmt: skip
        assert f"revoked {serial}" in revoked.stdout
        status, _h, body = curl([*ca, "--cert", str(listed_cert), "--key", str(listed_key), api])
        assert status == 403 and b"revoked" in body
        # A certificate from another CA is refused; our own RA certificate is accepted.
        stranger_ca = create_ca(folder / "foreign-ca", "Foreign CA")
        stranger, _key, _fp = operator_certificate(stranger_ca.cert.parent, folder, "stranger")
        foreign = run_cli("revoke", "--cert", str(stranger), "--config", str(lab.config),
                          check=False)  # fmt: skip
        assert foreign.returncode != 0 and "not issued by this appliance's CA" in foreign.stderr
        ours = run_cli("revoke", "--cert", str(lab.ra_cert), "--config", str(lab.config))
        assert "revoked" in ours.stdout
