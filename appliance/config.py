"""config.yaml as a typed, validated, frozen object.

Every section is a frozen dataclass; `load_config` checks each key's type and range and raises
`ConfigError` naming the key (`server.port: must be between 1 and 65535, got 70000`), so a typo
never turns into a silent default. Relative paths are resolved against the folder of
config.yaml, so the same file works from any working directory and under systemd.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from appliance.errors import ConfigError

ResponseFormat = Literal["der", "base64", "pem"]
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("der", "base64", "pem")


class KeyAlgorithm(enum.Enum):
    """Key types the appliance generates for its own CA, server and RA certificates."""

    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8445
    # Per read: a peer silent this long is dropped.
    socket_timeout: int = 10
    # Whole request (TLS handshake, headers, body): a slowloris client that trickles bytes
    # holds a worker thread at most this long.
    request_timeout: int = 20
    # Worker threads: requests in progress at once. An idle keep-alive connection holds one for
    # at most keepalive_linger_ms after its last answer.
    thread_pool: int = 64
    # Connections one peer address may hold open; kept below thread_pool so that a single
    # misbehaving host cannot take every worker.
    max_connections_per_ip: int = 48
    # Serving processes sharing the port (one listening socket); 0 = one per CPU core. One CPython
    # process uses about one core (the GIL), so a 2-core host enrolls faster with 2. Each has
    # its own thread pool, per-address connection count and password cache (docs/PERFORMANCE.md).
    workers: int = 1
    # With 2 or more workers and no more workers than CPUs: `auto` keeps worker i on the i-th
    # CPU the appliance may use, so a worker's threads hand the GIL to each other on one core
    # instead of chasing it across cores (8-15 % more keep-alive enrollments on 2 cores,
    # docs/PERFORMANCE.md). `off` lets the kernel move them; choose it on a host whose cores
    # are busy with other services.
    cpu_affinity: Literal["auto", "off"] = "auto"
    # Idle keep-alive connections one worker keeps open (cheroot's default, 10, closes the
    # 11th gateway's persistent connection after every answer).
    keepalive_connections: int = 1024
    # How long the worker that answered a keep-alive request waits for the same client's next
    # request before handing the connection back to the selector (appliance/keepalive.py);
    # 0 hands it back at once. A gateway posting a batch sends the next CSR within ~1 ms.
    keepalive_linger_ms: int = 20
    max_body_bytes: int = 65536
    max_header_bytes: int = 16384

    def __post_init__(self) -> None:
        _check_range("server.port", self.port, 0, 65535)
        _check_range("server.socket_timeout", self.socket_timeout, 1, 600)
        _check_range("server.request_timeout", self.request_timeout, 1, 3600)
        _check_range("server.thread_pool", self.thread_pool, 1, 1024)
        _check_range("server.workers", self.workers, 0, 64)
        _check_range("server.keepalive_connections", self.keepalive_connections, 1, 100_000)
        _check_range("server.keepalive_linger_ms", self.keepalive_linger_ms, 0, 1000)
        _check_range("server.max_connections_per_ip", self.max_connections_per_ip, 1, 100_000)
        _check_range("server.max_body_bytes", self.max_body_bytes, 1024, 16 * 1024 * 1024)
        _check_range("server.max_header_bytes", self.max_header_bytes, 1024, 1024 * 1024)
        if not self.host:
            raise ConfigError("server.host: must not be empty")


@dataclass(frozen=True)
class PkiConfig:
    dir: Path = Path("certs")
    key_algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048
    organization: str = "Hospital Clinical Network"
    ca_common_name: str = "EST Appliance Device CA"
    ca_validity_days: int = 3650
    server_common_name: str = "localhost"
    server_sans: tuple[str, ...] = ("localhost", "127.0.0.1")
    server_validity_days: int = 825
    ra_common_name: str = "IQE Gateway RA"
    ra_validity_days: int = 730
    # The CA key may be encrypted at rest (PKCS#8, `est-appliance init --encrypt-ca-key`); its
    # passphrase comes from a file (first line) or a systemd credential
    # (LoadCredential=NAME:/path -> $CREDENTIALS_DIRECTORY/NAME). At most one of the two.
    ca_key_passphrase_file: Path | None = None
    ca_key_credential: str = ""

    def __post_init__(self) -> None:
        if self.ca_key_passphrase_file is not None and self.ca_key_credential:
            raise ConfigError(
                "pki.ca_key_credential: set either it or pki.ca_key_passphrase_file, not both"
            )
        if self.ca_key_credential and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.ca_key_credential):
            raise ConfigError(
                f"pki.ca_key_credential: {self.ca_key_credential!r} is not a credential name "
                "(letters, digits, '_', '.', '-')"
            )
        _check_range("pki.ca_validity_days", self.ca_validity_days, 1, 36500)
        _check_range("pki.server_validity_days", self.server_validity_days, 1, 36500)
        _check_range("pki.ra_validity_days", self.ra_validity_days, 1, 36500)
        for key in ("organization", "ca_common_name", "server_common_name", "ra_common_name"):
            if not getattr(self, key).strip():
                raise ConfigError(f"pki.{key}: must not be empty")
        if not self.server_sans:
            raise ConfigError("pki.server_sans: list at least one DNS name or IP address")
        for name in self.server_sans:
            if not name or any(c.isspace() for c in name):
                raise ConfigError(f"pki.server_sans: {name!r} is not a DNS name or IP address")

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca-cert.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server-cert.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server-key.pem"

    @property
    def ra_cert(self) -> Path:
        return self.dir / "iqe-ra-cert.pem"

    @property
    def ra_key(self) -> Path:
        return self.dir / "iqe-ra-key.pem"

    def server_san_values(self) -> list[str | ipaddress.IPv4Address | ipaddress.IPv6Address]:
        values: list[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for name in self.server_sans:
            try:
                values.append(ipaddress.ip_address(name))
            except ValueError:
                values.append(name)
        return values


DuplicatePolicy = Literal["allow", "reject", "supersede"]

# RFC 7030 §3.2.2: a CA label is one path segment; it must not be mistaken for an operation.
EST_OPERATIONS: tuple[str, ...] = (
    "cacerts",
    "simpleenroll",
    "simplereenroll",
    "serverkeygen",
    "csrattrs",
    "fullcmc",
    "bootstrap",
)
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
# Extension names accepted in csr_attributes.extension_requests besides dotted OIDs.
EXTENSION_NAMES: Mapping[str, str] = types.MappingProxyType(
    {
        "subjectAltName": "2.5.29.17",
        "keyUsage": "2.5.29.15",
        "extendedKeyUsage": "2.5.29.37",
        "macAddress": "1.3.6.1.1.1.1.22",
    }
)


@dataclass(frozen=True)
class CsrAttributesConfig:
    """RFC 7030 §4.5.2: attributes the server asks for; all empty means /csrattrs answers 204."""

    # The key type the CSR should carry ("none": say nothing).
    key_type: Literal["none", "rsa-2048", "rsa-3072", "ec-p256", "ec-p384"] = "none"
    # Ask for a challengePassword (RFC 7030 §3.5 linking); on by itself with pop_linking.
    challenge_password: bool = False
    # Extensions the CSR should request: names from EXTENSION_NAMES or dotted OIDs.
    extension_requests: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        oids = []
        for name in self.extension_requests:
            oid = EXTENSION_NAMES.get(name, name)
            if not _OID.fullmatch(oid):
                raise ConfigError(
                    f"csr_attributes.extension_requests: {name!r} is neither a dotted OID nor "
                    f"one of {', '.join(EXTENSION_NAMES)}"
                )
            oids.append(oid)
        object.__setattr__(self, "extension_requests", tuple(oids))


# subjectAltName types a CSR may name, as the appliance writes them (and the policy's keys).
SAN_TYPES: tuple[str, ...] = ("DNS", "IP", "email", "URI", "dirName", "RID", "otherName")
# Subject attributes by their RFC 4514 short name, as policy lists them.
SUBJECT_ATTRIBUTES: tuple[str, ...] = (
    "CN",
    "O",
    "OU",
    "C",
    "ST",
    "L",
    "serialNumber",
    "emailAddress",
    "DC",
    "UID",
    "street",
    "title",
    "givenName",
    "surname",
)
PolicyAction = Literal["refuse", "strip"]


@dataclass(frozen=True)
class CsrPolicyConfig:
    """What a CSR may ask for (issue 7). The issuer writes every extension of its own profile
    and takes from a CSR only subject, key and subjectAltName; this decides what happens when a
    CSR asks for more: `refuse` (400/403 naming the rule) or `strip` (issue without it, logged).
    """

    # BasicConstraints CA:TRUE in the CSR: a pump never needs to be a CA.
    ca_request: PolicyAction = "strip"
    # A critical extension the appliance does not understand (RFC 5280 §4.2: a relying party
    # must reject a certificate with an unknown critical extension, so never pass one on).
    unknown_critical: PolicyAction = "refuse"
    # subjectAltName entries and subject attributes outside the lists and patterns below.
    names: PolicyAction = "refuse"
    san_types: tuple[str, ...] = ("DNS", "IP", "email", "URI")
    # SAN type -> regular expression every value of that type must match completely.
    san_patterns: Mapping[str, str] = field(default_factory=dict)
    subject_attributes: tuple[str, ...] = (
        "CN",
        "O",
        "OU",
        "C",
        "ST",
        "L",
        "serialNumber",
        "emailAddress",
        "DC",
        "UID",
    )

    def __post_init__(self) -> None:
        for kind in self.san_types:
            if kind not in SAN_TYPES:
                raise ConfigError(
                    f"csr_policy.san_types: {kind!r} is not one of {', '.join(SAN_TYPES)}"
                )
        for kind, pattern in self.san_patterns.items():
            if kind not in self.san_types:
                raise ConfigError(
                    f"csr_policy.san_patterns: {kind!r} is not listed in csr_policy.san_types"
                )
            _check_regex(f"csr_policy.san_patterns.{kind}", pattern)
        for name in self.subject_attributes:
            if name not in SUBJECT_ATTRIBUTES:
                raise ConfigError(
                    f"csr_policy.subject_attributes: {name!r} is not one of "
                    f"{', '.join(SUBJECT_ATTRIBUTES)}"
                )
        if "CN" not in self.subject_attributes:
            raise ConfigError(
                "csr_policy.subject_attributes: must include CN (EAP-TLS identifies pumps by CN)"
            )


@dataclass(frozen=True)
class EnrollmentConfig:
    """The pump (EAP-TLS client) certificate profile."""

    validity_days: int = 365
    min_rsa_bits: int = 2048
    max_rsa_bits: int = 8192
    allowed_curves: tuple[str, ...] = ("secp256r1", "secp384r1")
    # Pumps' clocks drift; backdating notBefore avoids "certificate not yet valid" right after
    # enrollment on a device a few minutes behind.
    backdate_seconds: int = 300

    # What a second certificate for a subject that already has a valid one does (issue 5):
    # allow it, reject it (409 naming the existing serial), or supersede the old one.
    duplicate_subject: DuplicatePolicy = "allow"
    # With `supersede` (and on reenroll): also mark the replaced certificate revoked.
    revoke_superseded: bool = False
    # RFC 7030 §4.2.3: hold every request for an operator (`est-appliance approve ID`); the
    # client is told 202 + Retry-After and re-sends the same request.
    manual_approval: bool = False
    retry_after_seconds: int = 60
    # RFC 7030 §3.5: the CSR's challengePassword must carry the connection's tls-unique.
    pop_linking: bool = False
    # TLS 1.3 has no tls-unique (RFC 8446 §C.5): `refuse` answers 403 asking for TLS 1.2,
    # `skip` accepts the CSR unlinked (TLS 1.3 with a client certificate already binds the key
    # holder to the session, but not to the CSR).
    pop_on_tls13: Literal["refuse", "skip"] = "refuse"
    # RFC 7030 §4.2.2: may an RA renew on a pump's behalf (subject must match a valid cert)?
    ra_may_reenroll: bool = True
    # RFC 7030 §4.4: the key the appliance generates for /serverkeygen.
    serverkeygen_key: KeyAlgorithm = KeyAlgorithm.RSA_2048
    # RFC 7030 §4.5: what /csrattrs tells clients to put in their CSR.
    csr_attributes: CsrAttributesConfig = field(default_factory=CsrAttributesConfig)
    # What a CSR may ask for beyond subject, key and subjectAltName (issue 7).
    csr_policy: CsrPolicyConfig = field(default_factory=CsrPolicyConfig)

    def __post_init__(self) -> None:
        _check_range("enrollment.validity_days", self.validity_days, 1, 3650)
        _check_range("enrollment.min_rsa_bits", self.min_rsa_bits, 2048, 16384)
        _check_range("enrollment.max_rsa_bits", self.max_rsa_bits, self.min_rsa_bits, 16384)
        _check_range("enrollment.backdate_seconds", self.backdate_seconds, 0, 86400)
        _check_range("enrollment.retry_after_seconds", self.retry_after_seconds, 1, 86400)
        known = {"secp256r1", "secp384r1", "secp521r1"}
        for curve in self.allowed_curves:
            if curve not in known:
                raise ConfigError(
                    f"enrollment.allowed_curves: {curve!r} is not one of {sorted(known)}"
                )


@dataclass(frozen=True)
class GatewayConfig:
    # The IQE gateway reads raw DER; RFC 7030 §4.1.3 says base64. See README "Response format".
    response_format: ResponseFormat = "der"


@dataclass(frozen=True)
class LockoutConfig:
    """Password guessing (issue 7): failed HTTP Basic attempts are counted per source address
    (an IPv6 address by its /64) and per user name, in the ledger so every worker process and
    node shares them. Past a limit the attempt gets 429 with Retry-After; each further failure
    after a lock doubles it. A user-wide lock spares addresses that logged in successfully as
    that user before, so guessing from elsewhere cannot lock the real gateway out."""

    max_failures_per_address: int = 10
    max_failures_per_user: int = 50
    # Failures older than this (counted from the last failure or the end of the last lock)
    # are forgotten.
    window_seconds: int = 900
    backoff_seconds: int = 30
    max_backoff_seconds: int = 3600
    # How long an address that logged in successfully stays "known" for that user.
    known_address_days: int = 30

    def __post_init__(self) -> None:
        _check_range("lockout.max_failures_per_address", self.max_failures_per_address, 1, 10**6)
        _check_range("lockout.max_failures_per_user", self.max_failures_per_user, 1, 10**6)
        _check_range("lockout.window_seconds", self.window_seconds, 1, 30 * 86400)
        _check_range("lockout.backoff_seconds", self.backoff_seconds, 1, 86400)
        _check_range(
            "lockout.max_backoff_seconds",
            self.max_backoff_seconds,
            self.backoff_seconds,
            30 * 86400,
        )
        _check_range("lockout.known_address_days", self.known_address_days, 0, 3650)


# Operations an RA scope can allow (the ones an RA certificate authenticates).
RA_OPERATIONS: tuple[str, ...] = ("simpleenroll", "simplereenroll", "serverkeygen")
# In an RA scope's `labels`, the bare /.well-known/est/<operation> path.
DEFAULT_LABEL_NAME = "default"


@dataclass(frozen=True)
class RaScopeConfig:
    """What one RA may do (issue 7): an RA certificate selected by its SHA-256 fingerprint or
    its subject (RFC 4514, as `est-appliance list` shows requesters), or a gateway that
    authenticates with a password (HTTP Basic), selected by its user name in auth.users."""

    fingerprint: str = ""
    subject: str = ""
    user: str = ""
    # CA labels it may use ("default" = the bare path); empty = every label.
    labels: tuple[str, ...] = ()
    operations: tuple[str, ...] = RA_OPERATIONS
    # Regular expressions the CSR's commonName / whole RFC 4514 subject must match completely,
    # e.g. the pump serial format "NPP[0-9A-Z]{4,10}".
    common_name_pattern: str = ""
    subject_pattern: str = ""

    def __post_init__(self) -> None:
        if [bool(self.fingerprint), bool(self.subject), bool(self.user)].count(True) != 1:
            raise ConfigError(
                "ra_scope.fingerprint: set exactly one of fingerprint, subject (an RA "
                "certificate) or user (a password user)"
            )
        if self.fingerprint:
            object.__setattr__(
                self, "fingerprint", _fingerprint("ra_scope.fingerprint", self.fingerprint)
            )
        if not self.operations:
            raise ConfigError("ra_scope.operations: list at least one operation")
        for operation in self.operations:
            if operation not in RA_OPERATIONS:
                raise ConfigError(
                    f"ra_scope.operations: {operation!r} is not one of {', '.join(RA_OPERATIONS)}"
                )
        for label in self.labels:
            if label != DEFAULT_LABEL_NAME and not _LABEL.fullmatch(label):
                raise ConfigError(f"ra_scope.labels: {label!r} is not a CA label")
        _check_regex("ra_scope.common_name_pattern", self.common_name_pattern)
        _check_regex("ra_scope.subject_pattern", self.subject_pattern)


@dataclass(frozen=True)
class AuditConfig:
    """The audit log: one JSON object per line for issuance, renewal, revocation, approval and
    authentication failures (who, what, from where). Never a key or a password."""

    path: Path | None = Path("var/audit.log")

    def __post_init__(self) -> None:
        if self.path is not None and not self.path.name:
            raise ConfigError("audit.path: must name a file")


@dataclass(frozen=True)
class AuthConfig:
    realm: str = "EST appliance"
    # SHA-256 fingerprints (hex, colons optional) of client certificates accepted as RA even
    # without the id-kp-cmcRA EKU, e.g. an RA certificate issued by another tool of ours.
    ra_fingerprints: tuple[str, ...] = ()
    # RFC 7030 allows HTTP Basic on simpleenroll; off by default so that only the RA
    # certificate can enroll there.
    simpleenroll_allow_basic: bool = False
    # user name -> Argon2id hash (PHC string), written by `est-appliance passwd USER`.
    users: Mapping[str, str] = field(default_factory=dict)
    # How long a verified password stays verified for a keep-alive gateway, in seconds.
    credential_cache_seconds: int = 300
    # Password guessing limits (429 + Retry-After).
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    # Scope name -> what that RA certificate may enroll; none configured = any RA, any pump.
    ra_scopes: Mapping[str, RaScopeConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.realm or '"' in self.realm or "\\" in self.realm:
            raise ConfigError("auth.realm: must be non-empty and contain no quotes or backslashes")
        _check_range("auth.credential_cache_seconds", self.credential_cache_seconds, 0, 86400)
        normalized = [_fingerprint("auth.ra_fingerprints", fp) for fp in self.ra_fingerprints]
        object.__setattr__(self, "ra_fingerprints", tuple(normalized))
        for user, hashed in self.users.items():
            if not user or ":" in user:
                raise ConfigError(f"auth.users: user name {user!r} must be non-empty, without ':'")
            if not hashed.startswith("$argon2"):
                raise ConfigError(
                    f"auth.users.{user}: not an Argon2 hash; set it with "
                    f"`est-appliance passwd {user}` (plain passwords are never stored)"
                )
        for name, scope in self.ra_scopes.items():
            if scope.user and scope.user not in self.users:
                raise ConfigError(
                    f"auth.ra_scopes.{name}.user: no user {scope.user!r} in auth.users"
                )


@dataclass(frozen=True)
class ProfileConfig:
    """One CA label (RFC 7030 §3.2.2): /.well-known/est/<label>/<operation>."""

    # Labels serve RFC clients by default, hence the RFC 7030 §4.1.3 base64.
    response_format: ResponseFormat = "base64"
    simpleenroll_allow_basic: bool = False
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)


@dataclass(frozen=True)
class LedgerConfig:
    # SQLite (the embedded default) at `path`, unless `dsn` names the PostgreSQL database a
    # cluster of appliances shares (README "High availability").
    path: Path = Path("var/ledger.db")
    dsn: str = ""

    def __post_init__(self) -> None:
        if self.dsn and not self.dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "ledger.dsn: must be a PostgreSQL URI such as "
                "postgresql://est@db.example:5432/est_ledger, or empty for SQLite"
            )


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class CrlConfig:
    """The CRL the CA signs (RFC 5280 §5) for RADIUS servers and for GET /crl."""

    # Where the PEM CRL is written for RADIUS servers; the DER copy sits beside it (`.der`).
    path: Path = Path("var/crl/ca-crl.pem")
    # nextUpdate - thisUpdate (RFC 5280 §5.1.2.5): how long a RADIUS server may trust one CRL.
    validity_hours: int = 24
    # Sign a new CRL this long before nextUpdate, so a fresh one is always there to fetch.
    refresh_before_hours: int = 6
    # How often each serving process checks whether the CRL is due (seconds).
    check_interval_seconds: int = 60
    # Put into issued certificates as their CRL Distribution Point (RFC 5280 §4.2.1.13);
    # empty: no CDP extension.
    distribution_url: str = ""

    def __post_init__(self) -> None:
        _check_range("crl.validity_hours", self.validity_hours, 1, 24 * 366)
        _check_range("crl.refresh_before_hours", self.refresh_before_hours, 0, 24 * 365)
        _check_range("crl.check_interval_seconds", self.check_interval_seconds, 1, 86400)
        if self.refresh_before_hours >= self.validity_hours:
            raise ConfigError(
                f"crl.refresh_before_hours: must be below crl.validity_hours "
                f"({self.validity_hours}), got {self.refresh_before_hours}"
            )
        url = self.distribution_url
        if url and (not re.fullmatch(r"https?://[^\s]+", url)):
            raise ConfigError(f"crl.distribution_url: must be an http(s) URL, got {url!r}")

    @property
    def der_path(self) -> Path:
        return self.path.with_suffix(".der")


@dataclass(frozen=True)
class AdminConfig:
    """Who may use /api/ and /dashboard/: never the RA, a pump or an EST bootstrap user."""

    # user name -> Argon2id hash, written by `est-appliance admin-passwd USER`.
    users: Mapping[str, str] = field(default_factory=dict)
    # SHA-256 fingerprints of admin TLS client certificates (issued by our CA).
    cert_fingerprints: tuple[str, ...] = ()
    # Dashboard sessions end after this long without a request, and at most after 12 hours.
    session_idle_minutes: int = 30

    def __post_init__(self) -> None:
        _check_range("admin.session_idle_minutes", self.session_idle_minutes, 1, 720)
        normalized = []
        for fp in self.cert_fingerprints:
            hexfp = fp.replace(":", "").lower()
            if len(hexfp) != 64 or any(c not in "0123456789abcdef" for c in hexfp):
                raise ConfigError(
                    f"admin.cert_fingerprints: {fp!r} is not a SHA-256 fingerprint (64 hex digits)"
                )
            normalized.append(hexfp)
        object.__setattr__(self, "cert_fingerprints", tuple(normalized))
        for user, hashed in self.users.items():
            if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", user):
                raise ConfigError(
                    f"admin.users: user name {user!r} must be 1-64 letters, digits, '_.@-'"
                )
            if not hashed.startswith("$argon2"):
                raise ConfigError(
                    f"admin.users.{user}: not an Argon2 hash; set it with "
                    f"`est-appliance admin-passwd {user}` (plain passwords are never stored)"
                )


@dataclass(frozen=True)
class MetricsConfig:
    """GET /metrics (Prometheus text format)."""

    enabled: bool = True
    # prometheus-client's multiprocess mode: every worker process writes its counters here and
    # /metrics sums them, whichever worker answers. Emptied when the appliance starts.
    dir: Path = Path("var/metrics")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    pki: PkiConfig = field(default_factory=PkiConfig)
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    crl: CrlConfig = field(default_factory=CrlConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # CA label -> profile; the bare path is the default profile built from the keys above.
    profiles: Mapping[str, ProfileConfig] = field(default_factory=dict)
    source: Path | None = None

    def __post_init__(self) -> None:
        for label in self.profiles:
            if not _LABEL.fullmatch(label):
                raise ConfigError(
                    f"profiles.{label}: a label is 1-64 letters, digits, '-', '_' or '.', "
                    "starting with a letter or digit"
                )
            if label in EST_OPERATIONS:
                raise ConfigError(f"profiles.{label}: an EST operation name cannot be a label")
        for name, scope in self.auth.ra_scopes.items():
            for label in scope.labels:
                if label == DEFAULT_LABEL_NAME and label in self.profiles:
                    raise ConfigError(
                        f"auth.ra_scopes.{name}.labels: 'default' means the bare path, but a "
                        "profile is also labelled 'default'; rename that profile"
                    )
                if label != DEFAULT_LABEL_NAME and label not in self.profiles:
                    raise ConfigError(
                        f"auth.ra_scopes.{name}.labels: no profile is labelled {label!r}"
                    )
        # The device API must never accept an enrollment credential (issue 6).
        for user in self.admin.users:
            if user in self.auth.users:
                raise ConfigError(
                    f"admin.users.{user}: also an EST bootstrap user in auth.users; give "
                    "operators their own user names"
                )
        for fp in self.admin.cert_fingerprints:
            if fp in self.auth.ra_fingerprints:
                raise ConfigError(
                    f"admin.cert_fingerprints: {fp} is also an RA in auth.ra_fingerprints; "
                    "an RA certificate can never administer the appliance"
                )

    def default_profile(self) -> ProfileConfig:
        """The bare /.well-known/est/<operation> path: today's top-level keys."""
        return ProfileConfig(
            response_format=self.gateway.response_format,
            simpleenroll_allow_basic=self.auth.simpleenroll_allow_basic,
            enrollment=self.enrollment,
        )

    def all_profiles(self) -> dict[str, ProfileConfig]:
        """Every profile by label; the default profile's label is ''."""
        return {"": self.default_profile(), **self.profiles}


def load_config(path: Path) -> Config:
    """Read and validate config.yaml; relative paths resolve against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = parse_config(raw if raw is not None else {}, base_dir=path.resolve().parent)
    return dataclasses.replace(config, source=path.resolve())


def parse_config(raw: object, *, base_dir: Path) -> Config:
    """Build a Config from already-parsed YAML; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping of sections")
    config: Config = _build(Config, raw, "", base_dir)
    return config


def _build(cls: type[Any], raw: object, prefix: str, base_dir: Path) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {
        key: _convert(hints[key], value, f"{prefix}{key}", base_dir) for key, value in raw.items()
    }
    # Omitted sections and paths still need building and resolving against config.yaml's folder.
    for f in dataclasses.fields(cls):
        if f.name in values or f.name == "source":
            continue
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _build(hints[f.name], {}, f"{prefix}{f.name}.", base_dir)
        elif isinstance(f.default, Path):  # `Path` and `Path | None` settings
            values[f.name] = _convert(Path, str(f.default), f"{prefix}{f.name}", base_dir)
    try:
        return cls(**values)
    except ConfigError as exc:
        # A section's own checks name its key from the section down ("enrollment.x"); nested
        # under a label it must read "profiles.rfc.enrollment.x".
        key, sep, text = str(exc).partition(": ")
        if not prefix or not sep or key.startswith(prefix) or "." not in key:
            raise
        raise ConfigError(f"{prefix}{key.split('.', 1)[1]}: {text}") from None


def _convert(hint: Any, value: object, key: str, base_dir: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        # `X | None`: YAML null (or an empty value) means None.
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None or len(options) != 1:
            if value is None:
                return None
            raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # pragma: no cover
        return _convert(options[0], value, key, base_dir)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, f"{key}.", base_dir)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return str(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a path, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            names = ", ".join(str(m.value) for m in hint)
            raise ConfigError(f"{key}: must be one of {names}, got {value!r}") from None
    if origin is Literal:
        literals = typing.get_args(hint)
        if value not in literals:
            raise ConfigError(
                f"{key}: must be one of {', '.join(map(str, literals))}, got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(
            _convert(item_hint, item, f"{key}[{i}]", base_dir) for i, item in enumerate(value)
        )
    if origin in (Mapping, dict):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {value!r}")
        _key_hint, value_hint = typing.get_args(hint)
        return types.MappingProxyType(
            {str(k): _convert(value_hint, v, f"{key}.{k}", base_dir) for k, v in value.items()}
        )
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # pragma: no cover


def _check_regex(key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}: not a valid regular expression ({exc})") from None


def _fingerprint(key: str, value: str) -> str:
    hexfp = value.replace(":", "").lower()
    if len(hexfp) != 64 or any(c not in "0123456789abcdef" for c in hexfp):
        raise ConfigError(f"{key}: {value!r} is not a SHA-256 fingerprint (64 hex digits)")
    return hexfp


def _check_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, got {value}")
