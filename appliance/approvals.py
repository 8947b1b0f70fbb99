"""Manual approval (RFC 7030 §4.2.3): hold a request for an operator, answer 202 meanwhile.

A request is identified by what the client cannot change between two sends of "the same
request": the public key, the subject and the subjectAltName. Not the CSR bytes: a CSR linked
to its TLS session (RFC 7030 §3.5) differs on every connection, and ECDSA signatures differ on
every signing. Pending requests live in the ledger, so they survive a restart.
"""

from __future__ import annotations

import hashlib
import logging

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.clock import Clock
from appliance.errors import Accepted, Forbidden
from appliance.identity import Identity
from appliance.ledger import Approval, ApprovalState, Ledger, PendingRequest

log = logging.getLogger(__name__)


def request_fingerprint(csr: x509.CertificateSigningRequest) -> str:
    digest = hashlib.sha256()
    for part in (
        csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        csr.subject.public_bytes(),
        _san_der(csr),
    ):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()


def _san_der(csr: x509.CertificateSigningRequest) -> bytes:
    try:
        return csr.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.public_bytes()
    except x509.ExtensionNotFound:
        return b""


class ApprovalGate:
    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock

    def previous(
        self, label: str, operation: str, csr: x509.CertificateSigningRequest
    ) -> Approval | None:
        return self._ledger.find_approval(label, operation, request_fingerprint(csr))

    def admit(
        self,
        *,
        label: str,
        profile_name: str,
        operation: str,
        csr: x509.CertificateSigningRequest,
        identity: Identity,
        retry_after: int,
    ) -> Approval:
        """Return the approved request, or raise 202 (waiting) / 403 (rejected)."""
        approval = self.previous(label, operation, csr)
        if approval is None:
            approval = self._ledger.add_pending(
                PendingRequest(
                    fingerprint=request_fingerprint(csr),
                    profile=label,
                    operation=operation,
                    subject=csr.subject.rfc4514_string(),
                    requester=str(identity),
                    csr_der=csr.public_bytes(Encoding.DER),
                    created=self._clock(),
                )
            )
            log.info(
                "event=approval_pending id=%d profile=%s operation=%s subject=%s requester=%s",
                approval.id,
                profile_name,
                operation,
                approval.subject,
                identity,
            )
        if approval.state is ApprovalState.PENDING:
            raise Accepted(
                f"request {approval.id} is waiting for an operator's approval; send the same "
                f"request again in {retry_after} seconds",
                retry_after=retry_after,
            )
        if approval.state is ApprovalState.REJECTED:
            decided = f" on {approval.decided:%Y-%m-%d %H:%M} UTC" if approval.decided else ""
            raise Forbidden(f"request {approval.id} was rejected by an operator{decided}")
        return approval

    def decide(self, approval_id: int, approve: bool) -> Approval:
        """`est-appliance approve|reject ID`; ValueError names what is wrong."""
        state = ApprovalState.APPROVED if approve else ApprovalState.REJECTED
        approval = self._ledger.decide(approval_id, state, self._clock())
        log.info("event=approval_decided id=%d state=%s", approval_id, state.value)
        return approval
