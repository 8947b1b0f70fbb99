"""Many pumps at once: keys and CSRs in a process pool (RSA-2048 costs ~50-100 ms of CPU
each), enrollments over keep-alive sessions in a thread pool, then every installed pump
through a real EAP-TLS authentication, in parallel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from simulator.eapol import EapResult, authenticate
from simulator.gateway import Gateway
from simulator.pki import KeyType
from simulator.pump import Pump, key_and_csr, pump_serial
from simulator.radius import RadiusServer
from simulator.troubleshooting import EnrollmentError

log = logging.getLogger(__name__)

# (phase, done, total): "keys", "enroll", "eap-tls"
Progress = Callable[[str, int, int], None]


@dataclass
class PumpOutcome:
    serial: str
    approach: str
    folder: Path
    enrolled: bool = False
    seconds: float | None = None
    error: EnrollmentError | None = None
    eap: EapResult | None = None
    pump: Pump | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "approach": self.approach,
            "folder": str(self.folder),
            "enrolled": self.enrolled,
            "latency_ms": round(self.seconds * 1000, 2) if self.seconds is not None else None,
            "error": self.error.as_dict() if self.error else None,
            "eap_tls": None
            if self.eap is None
            else {
                "identity": self.eap.identity,
                "accepted": self.eap.accepted,
                "exit_code": self.eap.exit_code,
                "reason": self.eap.reason,
                "ms": round(self.eap.seconds * 1000, 1),
            },
        }


def make_pumps(
    serials: Sequence[str],
    folder: Path,
    key_type: KeyType,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> list[Pump]:
    """Keys and CSRs for `serials`, generated in parallel processes."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(serials)))
    pumps: list[Pump] = []
    if workers == 1 or len(serials) < 4:
        for serial in serials:
            pumps.append(Pump.create(serial, folder / serial, key_type))
            if progress:
                progress("keys", len(pumps), len(serials))
        return pumps
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        results = pool.map(key_and_csr, serials, [key_type] * len(serials), chunksize=2)
        for serial, (key_pem, csr_der) in zip(serials, results, strict=True):
            pumps.append(Pump.from_key_pem(serial, folder / serial, key_pem, csr_der))
            if progress:
                progress("keys", len(pumps), len(serials))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return pumps


def enroll_pumps(
    gateway: Gateway,
    pumps: Sequence[Pump],
    ca_chain: Sequence[x509.Certificate],
    *,
    concurrency: int,
    progress: Progress | None = None,
) -> list[PumpOutcome]:
    """Enroll and install every pump; failures are recorded with their branch, not raised."""
    outcomes = [PumpOutcome(p.serial, gateway.approach.value, p.folder, pump=p) for p in pumps]

    def one(outcome: PumpOutcome) -> PumpOutcome:
        if outcome.pump is None:
            return outcome
        try:
            enrollment = gateway.enroll_pump(outcome.pump, ca_chain)
        except EnrollmentError as error:
            outcome.error = error
            log.warning("event=enroll_failed serial=%s branch=%s", outcome.serial, error.branch)
        else:
            outcome.enrolled = True
            outcome.seconds = enrollment.seconds
        return outcome

    _in_threads(one, outcomes, concurrency, "enroll", progress)
    return outcomes


def check_eap_tls(
    outcomes: Sequence[PumpOutcome],
    radius: RadiusServer,
    *,
    concurrency: int,
    progress: Progress | None = None,
) -> None:
    """One real EAP-TLS authentication per enrolled pump (eapol_test runs as a process)."""
    enrolled = [o for o in outcomes if o.enrolled and o.pump is not None]

    def one(outcome: PumpOutcome) -> None:
        if outcome.pump is not None:
            outcome.eap = authenticate(outcome.pump, radius)

    _in_threads(one, enrolled, min(concurrency, 8), "eap-tls", progress)


def _in_threads(
    work: Callable[[PumpOutcome], object],
    items: Sequence[PumpOutcome],
    workers: int,
    phase: str,
    progress: Progress | None,
) -> None:
    """Run `work` on every item; on Ctrl-C or an error, drop the queued items instead of
    running them all before the interruption can take effect."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(work, item) for item in items]
        for done, future in enumerate(as_completed(futures), 1):
            future.result()
            if progress:
                progress(phase, done, len(items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_fleet(
    gateway: Gateway,
    *,
    pumps: int,
    concurrency: int,
    folder: Path,
    prefix: str = "NPP",
    key_type: KeyType = KeyType.RSA_2048,
    radius: RadiusServer | None = None,
    progress: Progress | None = None,
) -> list[PumpOutcome]:
    """Make `pumps` pumps, enroll them all through `gateway`, check each by EAP-TLS when a
    RADIUS server is given. The CA chain pumps install is what /cacerts serves."""
    ca_chain = gateway.fetch_cacerts()
    serials = [pump_serial(prefix, i) for i in range(1, pumps + 1)]
    made = make_pumps(serials, folder, key_type, progress=progress)
    outcomes = enroll_pumps(gateway, made, ca_chain, concurrency=concurrency, progress=progress)
    if radius is not None:
        check_eap_tls(outcomes, radius, concurrency=concurrency, progress=progress)
    return outcomes
