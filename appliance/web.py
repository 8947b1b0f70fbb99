"""The handlers for /.well-known/est/: each a few lines, and the one error mapping.

The handlers only move bytes: they read the request (body, client certificate, Authorization
header), call auth/codec/service, and write the answer. `_respond_error` is the only place
that turns an error into an HTTP status; anything unexpected becomes a 500 whose detail stays
in the log, tagged with the request id the client also sees.

Nothing here knows the web framework: an `EstRequest` comes in, an `EstAnswer` goes out.
est_wsgi.py serves them under cheroot (CherryPy's HTTP server) directly, because CherryPy's
per-request machinery cost about a fifth of a worker's CPU on the enrollment path
(docs/PERFORMANCE.md); the dashboard, API and metrics stay CherryPy applications.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography import x509

from appliance import audit
from appliance.auth import PasswordAuth, RaCertificateAuth
from appliance.codec import (
    PKCS7_MIME,
    EncodedBody,
    certs_only_der,
    decode_csr,
    encode_certs_only,
    encode_csr_attributes,
    encode_pkcs7,
)
from appliance.config import RESPONSE_FORMATS
from appliance.errors import (
    Accepted,
    EstError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    NotImplementedOperation,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from appliance.identity import Identity
from appliance.policy import Channel
from appliance.profiles import DEFAULT_LABEL, Profile
from appliance.serverkeygen import encode_serverkeygen
from appliance.service import EnrollmentService, Issued

log = logging.getLogger(__name__)

EST_PREFIX = "/.well-known/est"
CSR_MEDIA_TYPE = "application/pkcs10"


@dataclass(frozen=True)
class EstRequest:
    """One request as the handlers see it: plain values, no framework."""

    method: str
    segments: tuple[str, ...]  # the path below EST_PREFIX, split at '/', empty parts dropped
    peer: str  # the TCP peer; forwarded-for headers are client-chosen and never trusted
    headers: Mapping[str, str]  # by lower-case name
    body: BinaryIO
    # TLS facts from the server: SSL_CLIENT_VERIFY, SSL_CLIENT_CERT, SSL_PROTOCOL, SSL_TLS_UNIQUE.
    tls: Mapping[str, Any]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def client_certificate_pem(self) -> str | None:
        """The client certificate TLS verified against our CA; None when none was presented."""
        if self.tls.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            return None
        pem = self.tls.get("SSL_CLIENT_CERT")
        return str(pem) if pem else None

    def channel(self) -> Channel:
        """The TLS facts PoP linking needs (RFC 7030 §3.5)."""
        unique = self.tls.get("SSL_TLS_UNIQUE")
        protocol = self.tls.get("SSL_PROTOCOL")
        return Channel(
            protocol=str(protocol) if protocol else None,
            tls_unique=base64.b64decode(unique) if unique else None,
        )

    def read_body(self, limit: int) -> bytes:
        """The raw request body, at most `limit` bytes, or 413 (which also ends the connection:
        cheroot closes after every 413, so an unread remainder is never taken for a request)."""
        return read_limited(self.body, self.header("Content-Length"), limit)


def read_limited(body: Any, content_length: str | None, limit: int) -> bytes:
    """At most `limit` bytes of a request body, or PayloadTooLarge (413)."""
    too_large = PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    try:
        data = body.read(limit + 1)
    except OSError:
        # cheroot raises MaxSizeExceeded (an IOError) for an oversized chunked body.
        raise too_large from None
    if len(data) > limit:
        raise too_large
    return bytes(data)


@dataclass(frozen=True)
class EstAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class RequestLog:
    """What the one log line of a request says; filled in as the request moves along."""

    request_id: str
    endpoint: str
    peer: str = "-"
    method: str = "-"
    identity: str = "-"
    serial: str = "-"
    # What an issuing request got: kind (enroll, renew, rekey, serverkeygen, resent), the CA
    # profile, the serial it replaces and those it retired.
    kind: str = "-"
    profile: str = "-"
    replaces: str = "-"
    retired: str = "-"
    reason: str = "-"
    subject: str | None = None  # RFC 4514, of the certificate issued (for the audit record)
    code: str = "-"  # EstError.reason of a refusal (metrics, failure statistics)


# (request, path segments, HTTP status, seconds): metrics and the failure record.
RequestObserver = Callable[[RequestLog, tuple[str, ...], int, float], None]


@dataclass(frozen=True)
class Operation:
    methods: tuple[str, ...]
    handler: Callable[[EstRequest, RequestLog, Profile], EncodedBody]


class EstApplication:
    """The RFC 7030 operations, under the bare path (default profile) and under each CA label
    (RFC 7030 §3.2.2: /.well-known/est/<label>/<operation>)."""

    def __init__(
        self,
        service: EnrollmentService,
        ra_auth: RaCertificateAuth,
        password_auth: PasswordAuth,
        *,
        max_body_bytes: int,
        observe: RequestObserver | None = None,
    ) -> None:
        self._service = service
        # Metrics and the failure record (server.py wires them): told about every request.
        self._observe = observe
        self._ra_auth = ra_auth
        self._password_auth = password_auth
        self._max_body = max_body_bytes
        self._operations: dict[str, Operation] = {
            "cacerts": Operation(("GET", "HEAD"), self._cacerts),
            "simpleenroll": Operation(("POST",), self._simpleenroll),
            "simplereenroll": Operation(("POST",), self._simplereenroll),
            "serverkeygen": Operation(("POST",), self._serverkeygen),
            "csrattrs": Operation(("GET", "HEAD"), self._csrattrs),
            "fullcmc": Operation(("POST",), self._fullcmc),
            "bootstrap": Operation(("POST",), self._bootstrap),
        }
        # The CA chain never changes while serving: encode it once per response format.
        # RFC 7030 §4.1.3 names plain application/pkcs7-mime for cacerts.
        chain_der = certs_only_der(list(service.ca_chain))
        self._cacerts_bodies = {
            fmt: encode_pkcs7(chain_der, fmt, PKCS7_MIME) for fmt in RESPONSE_FORMATS
        }

    def handle(self, request: EstRequest) -> EstAnswer:
        segments = request.segments
        entry = RequestLog(
            request_id=secrets.token_hex(6),
            endpoint="/".join(segments) or "-",
            peer=request.peer,
            method=request.method,
        )
        started = time.perf_counter()
        try:
            profile, operation = self._resolve(segments)
            if request.method not in operation.methods:
                raise MethodNotAllowed(
                    f"{request.method} is not allowed on {entry.endpoint}",
                    allow=operation.methods,
                )
            body = operation.handler(request, entry, profile)
            _audit_success(entry, profile)
            answer = _respond(body)
        except EstError as error:
            entry.reason = error.message
            entry.code = error.reason
            _audit_refusal(entry, error)
            answer = _respond_error(error)
        except Exception:
            log.exception("event=internal_error request_id=%s", entry.request_id)
            entry.reason = "internal error"
            answer = _respond_internal_error(entry.request_id)
        answer.headers["X-Request-Id"] = entry.request_id
        _log_request(entry, answer.status, started)
        if self._observe is not None:
            self._observe(entry, segments, answer.status, time.perf_counter() - started)
        return answer

    def _resolve(self, segments: tuple[str, ...]) -> tuple[Profile, Operation]:
        if len(segments) == 1:
            label, name = DEFAULT_LABEL, segments[0]
        elif len(segments) == 2:
            label, name = segments
        else:
            raise NotFound(
                f"no EST operation at {EST_PREFIX}/{'/'.join(segments)}; use "
                f"{EST_PREFIX}/<operation> or {EST_PREFIX}/<label>/<operation>"
            )
        operation = self._operations.get(name)
        if operation is None:
            raise NotFound(
                f"unknown EST operation '{name}'; known operations: {', '.join(self._operations)}"
            )
        return self._service.profile(label), operation

    # RFC 7030 §4.1: the CA certificates, no authentication.
    def _cacerts(self, request: EstRequest, entry: RequestLog, profile: Profile) -> EncodedBody:
        return self._cacerts_bodies[profile.response_format]

    # RFC 7030 §4.2.1: enrollment by an RA authenticated with its TLS client certificate.
    def _simpleenroll(
        self, request: EstRequest, entry: RequestLog, profile: Profile
    ) -> EncodedBody:
        identity = self._authenticate_ra(request, entry, profile)
        csr = self._read_csr(request)
        issued = self._service.enroll(
            csr, identity, "simpleenroll", label=profile.label, channel=request.channel()
        )
        return _certificate(entry, issued, profile)

    # RFC 7030 §4.2.2: the pump renews with its current certificate, or an RA on its behalf.
    def _simplereenroll(
        self, request: EstRequest, entry: RequestLog, profile: Profile
    ) -> EncodedBody:
        identity, current = self._ra_auth.authenticate_renewal(request.client_certificate_pem())
        entry.identity = str(identity)
        csr = self._read_csr(request)
        issued = self._service.reenroll(
            csr, identity, current=current, label=profile.label, channel=request.channel()
        )
        return _certificate(entry, issued, profile)

    # RFC 7030 §4.4: the appliance generates the key for a pump that cannot.
    def _serverkeygen(
        self, request: EstRequest, entry: RequestLog, profile: Profile
    ) -> EncodedBody:
        identity = self._authenticate_ra(request, entry, profile)
        csr = self._read_csr(request)
        issued, key = self._service.serverkeygen(
            csr, identity, label=profile.label, channel=request.channel()
        )
        _note_issued(entry, issued, profile)
        return encode_serverkeygen(issued.cert, key, profile.response_format)

    # RFC 7030 §4.5: what the CSR should contain; 204 when the profile asks for nothing.
    def _csrattrs(self, request: EstRequest, entry: RequestLog, profile: Profile) -> EncodedBody:
        if profile.csr_attributes is None:
            return EncodedBody.no_content()
        return encode_csr_attributes(profile.csr_attributes, profile.response_format)

    # RFC 7030 §4.3: Full CMC is optional and not offered here.
    def _fullcmc(self, request: EstRequest, entry: RequestLog, profile: Profile) -> EncodedBody:
        raise NotImplementedOperation(
            "fullcmc (RFC 7030 §4.3) is not offered by this appliance; use simpleenroll, "
            "simplereenroll or serverkeygen"
        )

    # Enrollment with HTTP Basic (RFC 7030 §3.2.3), as the IQE gateway's password approach does.
    def _bootstrap(self, request: EstRequest, entry: RequestLog, profile: Profile) -> EncodedBody:
        identity = self._password_auth.authenticate(request.header("Authorization"), request.peer)
        entry.identity = str(identity)
        csr = self._read_csr(request)
        issued = self._service.enroll(
            csr, identity, "bootstrap", label=profile.label, channel=request.channel()
        )
        return _certificate(entry, issued, profile)

    def _authenticate_ra(
        self, request: EstRequest, entry: RequestLog, profile: Profile
    ) -> Identity:
        pem = request.client_certificate_pem()
        authorization = request.header("Authorization")
        if pem is None and profile.allow_basic and authorization:
            identity = self._password_auth.authenticate(authorization, request.peer)
        else:
            try:
                identity = self._ra_auth.authenticate(pem)
            except Unauthorized as error:
                if profile.allow_basic:
                    raise Unauthorized(
                        f"{error.message}, or HTTP Basic credentials",
                        realm=self._password_auth.realm,
                    ) from None
                raise
        entry.identity = str(identity)
        return identity

    def _read_csr(self, request: EstRequest) -> x509.CertificateSigningRequest:
        content_type = request.header("Content-Type") or ""
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != CSR_MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"Content-Type must be {CSR_MEDIA_TYPE}, got "
                f"'{media_type or 'nothing'}'; send the CSR with "
                f"'Content-Type: {CSR_MEDIA_TYPE}'"
            )
        return decode_csr(request.read_body(self._max_body))


def _certificate(entry: RequestLog, issued: Issued, profile: Profile) -> EncodedBody:
    _note_issued(entry, issued, profile)
    return encode_certs_only([issued.cert], profile.response_format)


def _note_issued(entry: RequestLog, issued: Issued, profile: Profile) -> None:
    entry.serial = issued.serial
    entry.kind = issued.kind
    entry.profile = profile.name
    entry.replaces = issued.replaces or "-"
    entry.retired = ",".join(issued.retired) or "-"
    entry.subject = issued.subject


# Audit trail (audit.py): who got which certificate from where, and who was turned away.
def _audit_success(entry: RequestLog, profile: Profile) -> None:
    operation = entry.endpoint.rsplit("/", 1)[-1]
    if entry.serial == "-":
        return
    audit.record(
        audit.RENEWED if operation == "simplereenroll" else audit.ISSUED,
        serial=entry.serial,
        subject=entry.subject,
        operation=operation,
        profile=profile.name,
        by=entry.identity,
        address=entry.peer,
        request_id=entry.request_id,
    )


def _audit_refusal(entry: RequestLog, error: EstError) -> None:
    if error.audited:
        return
    if isinstance(error, Accepted):
        event = audit.APPROVAL_REQUESTED
    elif isinstance(error, Unauthorized):
        event = audit.AUTH_FAILURE
    elif isinstance(error, Forbidden):
        event = audit.FORBIDDEN
    elif isinstance(error, TooManyRequests):
        event = audit.THROTTLED
    else:
        return
    audit.record(
        event,
        operation=entry.endpoint,
        by=entry.identity,
        address=entry.peer,
        reason=error.message,
        request_id=entry.request_id,
    )


def _respond(body: EncodedBody) -> EstAnswer:
    # RFC 9110 §8.6: a 204 carries no Content-Type (and no Content-Length, est_wsgi.py).
    return EstAnswer(body.status, body.headers(), body.content)


def _respond_error(error: EstError) -> EstAnswer:
    headers = {"Content-Type": "text/plain; charset=utf-8", **error.headers()}
    return EstAnswer(error.status, headers, (error.message + "\n").encode("utf-8"))


def _respond_internal_error(request_id: str) -> EstAnswer:
    return EstAnswer(
        500,
        {"Content-Type": "text/plain; charset=utf-8"},
        (
            f"internal error in the EST appliance; the operator can find request id "
            f"{request_id} in its log\n"
        ).encode(),
    )


def _log_request(entry: RequestLog, status: int, started: float) -> None:
    log.info(
        "event=request id=%s peer=%s method=%s endpoint=%s identity=%s status=%s serial=%s "
        "kind=%s profile=%s replaces=%s retired=%s ms=%.1f reason=%s",
        entry.request_id,
        entry.peer,
        entry.method,
        entry.endpoint,
        entry.identity,
        status,
        entry.serial,
        entry.kind,
        entry.profile,
        entry.replaces,
        entry.retired,
        (time.perf_counter() - started) * 1000,
        _quote(entry.reason),
    )


def _quote(text: str) -> str:
    if text == "-":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
