"""The CA's certificate revocation list (RFC 5280 §5): signed from the ledger, written
atomically for RADIUS servers, regenerated on every revocation and before nextUpdate.

Several worker processes (and, with a shared database, several nodes) may decide at the same
moment that a new CRL is due. `Ledger.crl_generation()` makes them take turns, the CRL number
comes from the ledger (RFC 5280 §5.2.3: monotonically increasing across all of them), and the
files are replaced with rename(2), so a RADIUS server never reads half a CRL.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.clock import Clock
from appliance.config import CrlConfig
from appliance.issuer import CaMaterial
from appliance.keys import signature_hash
from appliance.ledger import Ledger
from appliance.revocation import reason_flag

log = logging.getLogger(__name__)

# RADIUS servers and pumps are not all NTP-perfect: a CRL whose thisUpdate lies a few seconds
# in their future is "not yet valid" to OpenSSL, so thisUpdate is backdated a little.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class PublishedCrl:
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int
    der: bytes

    @property
    def pem(self) -> bytes:
        return x509.load_der_x509_crl(self.der).public_bytes(Encoding.PEM)


class CrlPublisher:
    """Builds, signs and publishes the CRL; `current()` is what GET /crl serves."""

    def __init__(self, ca: CaMaterial, ledger: Ledger, config: CrlConfig, clock: Clock) -> None:
        self._ca = ca
        self._ledger = ledger
        self._config = config
        self._clock = clock
        self._hash = signature_hash(ca.key)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
        self._cache_lock = threading.Lock()
        self._cache: tuple[tuple[int, int], PublishedCrl] | None = None

    @property
    def path(self) -> Path:
        return self._config.path

    def publish(self, why: str) -> PublishedCrl:
        """Sign a new CRL now (after a revocation) and write it; returns it."""
        with self._ledger.crl_generation():
            return self._publish_locked(why)

    def current(self) -> PublishedCrl:
        """The published CRL, regenerated first when missing, foreign or due."""
        published = self._read()
        if published is not None and not self._due(published):
            return published
        with self._ledger.crl_generation():
            # Another worker may have published while this one waited for the lock.
            published = self._read()
            if published is not None and not self._due(published):
                return published
            return self._publish_locked("missing" if published is None else "due")

    def refresh_if_due(self) -> None:
        """For the periodic check in every serving process; never raises."""
        try:
            self.current()
        except Exception:
            log.exception("event=crl_refresh_failed path=%s", self.path)

    def _due(self, published: PublishedCrl) -> bool:
        refresh_at = published.next_update - dt.timedelta(hours=self._config.refresh_before_hours)
        return self._clock() >= refresh_at

    def _publish_locked(self, why: str) -> PublishedCrl:
        now = self._clock()
        number = self._ledger.next_crl_number()
        this_update = now - _BACKDATE
        next_update = now + dt.timedelta(hours=self._config.validity_hours)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ca.cert.subject)
            .last_update(this_update)
            .next_update(next_update)
            # RFC 5280 §5.2.1 (MUST) and §5.2.3 (MUST).
            .add_extension(self._aki, critical=False)
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        revocations = self._ledger.revocations(now)
        for revocation in revocations:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(revocation.serial, 16))
                .revocation_date(revocation.revoked_at)
            )
            # RFC 5280 §5.3.1: the reason code SHOULD be absent rather than `unspecified`.
            if revocation.reason != "unspecified":
                entry = entry.add_extension(
                    x509.CRLReason(reason_flag(revocation.reason)), critical=False
                )
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._ca.key, self._hash)
        der = crl.public_bytes(Encoding.DER)
        _write_atomically(self._config.der_path, der)
        _write_atomically(self._config.path, crl.public_bytes(Encoding.PEM))
        log.info(
            "event=crl_published number=%d entries=%d next_update=%s why=%s path=%s",
            number,
            len(revocations),
            next_update.isoformat(timespec="seconds"),
            why,
            self._config.path,
        )
        return PublishedCrl(number, this_update, next_update, len(revocations), der)

    def _read(self) -> PublishedCrl | None:
        path = self._config.der_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._cache_lock:
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
        try:
            der = path.read_bytes()
            crl = x509.load_der_x509_crl(der)
        except (OSError, ValueError):
            log.warning("event=crl_unreadable path=%s", path)
            return None
        if crl.issuer != self._ca.cert.subject or not crl.is_signature_valid(
            self._ca.key.public_key()
        ):
            # A CRL left by a previous CA (after `init --force`) must not be served.
            log.warning("event=crl_foreign path=%s", path)
            return None
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        next_update = crl.next_update_utc
        if next_update is None:  # pragma: no cover - we always set it
            return None
        published = PublishedCrl(number, crl.last_update_utc, next_update, len(list(crl)), der)
        with self._cache_lock:
            self._cache = (key, published)
        return published


def _write_atomically(path: Path, data: bytes) -> None:
    """Write beside the target, fsync, rename over it: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o644)  # public by nature: RADIUS servers run as other users
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
