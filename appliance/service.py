"""The enrollment path with no HTTP in it: policy checks, signing, recording.

`EnrollmentService.enroll` is what /simpleenroll and /bootstrap both call once the web layer
has decoded the CSR and authentication has produced an Identity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.clock import Clock
from appliance.identity import Identity
from appliance.issuer import Issuer
from appliance.ledger import DuplicateSerial, IssuanceRecord, Ledger
from appliance.policy import CsrCheck

log = logging.getLogger(__name__)

_SERIAL_ATTEMPTS = 3


class EnrollmentService:
    def __init__(
        self,
        issuer: Issuer,
        checks: Sequence[CsrCheck],
        ledger: Ledger,
        clock: Clock,
    ) -> None:
        self._issuer = issuer
        self._checks = tuple(checks)
        self._ledger = ledger
        self._clock = clock

    @property
    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        return self._issuer.ca.chain

    def enroll(
        self, csr: x509.CertificateSigningRequest, identity: Identity, endpoint: str
    ) -> x509.Certificate:
        """RFC 7030 §4.2.1: apply policy, issue, record; return only what was recorded."""
        for check in self._checks:
            check(csr)
        for _attempt in range(_SERIAL_ATTEMPTS):
            cert = self._issuer.issue_pump_certificate(csr)
            try:
                self._ledger.record_issuance(self._record(cert, identity, endpoint))
            except DuplicateSerial:
                # 159 random bits make this practically impossible; sign again rather than fail.
                log.error("event=duplicate_serial serial=%x", cert.serial_number)
                continue
            return cert
        raise RuntimeError("could not allocate a unique certificate serial")

    def _record(self, cert: x509.Certificate, identity: Identity, endpoint: str) -> IssuanceRecord:
        san = requested_san_of(cert)
        return IssuanceRecord(
            serial=format(cert.serial_number, "x"),
            subject=cert.subject.rfc4514_string(),
            sans=san,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            requester=identity.principal,
            auth_method=identity.method.value,
            endpoint=endpoint,
            issued_at=self._clock(),
            der=cert.public_bytes(Encoding.DER),
        )


def requested_san_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(describe_general_name(name) for name in san)


def describe_general_name(name: x509.GeneralName) -> str:
    kind = {
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
        x509.UniformResourceIdentifier: "URI",
        x509.DirectoryName: "dirName",
        x509.RegisteredID: "RID",
        x509.OtherName: "otherName",
    }.get(type(name), type(name).__name__)
    value = name.value
    if isinstance(value, x509.Name):
        return f"{kind}:{value.rfc4514_string()}"
    if isinstance(name, x509.OtherName):
        return f"{kind}:{name.type_id.dotted_string}"
    return f"{kind}:{value}"
