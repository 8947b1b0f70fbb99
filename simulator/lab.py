"""The full local lab, on loopback: a lab PKI, the appliance, FreeRADIUS, N pumps enrolled by
each of the IQE gateway's approaches, every pump proven by EAP-TLS, and the negative controls.

Everything started here is stopped on the way out — normal end, failure or Ctrl-C — and the
scratch folder is removed unless the caller keeps it.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from appliance.auth import hash_password
from appliance.clock import utc_now
from appliance.config import load_config
from appliance.pki_init import create_pki
from simulator.appliance_process import EST_APPLIANCE, ApplianceProcess, write_config
from simulator.eapol import authenticate
from simulator.fleet import Progress, PumpOutcome, run_fleet
from simulator.gateway import Approach, Gateway
from simulator.pki import (
    CaFiles,
    KeyType,
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
)
from simulator.pump import Pump
from simulator.radius import RadiusServer
from simulator.report import NegativeControl, Report, Summary

log = logging.getLogger(__name__)

LAB_USER = "iqe-gateway"
SERIAL_PREFIX = {Approach.PASSWORD: "NPPP", Approach.RA: "NPPR"}

Announce = Callable[[str], None]


@dataclass(frozen=True)
class LabSettings:
    pumps: int = 10
    approaches: tuple[Approach, ...] = (Approach.PASSWORD, Approach.RA)
    concurrency: int = 4
    key_type: KeyType = KeyType.RSA_2048
    workdir: Path | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.pumps <= 10000:
            raise ValueError(f"pumps: must be between 1 and 10000, got {self.pumps}")
        if not 1 <= self.concurrency <= 256:
            raise ValueError(f"concurrency: must be between 1 and 256, got {self.concurrency}")
        if not self.approaches:
            raise ValueError("approaches: name at least one")


def run_lab(
    settings: LabSettings,
    *,
    announce: Announce | None = None,
    progress: Progress | None = None,
) -> Report:
    say = announce or (lambda _text: None)
    started = time.perf_counter()
    scratch = settings.workdir or Path(tempfile.mkdtemp(prefix="iqe-lab-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            report = _run(settings, scratch, stack, say, progress)
        report.seconds = time.perf_counter() - started
        return report
    finally:
        if not settings.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(
    settings: LabSettings,
    scratch: Path,
    stack: ExitStack,
    say: Announce,
    progress: Progress | None,
) -> Report:
    # 1. Lab PKI and appliance. The gateway's password is random per run and reaches the
    #    appliance only as an Argon2id hash.
    password = secrets.token_urlsafe(18)
    config = write_config(scratch / "appliance", users={LAB_USER: hash_password(password)})
    loaded = load_config(config)
    pki = loaded.pki
    create_pki(pki, utc_now)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    say(f"lab PKI in {pki.dir} (CA {ca_cert.subject.rfc4514_string()})")
    appliance = ApplianceProcess(config, scratch / "appliance" / "appliance.log")
    stack.callback(appliance.stop)
    say(f"appliance listening on {appliance.url()}")

    # 2. The access point's RADIUS server, its certificate from the same EST CA, checking
    #    revocation (check_crl = yes) against the CRL file the appliance publishes.
    server_cert, server_key = issue_server_certificate(
        CaFiles(pki.ca_cert, pki.ca_key), scratch / "radius-cert"
    )
    radius = RadiusServer(
        pki.ca_cert,
        scratch / "radius",
        server_cert=server_cert,
        server_key=server_key,
        crl_files=[loaded.crl.path],
    )
    stack.enter_context(radius)
    say(f"FreeRADIUS (EAP-TLS) listening on {radius.host}:{radius.port}, pid {radius.pid}")

    # 3. Pumps by each approach, each proven by EAP-TLS.
    groups: list[Summary] = []
    for approach in settings.approaches:
        gateway = Gateway(
            appliance.base,
            ca_file=pki.ca_cert,
            approach=approach,
            username=LAB_USER,
            password=password,
            ra_cert=pki.ra_cert,
            ra_key=pki.ra_key,
            response_format="der",
        )
        stack.callback(gateway.close)
        say(f"enrolling {settings.pumps} pumps by the {approach.value} approach")
        outcomes = run_fleet(
            gateway,
            pumps=settings.pumps,
            concurrency=settings.concurrency,
            folder=scratch / "pumps" / approach.value,
            prefix=SERIAL_PREFIX[approach],
            key_type=settings.key_type,
            radius=radius,
            progress=progress,
        )
        groups.append(Summary(approach.value, outcomes))

    # 4. Negative controls: both must be rejected by RADIUS.
    outcomes = [o for g in groups for o in g.outcomes]
    controls = negative_controls(radius, outcomes, scratch)
    # 5. Revocation: one pump revoked with `est-appliance revoke` is rejected once RADIUS has
    #    the new CRL, while another pump is still accepted.
    say("revoking one pump through est-appliance revoke; RADIUS reloads the CRL")
    controls.append(revocation_control(radius, outcomes, config))
    context: dict[str, object] = {
        "appliance_url": appliance.url(),
        "radius": f"{radius.host}:{radius.port}",
        "approaches": [a.value for a in settings.approaches],
    }
    if settings.keep:
        context["workdir"] = str(scratch)
    return Report(groups=groups, negative_controls=controls, context=context)


def negative_controls(
    radius: RadiusServer, outcomes: Sequence[PumpOutcome], scratch: Path
) -> list[NegativeControl]:
    """A pump with a certificate from a foreign CA, and a pump presenting another pump's
    identity. Run one at a time, so the server's log names each rejection's reason."""
    controls: list[NegativeControl] = []

    foreign_ca = create_ca(scratch / "foreign-ca", "Foreign Device CA")
    stranger = Pump.create("NPPX001", scratch / "pumps" / "foreign" / "NPPX001")
    cert = issue_client_certificate(foreign_ca, x509.load_der_x509_csr(stranger.csr_der))
    stranger.install([cert], [x509.load_pem_x509_certificate(foreign_ca.cert.read_bytes())])
    result = authenticate(stranger, radius, explain=True)
    controls.append(
        NegativeControl(
            "foreign-ca",
            "a pump whose certificate comes from a foreign CA",
            result.identity,
            result.accepted,
            result.reason,
        )
    )

    enrolled = [o.pump for o in outcomes if o.enrolled and o.pump is not None]
    if enrolled:
        impostor = enrolled[0]
        # Another enrolled pump's serial; a serial nobody holds when only one pump enrolled.
        victim = enrolled[1].serial if len(enrolled) > 1 else "NPPZ999"
        result = authenticate(impostor, radius, identity=victim, explain=True)
        controls.append(
            NegativeControl(
                "identity-mismatch",
                f"pump {impostor.serial} presenting {victim}'s identity",
                result.identity,
                result.accepted,
                result.reason,
            )
        )
    else:
        # Cannot run without an enrolled pump; counted as not rejected so the lab fails.
        controls.append(
            NegativeControl(
                "identity-mismatch",
                "a pump presenting another pump's identity (not run: no pump enrolled)",
                "-",
                True,
                "not run",
            )
        )
    return controls


def revocation_control(
    radius: RadiusServer, outcomes: Sequence[PumpOutcome], config: Path
) -> NegativeControl:
    """Revoke the last enrolled pump through the CLI, restart RADIUS with the new CRL: the
    revoked pump must be rejected and another pump still accepted (else the control fails)."""
    enrolled = [o.pump for o in outcomes if o.enrolled and o.pump is not None]
    if len(enrolled) < 2:
        return NegativeControl(
            "revoked", "a revoked pump (not run: needs two enrolled pumps)", "-", True, "not run"
        )
    revoked, other = enrolled[-1], enrolled[0]
    result = subprocess.run(
        [*EST_APPLIANCE, "revoke", "--subject", revoked.serial, "--reason", "keyCompromise",
         "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        reason = f"est-appliance revoke failed: {result.stderr.strip()}"
        return NegativeControl("revoked", f"pump {revoked.serial} revoked", "-", True, reason)
    radius.restart()  # FreeRADIUS reads CRLs when it starts
    verdict = authenticate(revoked, radius, explain=True)
    control = authenticate(other, radius, explain=True)
    description = (
        f"pump {revoked.serial} revoked by est-appliance revoke (CRL reloaded); "
        f"{other.serial} still {'accepted' if control.accepted else 'REJECTED'}"
    )
    reason = verdict.reason if control.accepted else f"control pump rejected: {control.reason}"
    return NegativeControl(
        "revoked", description, verdict.identity, verdict.accepted or not control.accepted, reason
    )
