"""Many pumps at once: keys and CSRs in a process pool (RSA-2048 costs ~50-100 ms of CPU
each), enrollments over keep-alive sessions in a thread pool, and every installed pump through
a real EAP-TLS authentication (one `eapol_test` process each, ~11 ms of CPU).

With a RADIUS server the two are one pipeline: a pump's EAP-TLS starts as soon as its
enrollment is installed, so the CPU that enrollments leave idle (they mostly wait for the
appliance) runs `eapol_test` instead of a second phase starting only after the last enrollment.
"""

from __future__ import annotations

import logging
import os
import threading
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

# (phase, done, total): "keys", "enroll", "eap-tls", "enroll+eap-tls" (the pipeline)
Progress = Callable[[str, int, int], None]

# EAP-TLS authentications in flight at once. Each is an `eapol_test` process that is CPU-bound
# (start-up and OpenSSL set-up, ~11 ms of CPU, plus ~1-2 ms in FreeRADIUS): more than a few per
# core only adds queueing, fewer leaves the cores idle while a process starts or waits.
DEFAULT_EAP_CONCURRENCY = 12


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

    _in_threads(one, enrolled, concurrency, "eap-tls", progress)


def enroll_and_check(
    gateway: Gateway,
    pumps: Sequence[Pump],
    ca_chain: Sequence[x509.Certificate],
    radius: RadiusServer,
    *,
    concurrency: int,
    eap_concurrency: int = DEFAULT_EAP_CONCURRENCY,
    progress: Progress | None = None,
) -> list[PumpOutcome]:
    """Enroll every pump and authenticate each one by EAP-TLS as soon as it is installed.

    Two pools: `concurrency` enrollments and `eap_concurrency` authentications in flight. A
    pump whose enrollment failed gets no authentication (its outcome says why); every enrolled
    pump gets exactly one, and the call returns when all have finished.
    """
    outcomes = [PumpOutcome(p.serial, gateway.approach.value, p.folder, pump=p) for p in pumps]
    if outcomes:
        _Pipeline(gateway, ca_chain, radius, eap_concurrency, progress).run(outcomes, concurrency)
    return outcomes


class _Pipeline:
    """Enrollment pool feeding the EAP-TLS pool; counts pumps that are completely done."""

    def __init__(
        self,
        gateway: Gateway,
        ca_chain: Sequence[x509.Certificate],
        radius: RadiusServer,
        eap_concurrency: int,
        progress: Progress | None,
    ) -> None:
        self.gateway = gateway
        self.ca_chain = ca_chain
        self.radius = radius
        self.total = 0
        self.progress = progress
        self.finished = 0
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.failures: list[BaseException] = []
        self.eap_pool = ThreadPoolExecutor(max_workers=max(1, eap_concurrency))

    def run(self, outcomes: Sequence[PumpOutcome], concurrency: int) -> None:
        self.total = len(outcomes)
        enroll_pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
        try:
            for outcome in outcomes:
                enroll_pool.submit(self._guarded, self._enroll, outcome)
            # Wake up now and then so Ctrl-C or a crashed worker ends the wait early.
            while not self.all_done.wait(0.5) and not self.failures:
                pass
            if self.failures:
                raise self.failures[0]
        finally:
            enroll_pool.shutdown(wait=True, cancel_futures=True)
            self.eap_pool.shutdown(wait=True, cancel_futures=True)

    def _guarded(self, step: Callable[[PumpOutcome], bool], outcome: PumpOutcome) -> None:
        """Run one step; count the pump as done unless the step handed it on."""
        try:
            handed_on = step(outcome)
        except BaseException as error:
            with self.lock:
                self.failures.append(error)
            raise
        if not handed_on:
            self._finish()

    def _enroll(self, outcome: PumpOutcome) -> bool:
        if outcome.pump is None:
            raise ValueError(f"{outcome.serial}: no pump to enroll")
        try:
            enrollment = self.gateway.enroll_pump(outcome.pump, self.ca_chain)
        except EnrollmentError as error:
            outcome.error = error
            log.warning("event=enroll_failed serial=%s branch=%s", outcome.serial, error.branch)
            return False
        outcome.enrolled = True
        outcome.seconds = enrollment.seconds
        self.eap_pool.submit(self._guarded, self._check, outcome)
        return True

    def _check(self, outcome: PumpOutcome) -> bool:
        if outcome.pump is not None:
            outcome.eap = authenticate(outcome.pump, self.radius)
        return False

    def _finish(self) -> None:
        with self.lock:
            self.finished += 1
            done = self.finished
        if self.progress:
            self.progress("enroll+eap-tls", done, self.total)
        if done == self.total:
            self.all_done.set()


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
    eap_concurrency: int = DEFAULT_EAP_CONCURRENCY,
    progress: Progress | None = None,
) -> list[PumpOutcome]:
    """Make `pumps` pumps, enroll them all through `gateway`, check each by EAP-TLS as soon
    as it is installed when a RADIUS server is given. The CA chain pumps install is what
    /cacerts serves."""
    ca_chain = gateway.fetch_cacerts()
    serials = [pump_serial(prefix, i) for i in range(1, pumps + 1)]
    made = make_pumps(serials, folder, key_type, progress=progress)
    if radius is None:
        return enroll_pumps(gateway, made, ca_chain, concurrency=concurrency, progress=progress)
    return enroll_and_check(
        gateway,
        made,
        ca_chain,
        radius,
        concurrency=concurrency,
        eap_concurrency=eap_concurrency,
        progress=progress,
    )
