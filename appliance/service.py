"""The enrollment paths with no HTTP in them: policy checks, approval, signing, recording.

The web layer has decoded the CSR, resolved the CA label and authenticated the client; each
public method here is one RFC 7030 operation. Only the `Ledger` protocol is used, so another
database can replace SQLite without touching this file.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.approvals import ApprovalGate
from appliance.clock import Clock
from appliance.csr_policy import VettedRequest, general_name_value, san_kind, vet
from appliance.errors import Conflict, Forbidden, NotFound
from appliance.identity import Identity
from appliance.issuer import CertificateRequest, requested_san
from appliance.keys import SigningKey, generate_key
from appliance.ledger import (
    REVOKED,
    SUPERSEDED,
    VALID,
    AlreadyIssued,
    DuplicateSerial,
    IssuanceRecord,
    Ledger,
    SubjectTaken,
)
from appliance.policy import Channel, pop_linked, same_subject_and_san, subject_has_common_name
from appliance.profiles import DEFAULT_LABEL, Profile
from appliance.ra_scope import RaScopes
from appliance.serverkeygen import refuse_key_encryption_request

log = logging.getLogger(__name__)

_SERIAL_ATTEMPTS = 3
NO_CHANNEL = Channel()


@dataclass(frozen=True)
class _Plan:
    """What issuing one certificate involves besides signing it."""

    operation: str
    replaces: str | None = None
    retire: tuple[str, ...] = ()
    public_key: CertificatePublicKeyTypes | None = None
    kind: str = "enroll"
    # The profile's duplicate-subject policy, enforced again by the ledger inside the write
    # transaction: the check in _duplicate_policy only answers early.
    subject_policy: str = "allow"


@dataclass(frozen=True)
class Issued:
    """The certificate a request gets, with what its request log line says about it."""

    cert: x509.Certificate
    serial: str  # lower-case hex, as the ledger and the log write it
    subject: str  # RFC 4514
    # enroll, renew, rekey or serverkeygen; "resent" when an approved request is sent again
    # and gets the certificate issued for it before (RFC 7030 §4.2.3).
    kind: str
    replaces: str | None = None
    retired: tuple[str, ...] = ()


class EnrollmentService:
    def __init__(
        self,
        profiles: Mapping[str, Profile],
        ledger: Ledger,
        clock: Clock,
        scopes: RaScopes | None = None,
    ) -> None:
        if DEFAULT_LABEL not in profiles:
            raise ValueError("the default profile is required")
        self._scopes = scopes or RaScopes({})
        self._profiles = dict(profiles)
        self._ledger = ledger
        self._clock = clock
        self._approvals = ApprovalGate(ledger, clock)

    @property
    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        return self._profiles[DEFAULT_LABEL].issuer.ca.chain

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label in self._profiles if label)

    def profile(self, label: str) -> Profile:
        """RFC 7030 §3.2.2: an unknown CA label is a 404."""
        profile = self._profiles.get(label)
        if profile is None:
            known = ", ".join(self.labels) or "none"
            raise NotFound(f"unknown CA label '{label}'; configured labels: {known}")
        return profile

    def enroll(
        self,
        csr: x509.CertificateSigningRequest,
        identity: Identity,
        endpoint: str,
        *,
        label: str = DEFAULT_LABEL,
        channel: Channel = NO_CHANNEL,
    ) -> Issued:
        """RFC 7030 §4.2.1 simpleenroll (and the password bootstrap)."""
        profile = self.profile(label)
        request = _vet(profile, csr)
        self._check(profile, csr, request, channel, check_key=True)
        self._scopes.check(identity, label=profile.label, operation="simpleenroll", csr=csr)
        previous = self._issued_before(profile, endpoint, csr)
        if previous is not None:
            return previous
        plan = self._duplicate_policy(profile, request, _Plan(endpoint))
        return self._issue(profile, csr, request, identity, plan)

    def reenroll(
        self,
        csr: x509.CertificateSigningRequest,
        identity: Identity,
        *,
        current: x509.Certificate | None,
        label: str = DEFAULT_LABEL,
        channel: Channel = NO_CHANNEL,
    ) -> Issued:
        """RFC 7030 §4.2.2 simplereenroll: renew (same key) or rekey (new key) the pump's
        certificate. `current` is the pump's own TLS client certificate, or None when an RA
        asks on the pump's behalf."""
        profile = self.profile(label)
        request = _vet(profile, csr)
        self._check(profile, csr, request, channel, check_key=True)
        if current is None:  # an RA on the pump's behalf; a pump's own certificate is not scoped
            self._scopes.check(identity, label=profile.label, operation="simplereenroll", csr=csr)
        previous = self._issued_before(profile, "simplereenroll", csr)
        if previous is not None:
            return previous
        replaced = self._renewable(profile, request, current)
        old_key = x509.load_der_x509_certificate(replaced.der).public_key()
        kind = "renew" if _spki(old_key) == _spki(csr.public_key()) else "rekey"
        plan = _Plan(
            "simplereenroll", replaces=replaced.serial, retire=(replaced.serial,), kind=kind
        )
        return self._issue(profile, csr, request, identity, plan)

    def serverkeygen(
        self,
        csr: x509.CertificateSigningRequest,
        identity: Identity,
        *,
        label: str = DEFAULT_LABEL,
        channel: Channel = NO_CHANNEL,
    ) -> tuple[Issued, SigningKey]:
        """RFC 7030 §4.4: the appliance makes the key. The CSR's own key and signature only
        prove the request came intact (§4.4.1); its key is not certified. The new private key
        is returned to the caller and neither recorded nor logged."""
        profile = self.profile(label)
        request = _vet(profile, csr)
        self._check(profile, csr, request, channel, check_key=False)
        refuse_key_encryption_request(csr)
        self._scopes.check(identity, label=profile.label, operation="serverkeygen", csr=csr)
        if profile.settings.manual_approval:
            approval = self._approvals.previous(profile.label, "serverkeygen", csr)
            if approval is not None and approval.serial is not None:
                raise Conflict(
                    f"request {approval.id} was approved and its key already delivered "
                    f"(serial {approval.serial}); send a new CSR for another key"
                )
        key = generate_key(profile.settings.serverkeygen_key)
        plan = self._duplicate_policy(
            profile,
            request,
            _Plan("serverkeygen", public_key=key.public_key(), kind="serverkeygen"),
        )
        return self._issue(profile, csr, request, identity, plan), key

    def _check(
        self,
        profile: Profile,
        csr: x509.CertificateSigningRequest,
        request: VettedRequest,
        channel: Channel,
        *,
        check_key: bool,
    ) -> None:
        # The checks look at what would be certified (the vetted request, whose subject was
        # read from the CSR once); proof of possession looks at the CSR's own attributes.
        if check_key:
            for check in profile.checks:
                check(request)
        else:
            subject_has_common_name(request)
        pop_linked(csr, channel, profile.settings)

    def _issued_before(
        self, profile: Profile, operation: str, csr: x509.CertificateSigningRequest
    ) -> Issued | None:
        """RFC 7030 §4.2.3: the same request re-sent after approval gets its certificate, also
        when the first answer was lost after issuing."""
        if not profile.settings.manual_approval:
            return None
        approval = self._approvals.previous(profile.label, operation, csr)
        if approval is None or approval.serial is None:
            return None
        record = self._ledger.find(approval.serial)
        if record is None:  # pragma: no cover - the ledger issued and linked it together
            return None
        return Issued(
            x509.load_der_x509_certificate(record.der), record.serial, record.subject, "resent"
        )

    def _renewable(
        self,
        profile: Profile,
        csr: CertificateRequest,
        current: x509.Certificate | None,
    ) -> IssuanceRecord:
        """The ledger record of the certificate a reenroll replaces (RFC 7030 §4.2.2)."""
        now = self._clock()
        if current is not None:
            serial = format(current.serial_number, "x")
            record = self._ledger.find(serial)
            if record is None or record.der != current.public_bytes(Encoding.DER):
                raise Forbidden(
                    f"the TLS client certificate (serial {serial}) was not issued by this "
                    "appliance; only its own certificates can be renewed"
                )
            if record.status != VALID:
                raise Forbidden(
                    f"the TLS client certificate (serial {serial}) is {record.status} and cannot "
                    "be renewed; enroll again through the registration authority"
                )
            if current.not_valid_after_utc <= now:
                raise Forbidden(
                    f"the TLS client certificate (serial {serial}) expired on "
                    f"{current.not_valid_after_utc:%Y-%m-%d}; enroll again instead"
                )
            same_subject_and_san(csr, current, whose="the TLS client certificate")
            return record
        if not profile.settings.ra_may_reenroll:
            raise Forbidden(
                f"CA '{profile.name}' does not let a registration authority renew on a "
                "pump's behalf; the pump must present its own certificate"
            )
        subject = csr.subject.rfc4514_string()
        candidates = self._ledger.valid_for_subject(subject, now)
        if not candidates:
            raise Forbidden(
                f"no valid certificate with subject '{subject}' to renew; use simpleenroll "
                "for a first certificate"
            )
        record = candidates[0]
        same_subject_and_san(
            csr, x509.load_der_x509_certificate(record.der), whose=f"certificate {record.serial}"
        )
        return record

    def _duplicate_policy(self, profile: Profile, csr: CertificateRequest, plan: _Plan) -> _Plan:
        policy = profile.settings.duplicate_subject
        if policy == "allow":
            return plan
        plan = dataclasses.replace(plan, subject_policy=policy)
        subject = csr.subject.rfc4514_string()
        existing = self._ledger.valid_for_subject(subject, self._clock())
        if not existing:
            return plan
        if policy == "reject":
            raise _subject_conflict(subject, existing[0].serial)
        return dataclasses.replace(
            plan,
            replaces=existing[0].serial,
            retire=tuple(r.serial for r in existing),
        )

    def _issue(
        self,
        profile: Profile,
        csr: x509.CertificateSigningRequest,
        request: VettedRequest,
        identity: Identity,
        plan: _Plan,
    ) -> Issued:
        approval = None
        if profile.settings.manual_approval:
            approval = self._approvals.admit(
                label=profile.label,
                profile_name=profile.name,
                operation=plan.operation,
                csr=csr,
                identity=identity,
                retry_after=profile.settings.retry_after_seconds,
            )
        retire_as = REVOKED if profile.settings.revoke_superseded else SUPERSEDED
        for _attempt in range(_SERIAL_ATTEMPTS):
            cert = profile.issuer.issue_pump_certificate(request, plan.public_key)
            record = self._record(cert, request, identity, plan, profile)
            try:
                self._ledger.record_issuance(
                    record,
                    retire=plan.retire,
                    retire_as=retire_as,
                    subject_policy=plan.subject_policy,
                    approval_id=approval.id if approval is not None else None,
                )
            except AlreadyIssued:
                # A simultaneous re-send of the same approved request was answered first:
                # this one gets that certificate too (RFC 7030 §4.2.3), never a second one;
                # a server-generated key, though, is delivered once only.
                previous = self._issued_before(profile, plan.operation, csr)
                if previous is None or plan.operation == "serverkeygen":
                    raise Conflict(
                        "this approved request was answered at the same moment by another "
                        "connection; send a new CSR for another certificate"
                    ) from None
                return previous
            except SubjectTaken as taken:
                # Another request for the same subject was recorded first.
                raise _subject_conflict(record.subject, taken.serial) from None
            except DuplicateSerial:
                # 159 random bits make this practically impossible; sign again rather than fail.
                log.error("event=duplicate_serial serial=%x", cert.serial_number)
                continue
            # The request's one log line (web.py) says what was issued and what it replaced.
            return Issued(
                cert, record.serial, record.subject, plan.kind, plan.replaces, plan.retire
            )
        raise RuntimeError("could not allocate a unique certificate serial")

    def _record(
        self,
        cert: x509.Certificate,
        request: VettedRequest,
        identity: Identity,
        plan: _Plan,
        profile: Profile,
    ) -> IssuanceRecord:
        # Subject and SANs as the issuer took them from the vetted request: the certificate
        # holds exactly these, and reading them back would parse it again.
        return IssuanceRecord(
            serial=format(cert.serial_number, "x"),
            subject=request.subject.rfc4514_string(),
            sans=requested_san_of(request),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            requester=identity.principal,
            auth_method=identity.method.value,
            endpoint=plan.operation,
            issued_at=self._clock(),
            der=cert.public_bytes(Encoding.DER),
            replaces=plan.replaces,
            profile=profile.label,
        )


def _vet(profile: Profile, csr: x509.CertificateSigningRequest) -> VettedRequest:
    """The CSR as the profile's csr_policy lets it through (csr_policy.py)."""
    rule = f"profiles.{profile.label}.enrollment" if profile.label else "enrollment"
    return vet(csr, profile.settings.csr_policy, rule=f"{rule}.csr_policy")


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def requested_san_of(source: x509.Certificate | CertificateRequest) -> tuple[str, ...]:
    san = requested_san(source)
    return () if san is None else tuple(describe_general_name(name) for name in san)


def describe_general_name(name: x509.GeneralName) -> str:
    """`DNS:pump-1.example`, `RID:1.3.6.1.4.1.99`: as csr_policy names it in its messages."""
    return f"{san_kind(name)}:{general_name_value(name)}"


def _subject_conflict(subject: str, serial: str) -> Conflict:
    return Conflict(
        f"a valid certificate for '{subject}' already exists (serial {serial}); renew it with "
        "simplereenroll instead"
    )
