"""Revoking certificates: by serial or by subject, with an RFC 5280 §5.3.1 reason, then a new
CRL at once.

The RA and server certificates made by `est-appliance init` are not in the ledger; revoking
one of them by serial records it first, so that the RA check (auth.py) and the CRL see it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from appliance.clock import Clock
from appliance.errors import BadRequest, NotFound
from appliance.ledger import (
    REVOKED,
    CertificateQuery,
    DuplicateSerial,
    IssuanceRecord,
    Ledger,
)

if TYPE_CHECKING:
    from appliance.crl import CrlPublisher, PublishedCrl

log = logging.getLogger(__name__)

# RFC 5280 §5.3.1 reason codes an operator may give. certificateHold is left out on purpose:
# revocation here is final (a lost pump that turns up enrolls again), and removeFromCRL only
# exists in delta CRLs.
REASONS: Mapping[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
_FOLDED = {re.sub(r"[^a-z]", "", name.lower()): name for name in REASONS}


def parse_reason(text: str) -> str:
    """The RFC 5280 name for `keyCompromise`, `key-compromise`, `KEY_COMPROMISE`..."""
    name = _FOLDED.get(re.sub(r"[^a-z]", "", text.lower()))
    if name is None:
        raise BadRequest(
            f"unknown revocation reason {text!r}; use one of {', '.join(REASONS)} (RFC 5280 §5.3.1)"
        )
    return name


def reason_flag(name: str) -> x509.ReasonFlags:
    return REASONS[name]


def normalize_serial(text: str) -> str:
    """Serials as the ledger keeps them: lower-case hex without leading zeros; colons, spaces
    and a 0x prefix (as openssl and browsers print them) are accepted."""
    cleaned = re.sub(r"[\s:]", "", text.strip().lower()).removeprefix("0x")
    if not cleaned or len(cleaned) > 64 or not re.fullmatch(r"[0-9a-f]+", cleaned):
        raise BadRequest(f"{text[:80]!r} is not a certificate serial number (hexadecimal)")
    return format(int(cleaned, 16), "x")


@dataclass(frozen=True)
class RevocationResult:
    revoked: tuple[IssuanceRecord, ...]  # newly revoked by this request
    already: tuple[IssuanceRecord, ...]  # were revoked before
    crl: PublishedCrl | None  # the CRL published afterwards (None: nothing changed)


class RevocationService:
    def __init__(
        self,
        ledger: Ledger,
        publisher: CrlPublisher,
        clock: Clock,
        local_certificates: Callable[[], Sequence[x509.Certificate]] = tuple,
    ) -> None:
        self._ledger = ledger
        self._publisher = publisher
        self._clock = clock
        self._local = local_certificates

    def revoke_serial(self, serial: str, reason: str, actor: str) -> RevocationResult:
        serial = normalize_serial(serial)
        reason = parse_reason(reason)
        record = self._ledger.find(serial) or self._adopt_local(serial)
        if record is None:
            raise NotFound(
                f"no certificate with serial {serial} was issued by this appliance; "
                "`est-appliance list` shows every serial"
            )
        return self._revoke([record], reason, actor)

    def revoke_certificate(
        self, cert: x509.Certificate, ca_cert: x509.Certificate, reason: str, actor: str
    ) -> RevocationResult:
        """A certificate our CA signed outside EST (an operator's, one made with openssl):
        checked against the CA, recorded, then revoked like any other."""
        reason = parse_reason(reason)
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise BadRequest("that certificate was not issued by this appliance's CA") from None
        serial = format(cert.serial_number, "x")
        record = self._ledger.find(serial) or self._record_foreign(cert)
        return self._revoke([record], reason, actor)

    def revoke_subject(self, subject: str, reason: str, actor: str) -> RevocationResult:
        """Every certificate the device ever held that is not revoked yet: a superseded
        certificate still authenticates until it expires, so a lost pump loses all of them."""
        reason = parse_reason(reason)
        records = self.certificates_of(subject)
        if not records:
            raise NotFound(
                f"no certificate for subject {subject[:120]!r}; give the pump's common name "
                "(e.g. NPPR001) or its full subject (CN=NPPR001)"
            )
        return self._revoke(records, reason, actor)

    def certificates_of(self, subject: str) -> list[IssuanceRecord]:
        """Certificates whose subject is `subject` (RFC 4514) or whose CN is `subject`."""
        wanted = subject.strip()
        if not wanted:
            return []
        query = CertificateQuery(
            now=self._clock(),
            expiring_before=self._clock(),
            text=wanted.split("=", 1)[-1] if "=" in wanted else wanted,
            latest_per_subject=False,
            limit=100_000,
        )
        found, _total = self._ledger.search_certificates(query)
        return [r for r in found if r.subject == wanted or _common_name(r) == wanted]

    def _revoke(
        self, records: Sequence[IssuanceRecord], reason: str, actor: str
    ) -> RevocationResult:
        now = self._clock()
        revoked: list[IssuanceRecord] = []
        already: list[IssuanceRecord] = []
        for record in records:
            if record.status == REVOKED:
                already.append(record)
                continue
            updated = self._ledger.revoke(record.serial, reason, now, actor)
            if updated is not None:
                revoked.append(updated)
                log.warning(
                    "event=revoked serial=%s subject=%s reason=%s by=%s",
                    record.serial,
                    record.subject,
                    reason,
                    actor,
                )
        crl = self._publisher.publish(f"revoked {len(revoked)}") if revoked else None
        return RevocationResult(tuple(revoked), tuple(already), crl)

    def _adopt_local(self, serial: str) -> IssuanceRecord | None:
        """The RA or server certificate from `init`, recorded so it can be revoked."""
        for cert in self._local():
            if format(cert.serial_number, "x") == serial:
                return self._record_foreign(cert)
        return None

    def _record_foreign(self, cert: x509.Certificate) -> IssuanceRecord:
        serial = format(cert.serial_number, "x")
        record = IssuanceRecord(
            serial=serial,
            subject=cert.subject.rfc4514_string(),
            sans=(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            # Not enrolled through EST: made by `init`, `issue-ra` or by hand with the CA key.
            requester="outside EST",
            auth_method="local",
            endpoint="outside-est",
            issued_at=cert.not_valid_before_utc,
            der=cert.public_bytes(Encoding.DER),
        )
        with contextlib.suppress(DuplicateSerial):  # recorded meanwhile by another worker
            self._ledger.record_issuance(record)
        found = self._ledger.find(serial)
        if found is None:  # pragma: no cover - just recorded
            raise RuntimeError(f"certificate {serial} vanished from the ledger")
        return found


def _common_name(record: IssuanceRecord) -> str | None:
    try:
        cert = x509.load_der_x509_certificate(record.der)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
