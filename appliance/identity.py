"""Who is asking: the result of authentication, passed to the enrollment service."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AuthMethod(enum.Enum):
    CLIENT_CERTIFICATE = "client-certificate"
    PASSWORD = "password"  # noqa: S105 - a method name, not a secret


@dataclass(frozen=True)
class Identity:
    principal: str  # RA certificate subject, or the user name
    method: AuthMethod
    fingerprint: str | None = None  # SHA-256 of the client certificate, when there is one

    def __str__(self) -> str:
        return f"{self.method.value}:{self.principal}"
