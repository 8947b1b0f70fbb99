"""Turn a TLS client certificate or an HTTP Basic header into an Identity, or refuse.

Transport facts (the PEM of the verified client certificate, the Authorization header) come in
as plain strings; nothing here knows CherryPy.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from appliance.errors import Forbidden, Unauthorized
from appliance.identity import AuthMethod, Identity
from appliance.issuer import ID_KP_CMC_RA
from appliance.lockout import LoginGuard

log = logging.getLogger(__name__)

# One hasher for the whole process: Argon2id with the library's RFC 9106 low-memory defaults.
PASSWORD_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    return PASSWORD_HASHER.hash(password)


@dataclass(frozen=True)
class ClientCertificate:
    """The verified leaf certificate the TLS layer handed over."""

    cert: x509.Certificate
    fingerprint: str  # SHA-256, lower-case hex
    subject: str
    is_ra_by_eku: bool


@functools.lru_cache(maxsize=1024)
def parse_client_certificate(pem: str) -> ClientCertificate:
    """Parse once per distinct certificate; a keep-alive gateway sends the same one each time."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        is_ra = ID_KP_CMC_RA in eku
    except x509.ExtensionNotFound:
        is_ra = False
    return ClientCertificate(
        cert=cert,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        subject=cert.subject.rfc4514_string(),
        is_ra_by_eku=is_ra,
    )


class RaCertificateAuth:
    """An RA is a client certificate that chains to our CA (checked by TLS) *and* carries
    id-kp-cmcRA or is listed by fingerprint. Pump certificates carry clientAuth only: 403."""

    def __init__(
        self,
        ra_fingerprints: tuple[str, ...],
        revoked: Callable[[str], bool] | None = None,
    ) -> None:
        self._fingerprints = frozenset(ra_fingerprints)
        # serial (lower-case hex) -> revoked? Asked on every request: TLS does not check
        # revocation, and a revoked RA must stop working at once, not at the next CRL.
        self._revoked = revoked or (lambda _serial: False)

    def _refuse_revoked(self, client: ClientCertificate) -> None:
        serial = format(client.cert.serial_number, "x")
        if self._revoked(serial):
            log.warning(
                "event=auth_failure method=client-certificate reason=revoked serial=%s", serial
            )
            raise Forbidden(
                f"client certificate '{client.subject}' (serial {serial}) has been revoked; "
                "ask the appliance's operator for a new one"
            )

    def authenticate(self, client_cert_pem: str | None) -> Identity:
        if not client_cert_pem:
            raise Unauthorized(
                "a TLS client certificate is required: present the RA certificate "
                "(iqe-ra-cert.pem) and its key"
            )
        try:
            client = parse_client_certificate(client_cert_pem)
        except ValueError:
            raise Unauthorized("the TLS client certificate could not be read") from None
        self._refuse_revoked(client)
        if not (client.is_ra_by_eku or client.fingerprint in self._fingerprints):
            raise Forbidden(
                f"client certificate '{client.subject}' is not authorized as a registration "
                "authority: it lacks the id-kp-cmcRA extended key usage and its fingerprint is "
                "not in auth.ra_fingerprints"
            )
        return Identity(client.subject, AuthMethod.CLIENT_CERTIFICATE, client.fingerprint)

    def authenticate_renewal(
        self, client_cert_pem: str | None
    ) -> tuple[Identity, x509.Certificate | None]:
        """RFC 7030 §4.2.2 simplereenroll: the client certificate is either an RA's (renewing
        on a pump's behalf: returns None as the certificate to renew) or the pump's own current
        certificate (returned, for the service to check against the ledger)."""
        if not client_cert_pem:
            raise Unauthorized(
                "simplereenroll needs a TLS client certificate: the pump's current certificate, "
                "or the RA certificate when renewing on a pump's behalf"
            )
        try:
            client = parse_client_certificate(client_cert_pem)
        except ValueError:
            raise Unauthorized("the TLS client certificate could not be read") from None
        identity = Identity(client.subject, AuthMethod.CLIENT_CERTIFICATE, client.fingerprint)
        if client.is_ra_by_eku or client.fingerprint in self._fingerprints:
            self._refuse_revoked(client)
            return identity, None
        return identity, client.cert


class PasswordAuth:
    """HTTP Basic (RFC 7617) against Argon2id hashes.

    A verified (user, password) pair is remembered for a short time as an HMAC under a
    per-process secret, so a keep-alive gateway does not pay ~20 ms of Argon2 per request.
    The password itself is never kept.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        realm: str,
        cache_seconds: int,
        monotonic: Callable[[], float] = time.monotonic,
        guard: LoginGuard | None = None,
    ) -> None:
        self._guard = guard
        self._users = dict(users)
        self._realm = realm
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._secret = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()
        # A gateway opening many connections at once sends the same credentials on each:
        # verifications of one (user, password) wait for the first instead of all paying
        # Argon2 side by side (striped, so memory stays fixed).
        self._verifying = tuple(threading.Lock() for _ in range(64))
        # Unknown users are checked against this so that timing does not reveal which exist.
        self._dummy_hash = PASSWORD_HASHER.hash(secrets.token_urlsafe(16))

    @property
    def realm(self) -> str:
        return self._realm

    def authenticate(self, authorization: str | None, address: str = "-") -> Identity:
        """`address` is the TCP peer (never a forwarded-for header): the lockout counts by it."""
        if self._guard is not None:
            # A locked address gets 429 before anything else, malformed credentials included.
            self._guard.check(None, address)
        try:
            user, password = self._parse(authorization)
        except Unauthorized as error:
            if authorization and self._guard is not None:
                self._guard.failed(None, address, "malformed")
                error.audited = True
            raise
        if self._guard is not None:
            self._guard.check(user, address)
        key = self._cache_key(user, password)
        if self._recently_verified(key):
            return Identity(user, AuthMethod.PASSWORD)
        with self._verifying[key[0] % len(self._verifying)]:
            if self._recently_verified(key):
                return Identity(user, AuthMethod.PASSWORD)
            stored = self._users.get(user)
            # Constant time: Argon2 verify either way; unknown users against a dummy hash.
            ok = self._verify(stored or self._dummy_hash, password) and stored is not None
            if ok:
                self._remember(key)
        if not ok:
            refusal = Unauthorized("user name or password is wrong", realm=self._realm)
            if self._guard is not None:
                self._guard.failed(user, address, "unknown user or wrong password")
                refusal.audited = True
            else:
                log.warning("event=auth_failure method=password user=%s", _safe(user))
            raise refusal
        if self._guard is not None:
            self._guard.succeeded(user, address)
        return Identity(user, AuthMethod.PASSWORD)

    def _parse(self, authorization: str | None) -> tuple[str, str]:
        if not authorization:
            raise Unauthorized(
                "HTTP Basic credentials are required (user name and password)", realm=self._realm
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise Unauthorized(
                f"authorization scheme '{_safe(scheme)}' is not supported; use HTTP Basic",
                realm=self._realm,
            )
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized(
                "the Basic credentials are not valid base64 of UTF-8 'user:password'",
                realm=self._realm,
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise Unauthorized(
                "the Basic credentials must have the form 'user:password'", realm=self._realm
            )
        return user, password

    @staticmethod
    def _verify(stored: str, password: str) -> bool:
        try:
            return PASSWORD_HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def _cache_key(self, user: str, password: str) -> bytes:
        message = user.encode() + b"\x00" + password.encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _recently_verified(self, key: bytes) -> bool:
        if self._cache_seconds <= 0:
            return False
        with self._lock:
            expiry = self._verified.get(key)
            if expiry is None:
                return False
            if expiry < self._monotonic():
                del self._verified[key]
                return False
            return True

    def _remember(self, key: bytes) -> None:
        if self._cache_seconds <= 0:
            return
        now = self._monotonic()
        with self._lock:
            if len(self._verified) > 10_000:  # bound memory under credential stuffing
                self._verified = {k: v for k, v in self._verified.items() if v >= now}
            self._verified[key] = now + self._cache_seconds


def _safe(text: str) -> str:
    """Log-safe rendering of client-supplied text: printable, bounded."""
    cleaned = "".join(c if c.isprintable() and c not in ' ="' else "?" for c in text)
    return cleaned[:64] or "-"
