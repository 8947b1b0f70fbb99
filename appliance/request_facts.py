"""What the handlers read from a CherryPy request, as plain strings for auth and services."""

from __future__ import annotations

import cherrypy

from appliance.errors import PayloadTooLarge


def header(name: str) -> str | None:
    value = cherrypy.request.headers.get(name)
    return str(value) if value is not None else None


def client_certificate_pem() -> str | None:
    """The client certificate TLS verified against our CA (cheroot's SSL_CLIENT_* variables);
    None when none was presented."""
    environ = cherrypy.request.wsgi_environ
    if environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
        return None
    pem = environ.get("SSL_CLIENT_CERT")
    return str(pem) if pem else None


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
