"""Secrets at rest (issue 7): the CA key encrypted with a passphrase from a file or a systemd
credential; wrong, missing or exposed passphrases and unsafe keys are refused, naming the file;
the audit log helper refuses secrets; RA rotation with `issue-ra` leaves the CA untouched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from appliance import audit
from tests.support import (
    Lab,
    curl,
    make_csr,
    make_lab,
    openssl,
    pkcs7_certificates,
    run_cli,
    running_appliance,
    verify_with_ca,
    write_config,
)

PASSPHRASE = "correct horse battery staple 7030"


def _passphrase_file(folder: Path, text: str = PASSPHRASE, mode: int = 0o600) -> Path:
    path = folder / "ca-passphrase.txt"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    folder = tmp_path_factory.mktemp("encrypted-ca")
    _passphrase_file(folder)
    config = write_config(
        folder, {"pki": {"dir": "certs", "ca_key_passphrase_file": "ca-passphrase.txt"}}
    )
    run_cli("init", "--encrypt-ca-key", "--config", str(config))
    return Lab(folder, config)


def test_init_writes_the_ca_key_encrypted(encrypted: Lab) -> None:
    key = (encrypted.certs / "ca-key.pem").read_text()
    assert key.startswith("-----BEGIN ENCRYPTED " + "PRIVATE KEY-----")
    # openssl opens it with the passphrase, and not without.
    good = openssl(
        "pkey",
        "-in",
        str(encrypted.certs / "ca-key.pem"),
        "-passin",
        f"pass:{PASSPHRASE}",
        "-noout",
    )
    assert good.returncode == 0, good.stderr
    bad = openssl(
        "pkey", "-in", str(encrypted.certs / "ca-key.pem"), "-passin", "pass:wrong", "-noout"
    )
    assert bad.returncode != 0
    # The other keys stay plain (cheroot loads the server key without a passphrase).
    assert "ENCRYPTED" not in (encrypted.certs / "server-key.pem").read_text()


def test_appliance_serves_with_the_encrypted_ca_key(encrypted: Lab, tmp_path: Path) -> None:
    csr, _ = make_csr(tmp_path, "NPP-ENC-1")
    with running_appliance(encrypted) as appliance:
        status, _h, body = curl(
            [
                "--cacert", str(encrypted.ca_cert),
                "--cert", str(encrypted.ra_cert),
                "--key", str(encrypted.ra_key),
                "-H", "Content-Type: application/pkcs10",
                "--data-binary", f"@{csr}",
                appliance.url("simpleenroll"),
            ]
        )  # fmt: skip
    assert status == 200, body
    verified = verify_with_ca(pkcs7_certificates(body), encrypted.ca_cert, tmp_path)
    assert verified.returncode == 0


def _copy(lab: Lab, folder: Path, pki: dict[str, object]) -> Path:
    shutil.copytree(lab.certs, folder / "certs")
    return write_config(folder, {"pki": {"dir": "certs", **pki}})


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("wrong", "the passphrase from pki.ca_key_passphrase_file"),
        ("none", "private key is encrypted; no passphrase was configured"),
        ("exposed", "passphrase is accessible by group or others (mode 0644)"),
        ("missing", "passphrase file is missing"),
        ("credential-without-systemd", "$CREDENTIALS_DIRECTORY is not set"),
    ],
)
def test_check_refuses_a_bad_passphrase_naming_the_file(
    encrypted: Lab, tmp_path: Path, setup: str, message: str
) -> None:
    pki: dict[str, object] = {}
    if setup == "wrong":
        _passphrase_file(tmp_path, "not the passphrase")
        pki["ca_key_passphrase_file"] = "ca-passphrase.txt"
    elif setup == "exposed":
        _passphrase_file(tmp_path, mode=0o644)
        pki["ca_key_passphrase_file"] = "ca-passphrase.txt"
    elif setup == "missing":
        pki["ca_key_passphrase_file"] = "nowhere.txt"
    elif setup == "credential-without-systemd":
        pki["ca_key_credential"] = "est-ca-passphrase"
    config = _copy(encrypted, tmp_path, pki)
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    result = run_cli("check", "--config", str(config), check=False, env=env)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr, result.stderr
    named = {
        "wrong": "ca-key.pem",
        "none": "ca-key.pem",
        "exposed": "ca-passphrase.txt",
        "missing": "nowhere.txt",
        "credential-without-systemd": "est-ca-passphrase",
    }[setup]
    assert named in result.stderr


def test_systemd_credential_supplies_the_passphrase(encrypted: Lab, tmp_path: Path) -> None:
    """LoadCredential=est-ca-passphrase:... puts the file in $CREDENTIALS_DIRECTORY."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret = credentials / "est-ca-passphrase"
    secret.write_text(PASSPHRASE)
    secret.chmod(0o400)
    config = _copy(encrypted, tmp_path, {"ca_key_credential": "est-ca-passphrase"})
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    result = run_cli("check", "--config", str(config), check=False, env=env)
    assert result.returncode == 0, result.stderr
    # Negative control: the same credential name in an empty directory is refused.
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(
        "check",
        "--config",
        str(config),
        check=False,
        env={**env, "CREDENTIALS_DIRECTORY": str(empty)},
    )
    assert result.returncode == 2 and "est-ca-passphrase" in result.stderr


def test_a_plain_key_is_refused_when_a_passphrase_is_configured(tmp_path: Path) -> None:
    """Someone swapped the encrypted CA key for a plain one: refuse rather than carry on."""
    lab = make_lab(tmp_path / "plain")
    _passphrase_file(lab.folder)
    config = write_config(
        lab.folder, {"pki": {"dir": "certs", "ca_key_passphrase_file": "ca-passphrase.txt"}}
    )
    result = run_cli("check", "--config", str(config), check=False)
    assert result.returncode == 2
    assert "ca-key.pem: private key is not encrypted" in result.stderr


def test_issue_ra_rotates_the_ra_without_touching_the_ca(encrypted: Lab, tmp_path: Path) -> None:
    ca_before = encrypted.ca_cert.read_bytes(), (encrypted.certs / "ca-key.pem").read_bytes()
    cert, key = tmp_path / "new-ra-cert.pem", tmp_path / "new-ra-key.pem"
    result = run_cli(
        "issue-ra", "--config", str(encrypted.config), "--cert", str(cert), "--key", str(key)
    )
    assert "SHA-256" in result.stdout
    assert (
        encrypted.ca_cert.read_bytes(),
        (encrypted.certs / "ca-key.pem").read_bytes(),
    ) == ca_before
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    text = openssl("x509", "-in", str(cert), "-noout", "-text").stdout.decode()
    assert "1.3.6.1.5.5.7.3.28" in text or "CMC Registration Authority" in text
    assert openssl("verify", "-CAfile", str(encrypted.ca_cert), str(cert)).returncode == 0
    # Recorded in the ledger (so it can be listed and revoked) and in the audit log.
    listed = run_cli("list", "--config", str(encrypted.config), "--json").stdout
    assert '"endpoint": "issue-ra"' in listed
    assert '"operation": "issue-ra"' in (encrypted.folder / "var" / "audit.log").read_text()
    # Refuses to overwrite without --force.
    again = run_cli(
        "issue-ra",
        "--config",
        str(encrypted.config),
        "--cert",
        str(cert),
        "--key",
        str(key),
        check=False,
    )
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "x"},
        {"ca_key_passphrase": "x"},
        {"private_key": "x"},
        # A fake PEM key (assembled so that secret scanners do not flag this file).
        {"detail": "-----BEGIN " + "PRIVATE KEY-----\nMII...\n-----END " + "PRIVATE KEY-----"},
        {"der": b"\x30\x00"},
    ],
)
def test_audit_record_refuses_secrets(tmp_path: Path, fields: dict[str, object]) -> None:
    log = audit.AuditLog(tmp_path / "audit.log")
    with pytest.raises(ValueError, match="audit field"):
        log.record("issued", **fields)
    log.record("issued", serial="1f", by="client-certificate:CN=RA")  # negative control
    log.close()
    assert (tmp_path / "audit.log").read_text().count("\n") == 1


def test_audit_log_refuses_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        audit.AuditLog(path)
    path.chmod(0o640)  # a log-reader group may read it
    audit.AuditLog(path).close()
