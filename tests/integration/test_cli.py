"""`est-appliance` from a user's shell: init, serve's refusals, passwd, list."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import (
    LAB_PASSWORD,
    LAB_USER,
    curl,
    curl_password_enroll,
    curl_ra_enroll,
    make_csr,
    make_lab,
    openssl,
    run_cli,
    running_appliance,
    start_appliance,
    write_config,
)

KEYS = ("ca-key.pem", "server-key.pem", "iqe-ra-key.pem")
CERTS = ("ca-cert.pem", "server-cert.pem", "iqe-ra-cert.pem")


def test_init_writes_pki_with_private_keys_0600(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    for name in KEYS:
        assert stat.S_IMODE((lab.certs / name).stat().st_mode) == 0o600, name
    for name in CERTS:
        assert (lab.certs / name).exists()
    for name in ("server-cert.pem", "iqe-ra-cert.pem"):
        result = openssl("verify", "-CAfile", str(lab.ca_cert), str(lab.certs / name))
        assert result.returncode == 0, result.stdout


def test_ra_certificate_profile(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    dump = openssl("x509", "-in", str(lab.ra_cert), "-noout", "-text", "-dates").stdout.decode()
    assert "CMC Registration Authority" in dump or "1.3.6.1.5.5.7.3.28" in dump
    assert "TLS Web Client Authentication" in dump
    assert "CA:FALSE" in dump
    not_before = [line for line in dump.splitlines() if line.startswith("notBefore=")][0]
    not_after = [line for line in dump.splitlines() if line.startswith("notAfter=")][0]
    assert int(not_after.split()[-2]) - int(not_before.split()[-2]) == 2


def test_server_certificate_has_configured_sans(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, {"pki": {"server_sans": ["est.hospital.example", "127.0.0.1"]}})
    dump = openssl(
        "x509", "-in", str(lab.certs / "server-cert.pem"), "-noout", "-ext", "subjectAltName"
    ).stdout.decode()
    assert "DNS:est.hospital.example" in dump
    assert "IP Address:127.0.0.1" in dump


def test_init_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    before = lab.ca_cert.read_bytes()
    result = run_cli("init", "--config", str(lab.config), check=False)
    assert result.returncode == 2
    assert "a CA already exists" in result.stderr and "--force" in result.stderr
    assert lab.ca_cert.read_bytes() == before
    run_cli("init", "--config", str(lab.config), "--force")
    assert lab.ca_cert.read_bytes() != before


@pytest.mark.parametrize(
    "algorithm,marker",
    [
        ("rsa-3072", "Public-Key: (3072 bit)"),
        ("ec-p256", "NIST CURVE: P-256"),
        ("ec-p384", "NIST CURVE: P-384"),
    ],
)
def test_key_algorithm_is_configurable(
    algorithm: str, marker: str, tmp_path: Path, work: Path
) -> None:
    lab = make_lab(tmp_path / "lab", {"pki": {"key_algorithm": algorithm}})
    dump = openssl("x509", "-in", str(lab.ca_cert), "-noout", "-text").stdout.decode()
    assert marker in dump
    csr, _key = make_csr(work, "ec-pump", newkey="rsa:2048")
    with running_appliance(lab) as appliance:
        status, _h, _b = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr)
        assert status == 200


def test_serve_refuses_a_world_readable_key_naming_it(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    (lab.certs / "ca-key.pem").chmod(0o644)
    result = run_cli("serve", "--config", str(lab.config), check=False, timeout=30)
    assert result.returncode == 2
    assert f"{lab.certs / 'ca-key.pem'}: private key is accessible by group or others" in (
        result.stderr
    )
    assert "chmod 600" in result.stderr


def test_serve_refuses_a_missing_file_naming_it(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    (lab.certs / "server-cert.pem").unlink()
    result = run_cli("serve", "--config", str(lab.config), check=False, timeout=30)
    assert result.returncode == 2
    assert f"{lab.certs / 'server-cert.pem'}: certificate file is missing" in result.stderr


def test_serve_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "a")
    other = make_lab(tmp_path / "b")
    (lab.certs / "server-key.pem").write_bytes((other.certs / "server-key.pem").read_bytes())
    result = run_cli("serve", "--config", str(lab.config), check=False, timeout=30)
    assert result.returncode == 2
    assert "server-key.pem: private key does not match" in result.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"server": {"port": 70000}}, "server.port: must be between 0 and 65535, got 70000"),
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"gateway": {"response_format": "xml"}}, "gateway.response_format: must be one of der"),
        (
            {"auth": {"users": {"iqe-gateway": "plaintext"}}},
            "auth.users.iqe-gateway: not an Argon2",
        ),
        ({"pki": {"key_algorithm": "rsa-1024"}}, "pki.key_algorithm: must be one of rsa-2048"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(
    overrides: dict[str, dict[str, object]], message: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, overrides)
    result = run_cli("serve", "--config", str(config), check=False, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_check_config_only_validates_the_file_before_the_pki_exists(tmp_path: Path) -> None:
    """What the Ansible role's template runs on a rendered config.yaml before installing it."""
    config = write_config(tmp_path, {"enrollment": {"duplicate_subject": "reject"}})
    only = run_cli("check", "--config-only", "--config", str(config), check=False, timeout=30)
    assert only.returncode == 0, only.stderr
    assert "configuration is valid (PKI not checked)" in only.stdout
    full = run_cli("check", "--config", str(config), check=False, timeout=30)
    assert full.returncode == 2 and "certificate file is missing" in full.stderr
    bad = write_config(tmp_path / "bad", {"enrollment": {"duplicate_subject": "refuse"}})
    refused = run_cli("check", "--config-only", "--config", str(bad), check=False, timeout=30)
    assert refused.returncode == 2
    assert "enrollment.duplicate_subject: must be one of allow, reject" in refused.stderr


def test_passwd_stores_a_hash_that_the_server_accepts(tmp_path: Path, work: Path) -> None:
    lab = make_lab(tmp_path)
    original = lab.config.read_text()
    run_cli(
        "passwd",
        "nurse-station",
        "--config",
        str(lab.config),
        "--password-stdin",
        input="a-long-enough-password\n",
    )
    stored = yaml.safe_load(lab.config.read_text())["auth"]["users"]
    assert stored["nurse-station"].startswith("$argon2id$")
    assert "a-long-enough-password" not in lab.config.read_text()
    assert stored[LAB_USER] == yaml.safe_load(original)["auth"]["users"][LAB_USER]
    short = run_cli(
        "passwd", "x", "--config", str(lab.config), "--password-stdin", input="short\n", check=False
    )
    assert short.returncode == 2
    csr, _ = make_csr(work, "pw-pump")
    with running_appliance(lab) as appliance:
        for user, password, expected in [
            ("nurse-station", "a-long-enough-password", 200),
            ("nurse-station", LAB_PASSWORD, 401),
            (LAB_USER, LAB_PASSWORD, 200),
        ]:
            status, _h, _b = curl_password_enroll(
                lab, appliance.url("bootstrap"), csr, user, password
            )
            assert status == expected, (user, password)


def test_list_prints_issued_certificates(tmp_path: Path, work: Path) -> None:
    lab = make_lab(tmp_path)
    csr, _ = make_csr(work, "NPPLIST1")
    appliance = start_appliance(lab)
    try:
        status, _h, _b = curl(
            [
                "--cacert",
                str(lab.ca_cert),
                "-u",
                f"{LAB_USER}:{LAB_PASSWORD}",
                "-H",
                "Content-Type: application/pkcs10",
                "--data-binary",
                f"@{csr}",
                appliance.url("bootstrap"),
            ]
        )
        assert status == 200
    finally:
        appliance.stop()
    listing = run_cli("list", "--config", str(lab.config)).stdout
    header, row = listing.splitlines()[:2]
    assert header.split()[:3] == ["SERIAL", "SUBJECT", "SANS"]
    assert "CN=NPPLIST1" in row and "password" not in row and "iqe-gateway" in row
    assert "bootstrap" in row


def test_the_postgresql_driver_is_loaded_only_for_a_postgresql_ledger() -> None:
    """psycopg and libpq cost every serving process about 9 MiB; a SQLite appliance (the
    default) must not pay that through an import of the backup or ledger modules."""
    probe = "import sys, appliance.cli, appliance.server; print('psycopg' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
