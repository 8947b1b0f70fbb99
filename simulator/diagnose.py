"""`iqe-sim diagnose`: walk the troubleshooting tree against a live appliance and stop at the
first branch that fails, saying what to do.

Steps, each depending on the one before: TCP connect; TLS handshake verified with the
gateway's CA file (or /cacerts pinned by fingerprint); /cacerts in the expected encoding and
matching the trusted CA; one real enrollment by the chosen approach (credentials or RA
certificate, the server's 4xx/5xx sentence, the answer's PKCS#7 encoding, the chain).
The enrollment issues one real certificate (CN `iqe-sim-diagnose` by default), recorded in the
appliance's ledger like any other.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from simulator.gateway import Approach, Gateway
from simulator.pkcs7 import ExpectedFormat
from simulator.pki import KeyType, fingerprint, load_certificates
from simulator.pump import Pump
from simulator.troubleshooting import FIXES, Branch, EnrollmentError


@dataclass(frozen=True)
class Step:
    branch: Branch
    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Diagnosis:
    url: str
    steps: list[Step] = field(default_factory=list)

    @property
    def failure(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def render(self) -> str:
        lines = [f"diagnosing {self.url}"]
        for step in self.steps:
            mark = "ok  " if step.ok else "FAIL"
            lines.append(f"  [{mark}] {step.branch.value:24} {step.check}: {step.detail}")
        failure = self.failure
        if failure is None:
            lines.append("result: every branch of the troubleshooting tree passes")
        else:
            lines.append(
                f"result: fails at branch '{failure.branch.value}': {failure.branch.title}"
            )
            lines.append(f"fix: {failure.fix}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        failure = self.failure
        return {
            "url": self.url,
            "ok": self.ok,
            "failed_branch": failure.branch.value if failure else None,
            "fix": failure.fix if failure else None,
            "steps": [
                {
                    "branch": s.branch.value,
                    "check": s.check,
                    "ok": s.ok,
                    "detail": s.detail,
                    "fix": s.fix,
                }
                for s in self.steps
            ],
        }


def diagnose(
    url: str,
    *,
    ca_file: Path | None = None,
    pin: str | None = None,
    approach: Approach = Approach.PASSWORD,
    username: str | None = None,
    password: str | None = None,
    ra_cert: Path | None = None,
    ra_key: Path | None = None,
    response_format: ExpectedFormat = "der",
    enroll: bool = True,
    common_name: str = "iqe-sim-diagnose",
    timeout: float = 10.0,
) -> Diagnosis:
    gateway = Gateway(
        url,
        ca_file=ca_file,
        pin=pin,
        approach=approach,
        username=username,
        password=password,
        ra_cert=ra_cert,
        ra_key=ra_key,
        response_format=response_format,
        timeout=timeout,
    )
    diagnosis = Diagnosis(gateway.base)
    parts = urlsplit(gateway.base)
    host, port = parts.hostname or "", parts.port or 443
    with gateway:
        # Each step only makes sense when the one before passed.
        diagnosis.steps.append(_connect(host, port, timeout))
        if diagnosis.ok:
            diagnosis.steps.append(_tls(gateway, host, port, timeout))
        if diagnosis.ok:
            diagnosis.steps.append(_cacerts(gateway))
        if diagnosis.ok and enroll:
            diagnosis.steps.append(_enroll(gateway, common_name))
    return diagnosis


def _failed(check: str, error: EnrollmentError) -> Step:
    return Step(error.branch, check, False, error.message, error.fix)


def _connect(host: str, port: int, timeout: float) -> Step:
    check = f"TCP connection to {host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return Step(Branch.CONNECT, check, False, exc.strerror or str(exc), FIXES[Branch.CONNECT])
    return Step(Branch.CONNECT, check, True, "connected")


def _tls(gateway: Gateway, host: str, port: int, timeout: float) -> Step:
    if gateway.ca_file is None:
        check = "TLS trust by the /cacerts fingerprint"
        try:
            prints = gateway.pin_ca()
        except EnrollmentError as error:
            return _failed(check, error)
        how = "matches the pin" if gateway.pin else "NOT pinned: compare it with the appliance's"
        return Step(Branch.TLS_TRUST, check, True, f"CA SHA-256 {prints[0]} ({how})")
    check = f"TLS handshake verified with {gateway.ca_file}"
    context = ssl.create_default_context(cafile=str(gateway.ca_file))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        detail = exc.verify_message or str(exc)
        issuer = _server_issuer(host, port, timeout)
        trusted = ", ".join(c.subject.rfc4514_string() for c in load_certificates(gateway.ca_file))
        if issuer:
            detail += f"; server certificate issued by '{issuer}', CA file holds '{trusted}'"
        return Step(Branch.TLS_TRUST, check, False, detail, FIXES[Branch.TLS_TRUST])
    except (ssl.SSLError, OSError) as exc:
        return Step(Branch.TLS_TRUST, check, False, str(exc), FIXES[Branch.TLS_TRUST])
    return Step(Branch.TLS_TRUST, check, True, f"{version}, server certificate trusted")


def _server_issuer(host: str, port: int, timeout: float) -> str | None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to name the issuer in the diagnosis
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError):
        return None
    if der is None:
        return None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def _cacerts(gateway: Gateway) -> Step:
    check = f"GET /cacerts read as {gateway.response_format}"
    try:
        certs = gateway.fetch_cacerts()
    except EnrollmentError as error:
        return _failed(check, error)
    served = {fingerprint(c) for c in certs}
    if gateway.ca_file is not None:
        trusted = {fingerprint(c) for c in load_certificates(gateway.ca_file)}
        if not served & trusted:
            return Step(
                Branch.CHAIN,
                check,
                False,
                "the CA /cacerts serves is not the CA in the gateway's CA file",
                "replace the gateway's CA file with the appliance's current ca-cert.pem.",
            )
    names = ", ".join(c.subject.rfc4514_string() for c in certs)
    return Step(Branch.PKCS7, check, True, f"{len(certs)} CA certificate(s): {names}")


def _enroll(gateway: Gateway, common_name: str) -> Step:
    operation = "bootstrap" if gateway.approach is Approach.PASSWORD else "simpleenroll"
    check = f"enroll a test pump via /{operation} ({gateway.approach.value} approach)"
    with tempfile.TemporaryDirectory(prefix="iqe-diagnose-") as tmp:
        pump = Pump.create(common_name, Path(tmp) / "pump", KeyType.RSA_2048)
        try:
            ca_chain = gateway.fetch_cacerts()
            enrollment = gateway.enroll_pump(pump, ca_chain)
        except EnrollmentError as error:
            return _failed(check, error)
    serial = (
        enrollment.certificates[0].serial_number
        if pump.certificate is None
        else (pump.certificate.serial_number)
    )
    return Step(
        Branch.CHAIN,
        check,
        True,
        f"certificate {serial:x} for CN={common_name} chains to the CA "
        f"({enrollment.seconds * 1000:.0f} ms)",
    )
