"""Plain-text pages for the CherryPy applications (dashboard, API, CRL, metrics, the root).

CherryPy's own error pages are HTML; EST clients and operators' scripts show the body as it is,
so every error is one sentence of `text/plain`.
"""

from __future__ import annotations

import cherrypy

from appliance.web import EST_PREFIX


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
