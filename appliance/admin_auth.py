"""Who may use the device API and the dashboard: operators, never an enrollment credential.

An operator is an `admin.users` user (Argon2id, HTTP Basic on the API, a login form on the
dashboard) or a TLS client certificate listed in `admin.cert_fingerprints`. The RA certificate,
pump certificates and the EST bootstrap users (`auth.users`) are refused: a certificate that is
not listed gets 403, and a bootstrap password is simply not an admin password (401).

Dashboard sessions live in the ledger, so every worker process (and node) knows them; the
cookie carries a random token of which only the SHA-256 is stored.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from appliance.auth import PasswordAuth, parse_client_certificate
from appliance.clock import Clock
from appliance.config import AdminConfig
from appliance.errors import Forbidden, Unauthorized
from appliance.identity import AuthMethod, Identity
from appliance.ledger import AdminSession, Ledger
from appliance.lockout import LoginGuard

log = logging.getLogger(__name__)

ADMIN_REALM = "EST appliance administration"
SESSION_COOKIE = "est_admin_session"
# A session ends after this long whatever the activity; idle time is admin.session_idle_minutes.
SESSION_MAX_AGE = dt.timedelta(hours=12)
_TOUCH_EVERY = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class OperatorSession:
    identity: Identity
    csrf: str
    token: str | None  # None when the operator came with an admin client certificate


class AdminAuth:
    def __init__(
        self,
        config: AdminConfig,
        ledger: Ledger,
        clock: Clock,
        *,
        revoked: Callable[[str], bool] = lambda _serial: False,
        secret: bytes | None = None,
        guard: LoginGuard | None = None,
    ) -> None:
        self._config = config
        self._ledger = ledger
        self._clock = clock
        self._revoked = revoked
        self._fingerprints = frozenset(config.cert_fingerprints)
        # The same password-guessing limits as the EST users (lockout.py): 429 when locked.
        self._passwords = PasswordAuth(config.users, ADMIN_REALM, 300, guard=guard)
        # For the CSRF token of certificate-authenticated operators (no session row); the
        # composition root derives it from the CA key so every worker process agrees.
        self._secret = secret or secrets.token_bytes(32)

    @property
    def configured(self) -> bool:
        return bool(self._config.users or self._fingerprints)

    def certificate(self, client_cert_pem: str | None) -> Identity | None:
        """The operator behind an admin client certificate; None without a certificate; 403
        for any other certificate (the RA's, a pump's) or a revoked one."""
        if not client_cert_pem:
            return None
        try:
            client = parse_client_certificate(client_cert_pem)
        except ValueError:
            raise Unauthorized("the TLS client certificate could not be read") from None
        if client.is_ra_by_eku:
            log.warning(
                "event=auth_failure method=admin-certificate reason=ra subject=%s", client.subject
            )
            raise Forbidden(
                f"client certificate '{client.subject}' is a registration authority; "
                "it can enroll pumps but never administer the appliance"
            )
        if client.fingerprint not in self._fingerprints:
            log.warning(
                "event=auth_failure method=admin-certificate reason=not-listed subject=%s",
                client.subject,
            )
            raise Forbidden(
                f"client certificate '{client.subject}' is not an administrator certificate "
                "(admin.cert_fingerprints); sign in with an operator account instead"
            )
        if self._revoked(format(client.cert.serial_number, "x")):
            raise Forbidden(f"client certificate '{client.subject}' has been revoked")
        return Identity(client.subject, AuthMethod.CLIENT_CERTIFICATE, client.fingerprint)

    def api(self, authorization: str | None, client_cert_pem: str | None, peer: str) -> Identity:
        """The device API: HTTP Basic with an admin user, or an admin client certificate."""
        if authorization:
            # An operator's password decides, whatever certificate the client also shows.
            return self._passwords.authenticate(authorization, peer)
        identity = self.certificate(client_cert_pem)
        if identity is None:
            raise Unauthorized(
                "the device API needs an operator: HTTP Basic with an admin.users account, "
                "or an administrator TLS client certificate",
                realm=ADMIN_REALM,
            )
        return identity

    def login(self, user: str, password: str, peer: str = "-") -> tuple[str, AdminSession]:
        """Check the form's credentials; returns the cookie token and the stored session."""
        header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            identity = self._passwords.authenticate(header, peer)
        except Unauthorized:
            raise Unauthorized("user name or password is wrong") from None
        now = self._clock()
        token = secrets.token_urlsafe(32)
        session = AdminSession(
            token_hash=_hash(token),
            username=identity.principal,
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
            expires=now + SESSION_MAX_AGE,
        )
        self._ledger.create_session(session)
        log.info("event=admin_login user=%s", identity.principal)
        return token, session

    def session(self, token: str | None) -> OperatorSession | None:
        if not token or len(token) > 128:
            return None
        stored = self._ledger.find_session(_hash(token))
        if stored is None:
            return None
        now = self._clock()
        idle = dt.timedelta(minutes=self._config.session_idle_minutes)
        if now >= stored.expires or now - stored.last_seen >= idle:
            self._ledger.delete_session(stored.token_hash)
            return None
        if now - stored.last_seen >= _TOUCH_EVERY:
            self._ledger.touch_session(stored.token_hash, now)
        identity = Identity(stored.username, AuthMethod.PASSWORD)
        return OperatorSession(identity, stored.csrf, token)

    def certificate_session(self, identity: Identity) -> OperatorSession:
        """An operator with an admin certificate needs no login; the CSRF token is derived
        from the certificate so it is the same in every worker process."""
        csrf = hmac.new(self._secret, (identity.fingerprint or "").encode(), "sha256").hexdigest()
        return OperatorSession(identity, csrf, None)

    def logout(self, token: str) -> None:
        self._ledger.delete_session(_hash(token))

    @staticmethod
    def csrf_ok(session: OperatorSession, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
