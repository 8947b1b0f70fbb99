"""What the handlers read from a CherryPy request, as plain strings for auth and services."""

from __future__ import annotations

import cherrypy

from appliance.errors import PayloadTooLarge
from appliance.web import read_limited


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
    """The raw request body, at most `limit` bytes, or 413 (with `Connection: close`)."""
    request = cherrypy.request
    try:
        return read_limited(request.body, header("Content-Length"), limit)
    except PayloadTooLarge:
        cherrypy.response.headers["Connection"] = "close"
        raise
