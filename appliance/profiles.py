"""CA labels (RFC 7030 §3.2.2): each label is a profile with its own certificate validity,
key policy, authentication, duplicate-subject policy, approval and response format.

The default profile (the bare /.well-known/est/<operation> path) has the label ''.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.clock import Clock
from appliance.config import Config, EnrollmentConfig, ResponseFormat
from appliance.csrattrs import csr_attributes_der
from appliance.issuer import CaMaterial, Issuer
from appliance.policy import CsrCheck, default_csr_policy

DEFAULT_LABEL = ""


@dataclass(frozen=True)
class Profile:
    label: str
    settings: EnrollmentConfig
    response_format: ResponseFormat
    allow_basic: bool  # HTTP Basic on simpleenroll/serverkeygen, besides the RA certificate
    issuer: Issuer
    checks: tuple[CsrCheck, ...]
    csr_attributes: bytes | None  # DER CsrAttrs, None: /csrattrs answers 204

    @property
    def name(self) -> str:
        """For messages and logs."""
        return self.label or "default"


def build_profiles(config: Config, ca: CaMaterial, clock: Clock) -> Mapping[str, Profile]:
    profiles: dict[str, Profile] = {}
    for label, profile in config.all_profiles().items():
        settings = profile.enrollment
        profiles[label] = Profile(
            label=label,
            settings=settings,
            response_format=profile.response_format,
            allow_basic=profile.simpleenroll_allow_basic,
            issuer=Issuer(ca, settings, clock, crl_url=config.crl.distribution_url),
            checks=tuple(default_csr_policy(settings)),
            # A profile that links PoP must tell clients so (RFC 7030 §4.5.2 challengePassword).
            csr_attributes=csr_attributes_der(
                settings.csr_attributes, challenge_password=settings.pop_linking
            ),
        )
    return profiles
