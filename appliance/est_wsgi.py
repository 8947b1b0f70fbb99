"""The EST handlers (web.py) as a WSGI application, and the one WSGI entry point of the server.

cheroot, CherryPy's HTTP server, calls `ApplianceWsgi`: requests under /.well-known/est go to
the EST handlers without CherryPy's per-request machinery (hooks, tools, config lookups,
thread-local request objects: about a fifth of a worker's CPU per enrollment, measured in
docs/PERFORMANCE.md); everything else (dashboard, API, CRL, metrics, the 404 root) goes to the
CherryPy tree as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

from appliance.web import EST_PREFIX, EstApplication, EstRequest

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# WSGI names two request headers without the HTTP_ prefix (PEP 3333).
_UNPREFIXED = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


class EnvironHeaders(Mapping[str, str]):
    """The request headers of a WSGI environ, by lower-case name."""

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        key = _UNPREFIXED.get(name) or "HTTP_" + name.upper().replace("-", "_")
        return str(self._environ[key])

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _name in self)


class EstWsgi:
    """WSGI for the EST operations mounted at EST_PREFIX (SCRIPT_NAME), path in PATH_INFO."""

    def __init__(self, app: EstApplication) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = str(environ.get("PATH_INFO") or "")
        # cheroot decodes the path as ISO-8859-1 (WSGI 1.0); names are UTF-8 on the wire.
        path = path.encode("latin-1", "replace").decode("utf-8", "replace")
        method = str(environ.get("REQUEST_METHOD") or "GET")
        request = EstRequest(
            method=method,
            segments=tuple(part for part in path.split("/") if part),
            peer=str(environ.get("REMOTE_ADDR") or "-"),
            headers=EnvironHeaders(environ),
            body=environ["wsgi.input"],
            tls=environ,
        )
        answer = self._app.handle(request)
        headers = list(answer.headers.items())
        if answer.status != 204:
            headers.append(("Content-Length", str(len(answer.body))))
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
        # RFC 9110 §9.3.2: HEAD answers the GET's headers, without its body.
        return [b""] if method == "HEAD" else [answer.body]


class ApplianceWsgi:
    """The server's WSGI application: EST requests to EstWsgi, the rest to CherryPy."""

    def __init__(self, est: EstApplication, cherrypy_tree: WsgiApp) -> None:
        self._est = EstWsgi(est)
        self._tree = cherrypy_tree

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO") or "")
        if path == EST_PREFIX or path.startswith(EST_PREFIX + "/"):
            environ["SCRIPT_NAME"] = str(environ.get("SCRIPT_NAME") or "") + EST_PREFIX
            environ["PATH_INFO"] = path[len(EST_PREFIX) :]
            return self._est(environ, start_response)
        return self._tree(environ, start_response)
