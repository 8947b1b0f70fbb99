"""What each RA may enroll (issue 7): labels, operations and the pumps' names.

An RA certificate, or a gateway's password, lets its holder enroll devices onto the clinical
network; a scope narrows that to what the RA is for, e.g. the IQE gateway enrolls only CNs in
the pump serial format, only on the default label. Scopes are selected by the RA certificate's
SHA-256 fingerprint or its subject, or by a password user's name (`auth.ra_scopes`). The two
kinds are independent: with no certificate scope configured every RA certificate may do
everything, and once one is, an RA certificate that matches none is refused; the same holds for
password users and user scopes. A refusal is 403 naming the rule that refused it.
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

    @property
    def method(self) -> AuthMethod:
        """Whom the scope is for: RA certificates or password users."""
        return AuthMethod.PASSWORD if self.config.user else AuthMethod.CLIENT_CERTIFICATE

    def selects(self, identity: Identity) -> bool:
        if identity.method is not self.method:
            return False
        if self.config.user:
            return identity.principal == self.config.user
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
        subject in `csr`. A pump renewing its own certificate is not scoped here."""
        if not any(scope.method is identity.method for scope in self._scopes):
            return
        who = _who(identity)
        scope = next((s for s in self._scopes if s.selects(identity)), None)
        if scope is None:
            password = identity.method is AuthMethod.PASSWORD
            selector = "user name" if password else "fingerprint or subject"
            raise Forbidden(
                f"{who} matches no entry of auth.ra_scopes, so it may not enroll anything; "
                f"add a scope for its {selector}"
            )
        rule = f"auth.ra_scopes.{scope.name}"
        label_name = label or DEFAULT_LABEL_NAME
        if scope.config.labels and label_name not in scope.config.labels:
            raise Forbidden(
                f"{who} may not use CA label '{label_name}' ({rule}.labels "
                f"allows {', '.join(scope.config.labels)})"
            )
        if operation not in scope.config.operations:
            raise Forbidden(
                f"{who} may not use {operation} ({rule}.operations allows "
                f"{', '.join(scope.config.operations)})"
            )
        subject = csr.subject.rfc4514_string()
        if scope.subject is not None and not scope.subject.fullmatch(subject):
            raise Forbidden(
                f"{who} may not enroll subject '{subject}': it does not "
                f"match {rule}.subject_pattern '{scope.config.subject_pattern}'"
            )
        if scope.common_name is not None:
            names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            values = [str(n.value) for n in names]
            if len(values) != 1 or not scope.common_name.fullmatch(values[0]):
                shown = values[0] if len(values) == 1 else ", ".join(values) or "none"
                raise Forbidden(
                    f"{who} may not enroll CN '{shown}': it does not match "
                    f"{rule}.common_name_pattern '{scope.config.common_name_pattern}'"
                )


def _who(identity: Identity) -> str:
    if identity.method is AuthMethod.PASSWORD:
        return f"user '{identity.principal}'"
    return f"RA '{identity.principal}'"
