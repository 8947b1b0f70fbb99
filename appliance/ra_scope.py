"""What each RA certificate may enroll (issue 7): labels, operations and the pumps' names.

An RA certificate lets its holder enroll devices onto the clinical network; a scope narrows
that to what the RA is for, e.g. the IQE gateway enrolls only CNs in the pump serial format,
only on the default label. Scopes are selected by the RA certificate's SHA-256 fingerprint or
its subject (`auth.ra_scopes`). With no scope configured, every RA may do everything (the
behaviour before scopes existed); once any scope is configured, an RA certificate that matches
none is refused. A refusal is 403 naming the rule that refused it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from appliance.config import DEFAULT_LABEL_NAME, RaScopeConfig
from appliance.errors import Forbidden
from appliance.identity import AuthMethod, Identity


@dataclass(frozen=True)
class _Scope:
    name: str
    config: RaScopeConfig
    common_name: re.Pattern[str] | None
    subject: re.Pattern[str] | None

    def selects(self, identity: Identity) -> bool:
        if self.config.fingerprint:
            return identity.fingerprint == self.config.fingerprint
        return identity.principal == self.config.subject


class RaScopes:
    def __init__(self, scopes: Mapping[str, RaScopeConfig]) -> None:
        self._scopes = tuple(
            _Scope(
                name=name,
                config=config,
                common_name=re.compile(config.common_name_pattern)
                if config.common_name_pattern
                else None,
                subject=re.compile(config.subject_pattern) if config.subject_pattern else None,
            )
            for name, config in scopes.items()
        )

    def check(
        self,
        identity: Identity,
        *,
        label: str,
        operation: str,
        csr: x509.CertificateSigningRequest,
    ) -> None:
        """Raise Forbidden unless the RA `identity` may run `operation` on `label` for the
        subject in `csr`. Identities that are not RA certificates are not scoped here."""
        if not self._scopes or identity.method is not AuthMethod.CLIENT_CERTIFICATE:
            return
        scope = next((s for s in self._scopes if s.selects(identity)), None)
        if scope is None:
            raise Forbidden(
                f"RA certificate '{identity.principal}' matches no entry of auth.ra_scopes, so "
                "it may not enroll anything; add a scope for its fingerprint or subject"
            )
        rule = f"auth.ra_scopes.{scope.name}"
        label_name = label or DEFAULT_LABEL_NAME
        if scope.config.labels and label_name not in scope.config.labels:
            raise Forbidden(
                f"RA '{identity.principal}' may not use CA label '{label_name}' ({rule}.labels "
                f"allows {', '.join(scope.config.labels)})"
            )
        if operation not in scope.config.operations:
            raise Forbidden(
                f"RA '{identity.principal}' may not use {operation} ({rule}.operations allows "
                f"{', '.join(scope.config.operations)})"
            )
        subject = csr.subject.rfc4514_string()
        if scope.subject is not None and not scope.subject.fullmatch(subject):
            raise Forbidden(
                f"RA '{identity.principal}' may not enroll subject '{subject}': it does not "
                f"match {rule}.subject_pattern '{scope.config.subject_pattern}'"
            )
        if scope.common_name is not None:
            names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            values = [str(n.value) for n in names]
            if len(values) != 1 or not scope.common_name.fullmatch(values[0]):
                shown = values[0] if len(values) == 1 else ", ".join(values) or "none"
                raise Forbidden(
                    f"RA '{identity.principal}' may not enroll CN '{shown}': it does not match "
                    f"{rule}.common_name_pattern '{scope.config.common_name_pattern}'"
                )
