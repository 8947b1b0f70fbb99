"""The operator dashboard under /dashboard/: server-rendered HTML (Jinja2, autoescaped), one
small script for the revoke confirmation, no external resources.

Same operators as the device API (admin_auth.py): an admin client certificate, or a login form
that starts a session (cookie HttpOnly, Secure, SameSite=Strict). Every POST carries the
session's CSRF token, and a POST from another origin is refused. `_render_error` is this app's
one error mapping: an EstError becomes an HTML page with its status and sentence.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import cherrypy
from cryptography import x509
from cryptography.x509.oid import NameOID
from jinja2 import Environment, FileSystemLoader, select_autoescape

from appliance.admin_auth import SESSION_COOKIE, AdminAuth, OperatorSession
from appliance.clock import Clock
from appliance.crl import CrlPublisher
from appliance.devices import Device, Fleet, Statistics
from appliance.errors import BadRequest, EstError, Forbidden, MethodNotAllowed, Unauthorized
from appliance.ledger import DEVICE_STATES
from appliance.request_facts import client_certificate_pem
from appliance.revocation import REASONS, RevocationService

log = logging.getLogger(__name__)

DASHBOARD_PREFIX = "/dashboard"
TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
_WINDOW_DAYS = 14
_PER_PAGE = 25

# The page loads only our own stylesheet and script; the chart is inline SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Observer = Callable[[str, int, float, str], None]


@dataclass(frozen=True)
class _Row:
    record: Any
    state: str
    cn: str
    requester: str


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class Dashboard:
    def __init__(
        self,
        admin: AdminAuth,
        fleet: Fleet,
        revocation: RevocationService,
        crl: CrlPublisher,
        clock: Clock,
        *,
        appliance_name: str,
        ca_subject: str,
        observe: Observer | None = None,
    ) -> None:
        self._admin = admin
        self._fleet = fleet
        self._revocation = revocation
        self._crl = crl
        self._clock = clock
        self._observe = observe
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            auto_reload=False,
        )
        self._globals = {
            "prefix": DASHBOARD_PREFIX,
            "appliance_name": appliance_name,
            "ca_subject": ca_subject,
        }

    # -- pages --------------------------------------------------------------------------

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def index(self, q: str = "", state: str = "", page: str = "1", **params: str) -> bytes:
        def view() -> bytes:
            operator = self._required_operator()
            return self._dashboard(operator, q[:200], state, page, params)

        return self._handle("dashboard", view)

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def login(self, username: str = "", password: str = "", **_params: str) -> bytes:
        def view() -> bytes:
            method = cherrypy.request.method
            if method == "GET":
                if self._optional_operator() is not None:
                    raise _Redirect(f"{DASHBOARD_PREFIX}/")
                return self._render("login.html", operator=None)
            if method != "POST":
                raise MethodNotAllowed("use GET or POST", allow=("GET", "POST"))
            _same_origin()
            try:
                token, _session = self._admin.login(
                    username[:64], password[:1024], str(cherrypy.request.remote.ip or "-")
                )
            except Unauthorized:
                cherrypy.response.status = 401
                return self._render(
                    "login.html", operator=None, error="User name or password is wrong."
                )
            cookie = cherrypy.response.cookie
            cookie[SESSION_COOKIE] = token
            morsel = cookie[SESSION_COOKIE]
            morsel["path"] = DASHBOARD_PREFIX
            morsel["httponly"] = True
            morsel["secure"] = True
            morsel["samesite"] = "Strict"
            raise _Redirect(f"{DASHBOARD_PREFIX}/")

        return self._handle("login", view)

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def logout(self, csrf: str = "", **_params: str) -> bytes:
        def view() -> bytes:
            operator = self._post(csrf)
            if operator.token:
                self._admin.logout(operator.token)
            cookie = cherrypy.response.cookie
            cookie[SESSION_COOKIE] = ""
            cookie[SESSION_COOKIE]["path"] = DASHBOARD_PREFIX
            cookie[SESSION_COOKIE]["max-age"] = 0
            raise _Redirect(f"{DASHBOARD_PREFIX}/login")

        return self._handle("logout", view)

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def revoke(
        self,
        csrf: str = "",
        subject: str = "",
        reason: str = "keyCompromise",
        confirm: str = "",
        **_params: str,
    ) -> bytes:
        def view() -> bytes:
            operator = self._post(csrf)
            if not subject:
                raise BadRequest("name the pump to revoke")
            if confirm != "yes":
                # The second step, for browsers without the script's dialog.
                return self._render(
                    "confirm.html",
                    operator=operator,
                    subject=subject,
                    reason=reason,
                    reasons=list(REASONS),
                )
            result = self._revocation.revoke_subject(subject, reason, str(operator.identity))
            count = len(result.revoked)
            notice = (
                f"{subject} revoked ({count} certificate{'s' if count != 1 else ''}, "
                f"reason {reason}); CRL #{result.crl.number} published."
                if result.crl
                else f"{subject} was already revoked."
            )
            raise _Redirect(f"{DASHBOARD_PREFIX}/?notice={quote(notice)}")

        return self._handle("revoke", view)

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def device(self, subject: str = "", **_params: str) -> bytes:
        def view() -> bytes:
            operator = self._required_operator()
            return self._render(
                "device.html",
                operator=operator,
                subject=subject,
                history=self._fleet.history(subject[:300]),
            )

        return self._handle("device", view)

    # -- plumbing -----------------------------------------------------------------------

    def _handle(self, name: str, view: Callable[[], bytes]) -> bytes:
        started = time.perf_counter()
        request_id = secrets.token_hex(6)
        headers = cherrypy.response.headers
        headers.update(SECURITY_HEADERS)
        headers["X-Request-Id"] = request_id
        status, reason = 200, "-"
        try:
            body = view()
            headers["Content-Type"] = "text/html; charset=utf-8"
            return body
        except _Redirect as redirect:
            status = 303
            cherrypy.response.status = 303
            headers["Location"] = redirect.location
            return b""
        except EstError as error:
            status, reason = error.status, error.reason
            if isinstance(error, Unauthorized) and cherrypy.request.method == "GET":
                status = 303
                cherrypy.response.status = 303
                headers["Location"] = f"{DASHBOARD_PREFIX}/login"
                return b""
            return self._render_error(error)
        except Exception:
            log.exception("event=internal_error request_id=%s", request_id)
            status, reason = 500, "internal"
            cherrypy.response.status = 500
            headers["Content-Type"] = "text/plain; charset=utf-8"
            return f"internal error; request id {request_id} is in the appliance's log\n".encode()
        finally:
            seconds = time.perf_counter() - started
            log.info(
                "event=dashboard_request id=%s peer=%s method=%s page=%s status=%s ms=%.1f",
                request_id,
                cherrypy.request.remote.ip,
                cherrypy.request.method,
                name,
                status,
                seconds * 1000,
            )
            if self._observe is not None:
                self._observe("dashboard", status, seconds, reason)

    def _optional_operator(self) -> OperatorSession | None:
        identity = self._admin.certificate(client_certificate_pem())
        if identity is not None:
            return self._admin.certificate_session(identity)
        cookie = cherrypy.request.cookie.get(SESSION_COOKIE)
        return self._admin.session(cookie.value if cookie is not None else None)

    def _required_operator(self) -> OperatorSession:
        operator = self._optional_operator()
        if operator is None:
            raise Unauthorized("sign in first")
        return operator

    def _post(self, csrf: str) -> OperatorSession:
        if cherrypy.request.method != "POST":
            raise MethodNotAllowed("use POST", allow=("POST",))
        _same_origin()
        operator = self._required_operator()
        if not self._admin.csrf_ok(operator, csrf):
            raise Forbidden("the form has expired or did not come from this dashboard; reload it")
        return operator

    def _render(self, template: str, **values: Any) -> bytes:
        context = {**self._globals, "now": self._clock(), **values}
        return self._env.get_template(template).render(context).encode("utf-8")

    def _render_error(self, error: EstError) -> bytes:
        cherrypy.response.status = error.status
        cherrypy.response.headers.update(error.headers())
        cherrypy.response.headers.pop("WWW-Authenticate", None)
        cherrypy.response.headers["Content-Type"] = "text/html; charset=utf-8"
        return self._render("error.html", operator=None, status=error.status, message=error.message)

    def _dashboard(
        self,
        operator: OperatorSession,
        q: str,
        state: str,
        page_text: str,
        params: dict[str, str],
    ) -> bytes:
        if state and state not in DEVICE_STATES:
            raise BadRequest(f"state must be one of {', '.join(DEVICE_STATES)}")
        page_number = int(page_text) if page_text.isdigit() and 0 < int(page_text) < 10**6 else 1
        page = self._fleet.devices(
            text=q, state=state or None, page=page_number, per_page=_PER_PAGE
        )
        stats = self._fleet.statistics(window_days=_WINDOW_DAYS, bucket="day")
        rows = [_row(d) for d in page.devices]
        return self._render(
            "dashboard.html",
            operator=operator,
            notice=params.get("notice", "")[:300],
            stats=stats,
            enrolled=stats.devices["valid"] + stats.devices["expiring"],
            failures_total=sum(stats.failures_by_reason.values()),
            window_days=_WINDOW_DAYS,
            crl=self._crl.current(),
            chart=_chart(stats, self._clock()),
            page=_Page(rows, page.total, page.page),
            pages=max(1, -(-page.total // _PER_PAGE)),
            q=q,
            state=state,
            states=DEVICE_STATES,
            recent=self._fleet.recent_enrollments(8),
            failures=self._fleet.recent_failures(8),
            reasons=list(REASONS),
        )


@dataclass(frozen=True)
class _Page:
    devices: list[_Row]
    total: int
    page: int


def _row(device: Device) -> _Row:
    record = device.record
    try:
        names = x509.load_der_x509_certificate(record.der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
        cn = str(names[0].value) if names else record.subject
    except ValueError:
        cn = record.subject
    requester = record.requester.split(",", 1)[0].removeprefix("CN=")
    return _Row(record, device.state, cn, requester)


def _chart(stats: Statistics, now: dt.datetime) -> dict[str, Any]:
    """Bars for the last days: enrollments (blue) and failures (red) side by side."""
    width, height, left, bottom, top = 1100, 180, 34, 22, 8
    days = [(now - dt.timedelta(days=i)).date() for i in range(_WINDOW_DAYS - 1, -1, -1)]
    ok = dict(stats.enrollments)
    bad: dict[str, int] = {}
    for bucket, _reason, count in stats.failures:
        bad[bucket] = bad.get(bucket, 0) + count
    peak = max([1, *ok.values(), *bad.values()])
    step = 1 if peak <= 4 else 10 ** max(0, len(str(peak)) - 1)
    top_value = -(-peak // step) * step if peak > 4 else 4
    plot = height - bottom - top
    slot = (width - left - 10) / len(days)
    bars = []
    for i, day in enumerate(days):
        key = day.isoformat()
        n_ok, n_bad = ok.get(key, 0), bad.get(key, 0)
        h_ok, h_bad = plot * n_ok / top_value, plot * n_bad / top_value
        x = left + i * slot + slot * 0.15
        bars.append(
            {
                "x": round(x, 1),
                "w": round(slot * 0.45, 1),
                "w2": round(slot * 0.2, 1),
                "ok": n_ok,
                "bad": n_bad,
                "ok_y": round(top + plot - h_ok, 1),
                "ok_h": round(h_ok, 1),
                "bad_y": round(top + plot - h_bad, 1),
                "bad_h": round(h_bad, 1),
                "label": key,
                "short": day.strftime("%d %b"),
                "show_label": i % 2 == len(days) % 2 or len(days) <= 8,
            }
        )
    grid = []
    for k in range(5):
        value = top_value * k / 4
        y = top + plot - plot * k / 4
        grid.append((round(y, 1), f"{value:g}"))
    return {"width": width, "height": height, "left": left, "bars": bars, "grid": grid}


def _same_origin() -> None:
    """Refuse a POST whose Origin (sent by every current browser on POST) is another site."""
    origin = cherrypy.request.headers.get("Origin")
    if origin is None or origin == "null":
        return
    host = cherrypy.request.headers.get("Host", "")
    if urlsplit(origin).netloc != host:
        raise Forbidden("this form must be sent from the appliance's own dashboard")


def dashboard_config() -> dict[str, dict[str, object]]:
    """CherryPy app config for the dashboard (static files from appliance/static)."""
    return {
        "/": {
            "request.show_tracebacks": False,
            "tools.trailing_slash.on": True,
            "tools.encode.on": False,
        },
        "/static": {
            "tools.staticdir.on": True,
            "tools.staticdir.dir": str(STATIC),
            "tools.expires.on": True,
            "tools.expires.secs": 300,
        },
    }
