"""Helpers shared by the tests: a lab PKI in a temp folder, a running appliance, openssl, curl."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.auth import hash_password
from simulator import appliance_process

LAB_USER = "iqe-gateway"
LAB_PASSWORD = "iqe-secure-password-2024"
EST_APPLIANCE = [sys.executable, "-m", "appliance.cli"]

_LAB_HASH: str | None = None


def lab_password_hash() -> str:
    global _LAB_HASH  # noqa: PLW0603 - Argon2 is slow on purpose; hash once per session
    if _LAB_HASH is None:
        _LAB_HASH = hash_password(LAB_PASSWORD)
    return _LAB_HASH


def write_config(folder: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    config: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "pki": {"dir": "certs"},
        "auth": {"users": {LAB_USER: lab_password_hash()}},
        "ledger": {"path": "var/ledger.db"},
    }
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_cli(
    *args: str, check: bool = True, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*EST_APPLIANCE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"est-appliance {' '.join(args)} failed: {result.stderr}")
    return result


@dataclass
class Lab:
    folder: Path
    config: Path

    @property
    def certs(self) -> Path:
        return self.folder / "certs"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca-cert.pem"

    @property
    def ra_cert(self) -> Path:
        return self.certs / "iqe-ra-cert.pem"

    @property
    def ra_key(self) -> Path:
        return self.certs / "iqe-ra-key.pem"

    @property
    def ledger(self) -> Path:
        return self.folder / "var" / "ledger.db"


def make_lab(folder: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Lab:
    config = write_config(folder, overrides)
    run_cli("init", "--config", str(config))
    return Lab(folder, config)


class RunningAppliance:
    def __init__(self, lab: Lab, process: subprocess.Popen[bytes], log: Path, base: str) -> None:
        self.lab = lab
        self.process = process
        self.log = log
        self.base = base

    def url(self, operation: str) -> str:
        return f"{self.base}/.well-known/est/{operation}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"appliance died:\n{self.log_text()[-3000:]}"
        status, _h, _b = curl(["--cacert", str(self.lab.ca_cert), self.url("cacerts")])
        assert status == 200, f"appliance no longer answers /cacerts: {status}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_appliance(lab: Lab, *extra: str, timeout: float = 20) -> RunningAppliance:
    # The simulator's lab and the tests start appliances the same way.
    log = lab.folder / f"appliance-{time.monotonic_ns()}.log"
    process, base = appliance_process.spawn(lab.config, log, *extra, timeout=timeout)
    return RunningAppliance(lab, process, log, base)


@contextmanager
def running_appliance(lab: Lab, *extra: str) -> Iterator[RunningAppliance]:
    appliance = start_appliance(lab, *extra)
    try:
        yield appliance
    finally:
        appliance.stop()


def curl(args: list[str], *, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Run real curl; returns (status, headers lower-cased, body). Status 0: no HTTP answer."""
    assert shutil.which("curl"), "curl is required"
    result = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "-D", "-", "--max-time", str(timeout), *args],
        capture_output=True,
        timeout=timeout + 5,
        check=False,
    )
    if result.returncode != 0 and not result.stdout:
        return 0, {"curl-error": result.stderr.decode(errors="replace")}, b""
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def curl_ra_enroll(
    lab: Lab, url: str, csr: Path, *, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """The integration guide's RA recipe: RA client certificate, raw DER CSR, real curl."""
    credentials = ["--cert", str(lab.ra_cert), "--key", str(lab.ra_key)]
    return _curl_post_csr(lab, url, csr, credentials, timeout)


def curl_password_enroll(
    lab: Lab, url: str, csr: Path, user: str, password: str, *, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """The integration guide's password recipe: HTTP Basic, raw DER CSR, real curl."""
    return _curl_post_csr(lab, url, csr, ["-u", f"{user}:{password}"], timeout)


def _curl_post_csr(
    lab: Lab, url: str, csr: Path, credentials: list[str], timeout: float
) -> tuple[int, dict[str, str], bytes]:
    return curl(
        [
            "--cacert",
            str(lab.ca_cert),
            *credentials,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{csr}",
            url,
        ],
        timeout=timeout,
    )


def openssl(*args: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", *args], input=input_bytes, capture_output=True, timeout=60, check=False
    )


def make_csr(
    folder: Path, cn: str, *, newkey: str = "rsa:2048", extra: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """A CSR in DER made by the openssl command line, and its key."""
    key = folder / f"{cn}-key.pem"
    csr = folder / f"{cn}.der"
    result = openssl(
        "req",
        "-new",
        "-newkey",
        newkey,
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-outform",
        "DER",
        "-subj",
        f"/CN={cn}",
        *extra,
    )
    assert result.returncode == 0, result.stderr.decode()
    return csr, key


def pkcs7_certificates(p7: bytes, inform: str = "DER") -> str:
    """`openssl pkcs7 -print_certs` of a response; fails the test if openssl cannot parse it."""
    result = openssl("pkcs7", "-inform", inform, "-print_certs", input_bytes=p7)
    assert result.returncode == 0, f"openssl pkcs7 could not parse: {result.stderr.decode()}"
    return result.stdout.decode()


def verify_with_ca(cert_pem: str, ca: Path, folder: Path) -> subprocess.CompletedProcess[bytes]:
    path = folder / f"verify-{time.monotonic_ns()}.pem"
    path.write_text(cert_pem)
    return openssl("verify", "-CAfile", str(ca), str(path))
