"""The one table of errors the appliance can answer with.

Every module raises these; only `web` turns them into HTTP responses. The message is what the
EST client shows its operator, so it is a plain sentence without internals; detail for the
integrator goes to the log.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base class for everything the appliance raises on purpose."""


class ConfigError(ApplianceError):
    """config.yaml is invalid; the message names the key."""


class PkiError(ApplianceError):
    """CA, server or RA material is missing, unsafe or inconsistent; the message names the file."""


class EstError(ApplianceError):
    """An error with an HTTP status, raised while serving a request."""

    status: int = 500
    reason: str = "internal"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        # True once the raiser wrote the audit record itself (with more detail than the web
        # layer has), so the failure is not recorded twice.
        self.audited = False

    def headers(self) -> dict[str, str]:
        """Extra response headers this error requires."""
        if self.retry_after is not None:
            return {"Retry-After": str(self.retry_after)}
        return {}


class Accepted(EstError):
    """RFC 7030 §4.2.3: the request is held (manual approval); retry after `retry_after`.

    Not a failure, but like one it ends the request without a certificate, so it travels
    the same single path to the client."""

    status = 202
    reason = "accepted"


class BadRequest(EstError):
    status = 400
    reason = "bad_request"


class Unauthorized(EstError):
    """RFC 7030 §3.2.3: a 401 carries the challenge the client must answer."""

    status = 401
    reason = "unauthenticated"

    def __init__(self, message: str, *, realm: str | None = None) -> None:
        super().__init__(message)
        self.realm = realm

    def headers(self) -> dict[str, str]:
        if self.realm is None:
            return {}
        return {"WWW-Authenticate": f'Basic realm="{self.realm}", charset="UTF-8"'}


class Forbidden(EstError):
    status = 403
    reason = "forbidden"


class NotFound(EstError):
    status = 404
    reason = "not_found"


class MethodNotAllowed(EstError):
    status = 405
    reason = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}


class Conflict(EstError):
    status = 409
    reason = "conflict"


class PayloadTooLarge(EstError):
    status = 413
    reason = "too_large"


class UnsupportedMediaType(EstError):
    status = 415
    reason = "unsupported_media_type"


class TooManyRequests(EstError):
    """RFC 6585 §4: too many failed attempts from this address (or for this user); the
    `Retry-After` header says when to try again."""

    status = 429
    reason = "too_many_requests"


class NotImplementedOperation(EstError):
    status = 501
    reason = "not_implemented"


class ServiceUnavailable(EstError):
    status = 503
    reason = "unavailable"


def first_line(exc: BaseException) -> str:
    """The first line of a library's error (at most 200 characters), for a message a person
    reads; the exception's class name when it has no text."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
