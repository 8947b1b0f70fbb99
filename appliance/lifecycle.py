"""Certificate lifecycle and operations, composed for the server: the CRL (file, GET /crl and
its periodic refresh), revocation, the device API, the dashboard, /metrics and the record of
enrollment failures. server.py builds one `Lifecycle` and mounts its apps."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import cherrypy
from cherrypy.process.plugins import Monitor
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from appliance.admin_auth import AdminAuth
from appliance.api import API_PREFIX, DeviceApi, json_error_page
from appliance.cherrypy_pages import error_page
from appliance.clock import Clock
from appliance.config import Config
from appliance.crl import CrlPublisher
from appliance.dashboard import DASHBOARD_PREFIX, Dashboard, dashboard_config
from appliance.devices import Fleet
from appliance.events import EventRecorder
from appliance.issuer import CaMaterial
from appliance.ledger import Ledger
from appliance.lockout import LoginGuard
from appliance.metrics import ENROLLING, Metrics, endpoint_label
from appliance.pem_files import load_certificate
from appliance.revocation import RevocationService
from appliance.web import RequestLog

log = logging.getLogger(__name__)

CRL_PATH = "/crl"
METRICS_PATH = "/metrics"
_EVENT_RETENTION = dt.timedelta(days=90)


@dataclass(frozen=True)
class Lifecycle:
    config: Config
    ledger: Ledger
    clock: Clock
    crl: CrlPublisher
    revocation: RevocationService
    fleet: Fleet
    events: EventRecorder
    metrics: Metrics
    admin: AdminAuth
    ca_subject: str

    def is_revoked(self, serial: str) -> bool:
        return self.ledger.revocation(serial) is not None

    def observe(self, endpoint: str, status: int, seconds: float, reason: str) -> None:
        if self.config.metrics.enabled:
            self.metrics.observe(endpoint, status, seconds, reason)

    def observe_est(
        self, entry: RequestLog, segments: tuple[str, ...], status: int, seconds: float
    ) -> None:
        """Every EST request: metrics; failed enrollments also go to the failure record."""
        endpoint = endpoint_label(segments)
        self.observe(endpoint, status, seconds, entry.code)
        if status >= 400 and endpoint in ENROLLING:
            self.events.failure(
                operation=endpoint,
                reason=entry.code if entry.code != "-" else "internal",
                detail=entry.reason,
                requester=entry.identity,
                peer=entry.peer,
            )

    def mount(self) -> list[Any]:
        """Mount /crl, /api, /dashboard and /metrics beside the EST app."""
        plain: dict[str, dict[str, object]] = {
            "/": {
                "request.body.processors": {},
                "request.show_tracebacks": False,
                "request.show_mismatched_params": False,
                "error_page.default": error_page,
                "tools.encode.on": False,
                "tools.trailing_slash.on": False,
            }
        }
        api_config = {"/": {**plain["/"], "error_page.default": json_error_page}}
        dashboard = Dashboard(
            self.admin,
            self.fleet,
            self.revocation,
            self.crl,
            self.clock,
            appliance_name=self.config.pki.organization,
            ca_subject=self.ca_subject,
            observe=self.observe,
        )
        apps = [
            cherrypy.tree.mount(CrlEndpoint(self), CRL_PATH, plain),
            cherrypy.tree.mount(
                DeviceApi(self.admin, self.fleet, self.ledger, self.revocation, self.observe),
                API_PREFIX,
                api_config,
            ),
            cherrypy.tree.mount(dashboard, DASHBOARD_PREFIX, dashboard_config()),
        ]
        if self.config.metrics.enabled:
            apps.append(cherrypy.tree.mount(MetricsEndpoint(self), METRICS_PATH, plain))
        return apps

    def subscribe(self, engine: Any) -> None:
        """In every serving process: keep the CRL fresh, store failures, tidy the ledger."""
        Monitor(
            engine,
            self.housekeeping,
            frequency=self.config.crl.check_interval_seconds,
            name="crl-and-housekeeping",
        ).subscribe()
        engine.subscribe("stop", self.events.stop)

    def housekeeping(self) -> None:
        self.crl.refresh_if_due()
        try:
            now = self.clock()
            self.ledger.prune_sessions(now)
            self.ledger.prune_events(now - _EVENT_RETENTION)
        except Exception:
            log.exception("event=housekeeping_failed")


def build_lifecycle(config: Config, ca: CaMaterial, ledger: Ledger, clock: Clock) -> Lifecycle:
    crl = CrlPublisher(ca, ledger, config.crl, clock)
    # A CRL exists before the appliance says it is listening: RADIUS servers load it at start.
    crl.current()

    def local_certificates() -> list[x509.Certificate]:
        return [load_certificate(p) for p in (config.pki.ra_cert, config.pki.server_cert)]

    revocation = RevocationService(ledger, crl, clock, local_certificates)
    fleet = Fleet(ledger, clock)
    ledger_revoked = ledger.revocation

    def revoked(serial: str) -> bool:
        return ledger_revoked(serial) is not None

    # The CSRF key of certificate-authenticated operators: the same in every worker, known
    # only to whoever holds the CA key.
    secret = hashlib.sha256(
        b"est-appliance admin csrf\0"
        + ca.key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    ).digest()
    admin = AdminAuth(
        config.admin,
        ledger,
        clock,
        revoked=revoked,
        secret=secret,
        guard=LoginGuard(ledger, config.auth.lockout, clock),
    )
    return Lifecycle(
        config=config,
        ledger=ledger,
        clock=clock,
        crl=crl,
        revocation=revocation,
        fleet=fleet,
        events=EventRecorder(ledger, clock),
        metrics=Metrics(fleet, crl, clock),
        admin=admin,
        ca_subject=ca.cert.subject.rfc4514_string(),
    )


class CrlEndpoint:
    """GET /crl: the current CRL, unauthenticated (RFC 5280 §4.2.1.13 distribution point).
    DER (application/pkix-crl, RFC 2585 §4.2) by default, PEM with ?format=pem."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def index(self, format: str = "der", **_params: str) -> bytes:
        started = time.perf_counter()
        response = cherrypy.response
        status = 200
        try:
            if cherrypy.request.method not in ("GET", "HEAD"):
                status = 405
                response.status = 405
                response.headers["Allow"] = "GET, HEAD"
                response.headers["Content-Type"] = "text/plain; charset=utf-8"
                return b"use GET to fetch the CRL\n"
            if format not in ("der", "pem"):
                status = 400
                response.status = 400
                response.headers["Content-Type"] = "text/plain; charset=utf-8"
                return b"format must be der or pem\n"
            published = self._lifecycle.crl.current()
            response.headers["Last-Modified"] = published.this_update.strftime(
                "%a, %d %b %Y %H:%M:%S GMT"
            )
            # Caches may keep it until the appliance would sign the next one anyway.
            response.headers["Expires"] = published.next_update.strftime(
                "%a, %d %b %Y %H:%M:%S GMT"
            )
            if format == "pem":
                response.headers["Content-Type"] = "application/x-pem-file"
                return published.pem
            response.headers["Content-Type"] = "application/pkix-crl"
            return published.der
        finally:
            self._lifecycle.observe("crl", status, time.perf_counter() - started, "-")


class MetricsEndpoint:
    """GET /metrics: Prometheus text format (metrics.py)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def index(self, **_params: str) -> bytes:
        body, content_type = self._lifecycle.metrics.render()
        cherrypy.response.headers["Content-Type"] = content_type
        cherrypy.response.headers["Cache-Control"] = "no-store"
        return body
