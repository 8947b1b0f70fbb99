"""What a CSR may ask for, per profile (`enrollment.csr_policy`): refuse it or strip it.

The issuer writes every extension of its own certificate profile; from a CSR it takes only the
subject, the public key and the subjectAltName. This module decides what of those the CSR may
carry before anything is signed:

- BasicConstraints CA:TRUE (`ca_request`): a pump is never a CA; `strip` issues CA:FALSE anyway
  (logged), `refuse` answers 403.
- A critical extension the appliance does not understand (`unknown_critical`): RFC 5280 §4.2
  makes a relying party reject such a certificate, and a CSR that insists on one asks for
  something this CA cannot promise; `refuse` (default) or `strip`.
- subjectAltName types and values, and subject attributes, outside the lists and patterns
  (`names`): `refuse` (default) or `strip` the offending entries.

The result is a `VettedRequest`: the subject and subjectAltName that will be certified.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier

from appliance.config import CsrPolicyConfig
from appliance.errors import BadRequest, Forbidden, first_line

log = logging.getLogger(__name__)

# Extensions a CSR may mark critical without asking for anything the issuer does not decide
# itself: the issuer writes its own BasicConstraints, KeyUsage, EKU and key identifiers, and
# copies the subjectAltName only after the checks below.
_UNDERSTOOD: frozenset[ObjectIdentifier] = frozenset(
    {
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    }
)

# The policy's attribute names (config.SUBJECT_ATTRIBUTES) by OID.
_ATTRIBUTE_NAMES: dict[ObjectIdentifier, str] = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.STREET_ADDRESS: "street",
    NameOID.TITLE: "title",
    NameOID.GIVEN_NAME: "givenName",
    NameOID.SURNAME: "surname",
}

# The names config.yaml, the ledger and the log use for each kind of subjectAltName.
_SAN_TYPES: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.RFC822Name: "email",
    x509.UniformResourceIdentifier: "URI",
    x509.DirectoryName: "dirName",
    x509.RegisteredID: "RID",
    x509.OtherName: "otherName",
}


@dataclass(frozen=True)
class VettedRequest:
    """A CSR as the policy lets it through: what the issuer certifies (a CertificateRequest)."""

    csr: x509.CertificateSigningRequest
    subject: x509.Name
    extensions: x509.Extensions  # at most the (filtered) subjectAltName
    stripped: tuple[str, ...] = ()

    def public_key(self) -> CertificatePublicKeyTypes:
        return self.csr.public_key()


def vet(
    csr: x509.CertificateSigningRequest, policy: CsrPolicyConfig, *, rule: str
) -> VettedRequest:
    """Apply `policy` (configured at `rule`, e.g. "enrollment.csr_policy") to `csr`."""
    try:
        extensions = list(csr.extensions)
    except ValueError as exc:  # duplicate or malformed extensions
        raise BadRequest(f"the CSR's extension request cannot be read: {exc}") from None
    try:
        # Read here, once per request: every enrollment is vetted before anything else looks
        # at the subject (codec.decode_csr leaves it to this).
        requested_subject = csr.subject
    except ValueError as exc:
        raise BadRequest(f"CSR is not a valid PKCS#10 structure: {first_line(exc)}") from None
    stripped: list[str] = []
    san: x509.SubjectAlternativeName | None = None
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            _refuse_or_note(
                policy.ca_request,
                stripped,
                "BasicConstraints CA:TRUE",
                f"the CSR asks to be a CA (BasicConstraints CA:TRUE); pump certificates are never "
                f"CAs ({rule}.ca_request: refuse)",
            )
        if extension.critical and extension.oid not in _UNDERSTOOD:
            _refuse_or_note(
                policy.unknown_critical,
                stripped,
                f"critical extension {extension.oid.dotted_string}",
                f"the CSR marks extension {extension.oid.dotted_string} critical and this CA does "
                f"not issue it ({rule}.unknown_critical: refuse)",
            )
        if isinstance(value, x509.SubjectAlternativeName):
            san = _vet_san(value, policy, rule, stripped)
    subject = _vet_subject(requested_subject, policy, rule, stripped)
    kept = [x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, san)] if san else []
    if stripped:
        log.warning(
            "event=csr_stripped subject=%s stripped=%s",
            _safe(subject.rfc4514_string()),
            _safe("; ".join(stripped)),
        )
    return VettedRequest(csr, subject, x509.Extensions(kept), tuple(stripped))


def san_kind(name: x509.GeneralName) -> str:
    """`DNS`, `IP`, `email`, `URI`, `dirName`, `RID` or `otherName` (as csr_policy.san_types)."""
    return _SAN_TYPES.get(type(name), type(name).__name__)


def _vet_san(
    san: x509.SubjectAlternativeName, policy: CsrPolicyConfig, rule: str, stripped: list[str]
) -> x509.SubjectAlternativeName | None:
    kept: list[x509.GeneralName] = []
    for name in san:
        kind = san_kind(name)
        shown = f"{kind}:{general_name_value(name)}"
        if kind not in policy.san_types:
            _refuse_or_note(
                policy.names,
                stripped,
                f"subjectAltName {shown}",
                f"subjectAltName {shown} is not allowed: {rule}.san_types allows "
                f"{', '.join(policy.san_types) or 'none'}",
            )
            continue
        pattern = policy.san_patterns.get(kind)
        if pattern is not None and not re.fullmatch(pattern, general_name_value(name)):
            _refuse_or_note(
                policy.names,
                stripped,
                f"subjectAltName {shown}",
                f"subjectAltName {shown} does not match {rule}.san_patterns.{kind} '{pattern}'",
            )
            continue
        kept.append(name)
    if len(kept) == len(san):
        return san  # nothing left out: the CSR's own names
    return x509.SubjectAlternativeName(kept) if kept else None


def _vet_subject(
    subject: x509.Name, policy: CsrPolicyConfig, rule: str, stripped: list[str]
) -> x509.Name:
    left_out = len(stripped)
    rdns: list[x509.RelativeDistinguishedName] = []
    for rdn in subject.rdns:
        kept = []
        for attribute in rdn:
            name = _ATTRIBUTE_NAMES.get(attribute.oid, attribute.oid.dotted_string)
            if name in policy.subject_attributes:
                kept.append(attribute)
                continue
            _refuse_or_note(
                policy.names,
                stripped,
                f"subject attribute {name}",
                f"subject attribute {name} is not allowed: {rule}.subject_attributes allows "
                f"{', '.join(policy.subject_attributes)}",
            )
        if kept:
            rdns.append(x509.RelativeDistinguishedName(kept))
    if len(stripped) == left_out:
        return subject  # nothing left out: the same Name, not a rebuilt equal one
    return x509.Name(rdns)


def _refuse_or_note(action: str, stripped: list[str], what: str, refusal: str) -> None:
    if action == "refuse":
        raise Forbidden(refusal)
    stripped.append(what)


def general_name_value(name: x509.GeneralName) -> str:
    """The value as config.yaml's san_patterns, the ledger and the log show it: an OID dotted,
    a directory name in RFC 4514, a network with its prefix length."""
    if isinstance(name, x509.OtherName):
        return name.type_id.dotted_string
    if isinstance(name, x509.RegisteredID):
        return name.value.dotted_string
    if isinstance(name, x509.DirectoryName):
        return name.value.rfc4514_string()
    if isinstance(name, x509.IPAddress):
        value = name.value
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return value.with_prefixlen
        return str(value)
    return str(name.value)


def _safe(text: str) -> str:
    cleaned = "".join(c if c.isprintable() and c not in '"' else "?" for c in text)
    return '"' + cleaned[:200] + '"'
