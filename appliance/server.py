"""Composition root: build every object from the config, configure TLS, mount, serve."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cherrypy

from appliance import audit
from appliance.auth import PasswordAuth, RaCertificateAuth
from appliance.cherrypy_pages import Root, error_page
from appliance.clock import Clock, utc_now
from appliance.config import Config
from appliance.errors import PkiError
from appliance.est_wsgi import ApplianceWsgi
from appliance.issuer import CaMaterial, public_keys_match
from appliance.ledger import Ledger
from appliance.ledger_factory import describe, open_ledger
from appliance.lifecycle import Lifecycle, build_lifecycle
from appliance.lockout import LoginGuard
from appliance.metrics import enable_multiprocess
from appliance.pem_files import check_private_key_mode, load_certificate, load_private_key
from appliance.profiles import build_profiles
from appliance.ra_scope import RaScopes
from appliance.service import EnrollmentService
from appliance.tls import server_context
from appliance.tls_adapter import register_adapter
from appliance.web import EST_PREFIX, EstApplication
from appliance.workers import effective_workers, prepare_http_server, serve_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Appliance:
    config: Config
    service: EnrollmentService
    web: EstApplication
    ledger: Ledger
    # Revocation, CRL, device API, dashboard, metrics (issue 6).
    lifecycle: Lifecycle | None = None


def build_appliance(config: Config, clock: Clock = utc_now) -> Appliance:
    """Load and check all material; raises PkiError naming the file on any problem."""
    ca = CaMaterial.load(config.pki, clock())
    check_server_material(config)
    ledger = open_ledger(config.ledger)
    audit.configure(audit.AuditLog(config.audit.path, clock)).close()
    service = EnrollmentService(
        build_profiles(config, ca, clock), ledger, clock, RaScopes(config.auth.ra_scopes)
    )
    lifecycle = build_lifecycle(config, ca, ledger, clock)
    web = EstApplication(
        service,
        # A revoked RA (or pump renewing with its certificate) is refused at once.
        RaCertificateAuth(config.auth.ra_fingerprints, revoked=lifecycle.is_revoked),
        PasswordAuth(
            config.auth.users,
            config.auth.realm,
            config.auth.credential_cache_seconds,
            guard=LoginGuard(ledger, config.auth.lockout, clock),
        ),
        max_body_bytes=config.server.max_body_bytes,
        observe=lifecycle.observe_est,
    )
    return Appliance(config=config, service=service, web=web, ledger=ledger, lifecycle=lifecycle)


def check_server_material(config: Config) -> None:
    pki = config.pki
    check_private_key_mode(pki.server_key)
    cert = load_certificate(pki.server_cert)
    if not public_keys_match(cert.public_key(), load_private_key(pki.server_key)):
        raise PkiError(f"{pki.server_key}: private key does not match {pki.server_cert}")


def configure_cherrypy(appliance: Appliance) -> None:
    config = appliance.config
    cherrypy.config.update(
        {
            "environment": "production",
            "engine.autoreload.on": False,
            "checker.on": False,
            "log.screen": False,
            "server.socket_host": config.server.host,
            "server.socket_port": config.server.port,
            "server.socket_timeout": config.server.socket_timeout,
            "server.thread_pool": config.server.thread_pool,
            # Backstop only: the handlers enforce the exact body limit with their own message.
            "server.max_request_body_size": config.server.max_body_bytes * 4,
            "server.max_request_header_size": config.server.max_header_bytes,
            # cheroot's built-in TLS, with the handshake moved off the acceptor thread and
            # per-request deadlines (see tls_adapter).
            "server.ssl_module": register_adapter(
                config.server.request_timeout, config.server.max_connections_per_ip
            ),
            "server.ssl_certificate": str(config.pki.server_cert),
            "server.ssl_private_key": str(config.pki.server_key),
            "server.ssl_context": server_context(config.pki),
        }
    )
    app_config = {
        "/": {
            # CherryPy would otherwise parse form bodies (turning base64 '+' into spaces) and
            # choke on multipart; EST handlers read the raw bytes.
            "request.body.processors": {},
            "request.show_tracebacks": False,
            "request.show_mismatched_params": False,
            "error_page.default": error_page,
            "tools.encode.on": False,
            "tools.trailing_slash.on": False,
        }
    }
    apps = [cherrypy.tree.mount(Root(), "", app_config)]
    if appliance.lifecycle is not None:
        apps += appliance.lifecycle.mount()
        appliance.lifecycle.subscribe(cherrypy.engine)
    prepare_http_server(config.server, wsgi_application(appliance), apps)


def wsgi_application(appliance: Appliance) -> ApplianceWsgi:
    """What cheroot calls for every request: EST directly, the rest through CherryPy."""
    return ApplianceWsgi(appliance.web, cherrypy.tree)


def serve(config: Config) -> None:
    if config.metrics.enabled:
        # Before anything counts and before workers fork (metrics.py: multiprocess mode).
        enable_multiprocess(config.metrics.dir)
    workers = effective_workers(config.server.workers)
    if workers > 1:
        # Several processes on the port: see workers.py and docs/PERFORMANCE.md.
        serve_workers(config, workers, build_appliance, configure_cherrypy, announce_listening)
        return
    appliance = build_appliance(config)
    configure_cherrypy(appliance)
    engine = cherrypy.engine
    if hasattr(engine, "signal_handler"):
        engine.signal_handler.subscribe()
    engine.start()
    host, port = cherrypy.server.bound_addr[:2]
    announce_listening(config, host, port)
    try:
        engine.block()
    finally:
        appliance.ledger.close()


def announce_listening(config: Config, host: str, port: int) -> None:
    """The one line tests and operators wait for: logged once, when every worker serves."""
    log.info(
        "event=listening url=https://%s:%s%s/ format=%s ledger=%s workers=%d",
        host if ":" not in host else f"[{host}]",
        port,
        EST_PREFIX,
        config.gateway.response_format,
        describe(config.ledger),
        effective_workers(config.server.workers),
    )
