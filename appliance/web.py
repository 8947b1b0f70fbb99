"""CherryPy handlers for /.well-known/est/: each a few lines, and the one error mapping.

The handlers only move bytes: they read the request (body, client certificate, Authorization
header), call auth/codec/service, and write the answer. `_respond_error` is the only place
that turns an error into an HTTP status; anything unexpected becomes a 500 whose detail stays
in the log, tagged with the request id the client also sees.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cherrypy
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
from appliance.request_facts import client_certificate_pem, header
from appliance.serverkeygen import encode_serverkeygen
from appliance.service import EnrollmentService

log = logging.getLogger(__name__)

EST_PREFIX = "/.well-known/est"
CSR_MEDIA_TYPE = "application/pkcs10"


@dataclass
class RequestLog:
    """What the one log line of a request says; filled in as the request moves along."""

    request_id: str
    endpoint: str
    identity: str = "-"
    serial: str = "-"
    reason: str = "-"
    extra: dict[str, str] = field(default_factory=dict)
    code: str = "-"  # EstError.reason of a refusal (metrics, failure statistics)


# (request, path segments, HTTP status, seconds): metrics and the failure record.
RequestObserver = Callable[[RequestLog, tuple[str, ...], int, float], None]


@dataclass(frozen=True)
class Operation:
    methods: tuple[str, ...]
    handler: Callable[[RequestLog, Profile], EncodedBody]


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

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def default(self, *segments: str, **_params: str) -> bytes:
        request = cherrypy.request
        entry = RequestLog(request_id=secrets.token_hex(6), endpoint="/".join(segments) or "-")
        started = time.perf_counter()
        cherrypy.response.headers["X-Request-Id"] = entry.request_id
        try:
            profile, operation = self._resolve(segments)
            if request.method not in operation.methods:
                raise MethodNotAllowed(
                    f"{request.method} is not allowed on {entry.endpoint}",
                    allow=operation.methods,
                )
            body = operation.handler(entry, profile)
            _audit_success(entry, profile)
            return _respond(body)
        except EstError as error:
            entry.reason = error.message
            entry.code = error.reason
            _audit_refusal(entry, error)
            return _respond_error(error)
        except Exception:
            log.exception("event=internal_error request_id=%s", entry.request_id)
            entry.reason = "internal error"
            return _respond_internal_error(entry.request_id)
        finally:
            _log_request(entry, started)
            if self._observe is not None:
                status = int(str(cherrypy.response.status).split(" ", 1)[0])
                self._observe(entry, segments, status, time.perf_counter() - started)

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
    def _cacerts(self, entry: RequestLog, profile: Profile) -> EncodedBody:
        return self._cacerts_bodies[profile.response_format]

    # RFC 7030 §4.2.1: enrollment by an RA authenticated with its TLS client certificate.
    def _simpleenroll(self, entry: RequestLog, profile: Profile) -> EncodedBody:
        identity = self._authenticate_ra(entry, profile)
        csr = self._read_csr()
        cert = self._service.enroll(
            csr, identity, "simpleenroll", label=profile.label, channel=_channel()
        )
        return _certificate(entry, cert, profile)

    # RFC 7030 §4.2.2: the pump renews with its current certificate, or an RA on its behalf.
    def _simplereenroll(self, entry: RequestLog, profile: Profile) -> EncodedBody:
        identity, current = self._ra_auth.authenticate_renewal(client_certificate_pem())
        entry.identity = str(identity)
        csr = self._read_csr()
        cert = self._service.reenroll(
            csr, identity, current=current, label=profile.label, channel=_channel()
        )
        return _certificate(entry, cert, profile)

    # RFC 7030 §4.4: the appliance generates the key for a pump that cannot.
    def _serverkeygen(self, entry: RequestLog, profile: Profile) -> EncodedBody:
        identity = self._authenticate_ra(entry, profile)
        csr = self._read_csr()
        cert, key = self._service.serverkeygen(
            csr, identity, label=profile.label, channel=_channel()
        )
        entry.serial = format(cert.serial_number, "x")
        entry.extra["subject"] = cert.subject.rfc4514_string()
        return encode_serverkeygen(cert, key, profile.response_format)

    # RFC 7030 §4.5: what the CSR should contain; 204 when the profile asks for nothing.
    def _csrattrs(self, entry: RequestLog, profile: Profile) -> EncodedBody:
        if profile.csr_attributes is None:
            return EncodedBody.no_content()
        return encode_csr_attributes(profile.csr_attributes, profile.response_format)

    # RFC 7030 §4.3: Full CMC is optional and not offered here.
    def _fullcmc(self, entry: RequestLog, profile: Profile) -> EncodedBody:
        raise NotImplementedOperation(
            "fullcmc (RFC 7030 §4.3) is not offered by this appliance; use simpleenroll, "
            "simplereenroll or serverkeygen"
        )

    # Enrollment with HTTP Basic (RFC 7030 §3.2.3), as the IQE gateway's password approach does.
    def _bootstrap(self, entry: RequestLog, profile: Profile) -> EncodedBody:
        identity = self._password_auth.authenticate(header("Authorization"), _peer())
        entry.identity = str(identity)
        csr = self._read_csr()
        cert = self._service.enroll(
            csr, identity, "bootstrap", label=profile.label, channel=_channel()
        )
        return _certificate(entry, cert, profile)

    def _authenticate_ra(self, entry: RequestLog, profile: Profile) -> Identity:
        pem = client_certificate_pem()
        if pem is None and profile.allow_basic and header("Authorization"):
            identity = self._password_auth.authenticate(header("Authorization"), _peer())
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

    def _read_csr(self) -> x509.CertificateSigningRequest:
        content_type = header("Content-Type") or ""
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != CSR_MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"Content-Type must be {CSR_MEDIA_TYPE}, got "
                f"'{media_type or 'nothing'}'; send the CSR with "
                f"'Content-Type: {CSR_MEDIA_TYPE}'"
            )
        return decode_csr(read_body(self._max_body))


def _certificate(entry: RequestLog, cert: x509.Certificate, profile: Profile) -> EncodedBody:
    entry.serial = format(cert.serial_number, "x")
    entry.extra["subject"] = cert.subject.rfc4514_string()
    return encode_certs_only([cert], profile.response_format)


def _peer() -> str:
    """The TCP peer address; forwarded-for headers are client-chosen and never trusted."""
    return str(cherrypy.request.remote.ip or "-")


# Audit trail (audit.py): who got which certificate from where, and who was turned away.
def _audit_success(entry: RequestLog, profile: Profile) -> None:
    operation = entry.endpoint.rsplit("/", 1)[-1]
    if entry.serial == "-":
        return
    audit.record(
        audit.RENEWED if operation == "simplereenroll" else audit.ISSUED,
        serial=entry.serial,
        subject=entry.extra.get("subject"),
        operation=operation,
        profile=profile.name,
        by=entry.identity,
        address=_peer(),
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
        address=_peer(),
        reason=error.message,
        request_id=entry.request_id,
    )


def _channel() -> Channel:
    """The TLS facts PoP linking needs (RFC 7030 §3.5), from the TLS adapter's environ."""
    environ = cherrypy.request.wsgi_environ
    unique = environ.get("SSL_TLS_UNIQUE")
    protocol = environ.get("SSL_PROTOCOL")
    return Channel(
        protocol=str(protocol) if protocol else None,
        tls_unique=base64.b64decode(unique) if unique else None,
    )


def read_body(limit: int) -> bytes:
    """The raw request body, at most `limit` bytes, or 413."""
    request = cherrypy.request
    length = request.headers.get("Content-Length")
    too_large = PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
    if length is not None and length.isdigit() and int(length) > limit:
        cherrypy.response.headers["Connection"] = "close"
        raise too_large
    try:
        data: bytes = request.body.read(limit + 1)
    except OSError:
        # cheroot raises MaxSizeExceeded (an IOError) for an oversized chunked body.
        cherrypy.response.headers["Connection"] = "close"
        raise too_large from None
    if len(data) > limit:
        cherrypy.response.headers["Connection"] = "close"
        raise too_large
    return data


def _respond(body: EncodedBody) -> bytes:
    cherrypy.response.status = body.status
    cherrypy.response.headers.update(body.headers())
    if body.status == 204:
        # RFC 9110 §8.6: a 204 carries no Content-Length; CherryPy's default text/html goes too.
        cherrypy.response.headers.pop("Content-Type", None)
    return body.content


def _respond_error(error: EstError) -> bytes:
    response = cherrypy.response
    response.status = error.status
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers.update(error.headers())
    return (error.message + "\n").encode("utf-8")


def _respond_internal_error(request_id: str) -> bytes:
    response = cherrypy.response
    response.status = 500
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    return (
        f"internal error in the EST appliance; the operator can find request id {request_id} "
        "in its log\n"
    ).encode()


def _log_request(entry: RequestLog, started: float) -> None:
    request = cherrypy.request
    log.info(
        "event=request id=%s peer=%s method=%s endpoint=%s identity=%s status=%s serial=%s "
        "ms=%.1f reason=%s",
        entry.request_id,
        request.remote.ip,
        request.method,
        entry.endpoint,
        entry.identity,
        str(cherrypy.response.status).split(" ", 1)[0],
        entry.serial,
        (time.perf_counter() - started) * 1000,
        _quote(entry.reason),
    )


def _quote(text: str) -> str:
    if text == "-":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def error_page(status: str, message: str, traceback: str, version: str) -> str:
    """CherryPy's own errors (unknown path, oversize header...) as one plain sentence."""
    cherrypy.response.headers["Content-Type"] = "text/plain; charset=utf-8"
    code = status.split(" ", 1)[0]
    if code == "404":
        return f"nothing at {cherrypy.request.path_info}; EST operations live under {EST_PREFIX}/\n"
    if code.startswith("5"):
        return "internal error in the EST appliance; see its log\n"
    return f"{message}\n"


class Root:
    """Everything outside /.well-known/est answers 404 with a pointer to the right place."""

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def default(self, *_segments: str, **_params: str) -> bytes:
        cherrypy.response.status = 404
        cherrypy.response.headers["Content-Type"] = "text/plain; charset=utf-8"
        return f"nothing here; EST operations live under {EST_PREFIX}/\n".encode()
