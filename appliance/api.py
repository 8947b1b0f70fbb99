"""The device API under /api/: JSON for operators' tools, authenticated as an operator
(admin_auth.py) — never with the RA, a pump or a bootstrap credential.

    GET  /api/devices?q=&state=&page=&per_page=&expiring_days=   one page of devices
    GET  /api/devices/<CN or subject>                            the device and its history
    POST /api/devices/<CN or subject>/revoke   {"reason": ...}   revoke all its certificates
    GET  /api/certificates/<serial>                              one certificate
    POST /api/certificates/<serial>/revoke     {"reason": ...}   revoke one certificate
    GET  /api/stats?expiring_days=&window_days=&bucket=day|hour  counts and time series

`_respond_error` is this app's one error mapping: an EstError becomes
{"error": {"status", "reason", "message"}}; anything else a logged 500 with the request id.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from urllib.parse import unquote

import cherrypy

from appliance.admin_auth import AdminAuth
from appliance.devices import Fleet, device_json
from appliance.errors import BadRequest, EstError, MethodNotAllowed, NotFound, UnsupportedMediaType
from appliance.identity import Identity
from appliance.ledger import Ledger
from appliance.request_facts import client_certificate_pem, header, read_body
from appliance.revocation import RevocationResult, RevocationService, normalize_serial

log = logging.getLogger(__name__)

API_PREFIX = "/api"
_MAX_BODY = 4096

Observer = Callable[[str, int, float, str], None]


class DeviceApi:
    def __init__(
        self,
        admin: AdminAuth,
        fleet: Fleet,
        ledger: Ledger,
        revocation: RevocationService,
        observe: Observer | None = None,
    ) -> None:
        self._admin = admin
        self._fleet = fleet
        self._ledger = ledger
        self._revocation = revocation
        self._observe = observe

    @cherrypy.expose  # type: ignore[untyped-decorator]
    def default(self, *segments: str, **params: str) -> bytes:
        request = cherrypy.request
        request_id = secrets.token_hex(6)
        started = time.perf_counter()
        cherrypy.response.headers["X-Request-Id"] = request_id
        cherrypy.response.headers["Cache-Control"] = "no-store"
        status, reason, who = 200, "-", "-"
        try:
            identity = self._admin.api(
                header("Authorization"), client_certificate_pem(), str(request.remote.ip)
            )
            who = str(identity)
            data = self._route(segments, params, identity)
            return _respond(200, data)
        except EstError as error:
            status, reason = error.status, error.reason
            return _respond_error(error)
        except Exception:
            log.exception("event=internal_error request_id=%s", request_id)
            status, reason = 500, "internal"
            return _respond(
                500,
                {
                    "error": {
                        "status": 500,
                        "reason": "internal",
                        "message": f"internal error; the operator can find request id "
                        f"{request_id} in the appliance's log",
                    }
                },
            )
        finally:
            seconds = time.perf_counter() - started
            log.info(
                "event=api_request id=%s peer=%s method=%s path=%s identity=%s status=%s ms=%.1f",
                request_id,
                request.remote.ip,
                request.method,
                "/".join(segments)[:120] or "-",
                who,
                status,
                seconds * 1000,
            )
            if self._observe is not None:
                self._observe("api", status, seconds, reason)

    def _route(self, segments: tuple[str, ...], params: dict[str, str], who: Identity) -> object:
        method = cherrypy.request.method
        parts = [unquote(s) for s in segments]
        if parts[:1] == ["devices"] and len(parts) == 1:
            _allow(method, "GET")
            return self._devices(params)
        if parts[:1] == ["devices"] and len(parts) == 2:
            _allow(method, "GET")
            return self._device(parts[1])
        if parts[:1] == ["devices"] and len(parts) == 3 and parts[2] == "revoke":
            _allow(method, "POST")
            reason = _reason_from_body()
            return _revocation_json(self._revocation.revoke_subject(parts[1], reason, str(who)))
        if parts[:1] == ["certificates"] and len(parts) == 2:
            _allow(method, "GET")
            return self._certificate(parts[1])
        if parts[:1] == ["certificates"] and len(parts) == 3 and parts[2] == "revoke":
            _allow(method, "POST")
            reason = _reason_from_body()
            return _revocation_json(self._revocation.revoke_serial(parts[1], reason, str(who)))
        if parts == ["stats"]:
            _allow(method, "GET")
            return self._stats(params)
        raise NotFound(
            f"nothing at {API_PREFIX}/{'/'.join(parts)[:80]}; see the README's device API table "
            "(devices, certificates, stats)"
        )

    def _devices(self, params: dict[str, str]) -> object:
        state = params.get("state") or None
        try:
            page = self._fleet.devices(
                text=params.get("q", "")[:200],
                state=state,
                page=_int(params, "page", 1, 1, 1_000_000),
                per_page=_int(params, "per_page", 50, 1, 500),
                expiring_days=_int(params, "expiring_days", self._fleet.expiring_days, 0, 3650),
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return {
            "devices": [device_json(d) for d in page.devices],
            "total": page.total,
            "page": page.page,
            "per_page": page.per_page,
        }

    def _device(self, name: str) -> object:
        records = self._revocation.certificates_of(name)
        if not records:
            raise NotFound(f"no device {name[:120]!r}; search with GET {API_PREFIX}/devices?q=")
        subject = max(records, key=lambda r: (r.issued_at, r.serial)).subject
        page = self._fleet.devices(text=name if "=" not in name else name.split("=", 1)[1])
        current = next((d for d in page.devices if d.record.subject == subject), None)
        return {
            "device": device_json(current) if current else None,
            "history": [
                {"at": h.at.isoformat(), "event": h.event, "serial": h.serial, "detail": h.detail}
                for h in self._fleet.history(subject)
            ],
        }

    def _certificate(self, serial: str) -> object:
        record = self._ledger.find(normalize_serial(serial))
        if record is None:
            raise NotFound(f"no certificate with serial {serial[:80]!r}")
        revocation = self._ledger.revocation(record.serial)
        return {
            "serial": record.serial,
            "subject": record.subject,
            "status": record.status,
            "not_before": record.not_before.isoformat(),
            "not_after": record.not_after.isoformat(),
            "issued_at": record.issued_at.isoformat(),
            "requester": record.requester,
            "endpoint": record.endpoint,
            "replaces": record.replaces,
            "revocation": None
            if revocation is None
            else {
                "at": revocation.revoked_at.isoformat(),
                "reason": revocation.reason,
                "by": revocation.revoked_by,
            },
        }

    def _stats(self, params: dict[str, str]) -> object:
        bucket = params.get("bucket", "day")
        if bucket not in ("day", "hour"):
            raise BadRequest(f"bucket must be day or hour, got {bucket[:20]!r}")
        stats = self._fleet.statistics(
            expiring_days=_int(params, "expiring_days", self._fleet.expiring_days, 0, 3650),
            window_days=_int(params, "window_days", 14, 1, 366),
            bucket=bucket,
        )
        return {
            "enrolled": stats.devices["valid"] + stats.devices["expiring"],
            "expiring": stats.devices["expiring"],
            "expiring_within_days": stats.expiring_days,
            "revoked": stats.devices["revoked"],
            "expired": stats.devices["expired"],
            "devices_by_state": stats.devices,
            "certificates_by_state": stats.certificates,
            "bucket": stats.bucket,
            "since": stats.since.isoformat(),
            "enrollments_over_time": [{"bucket": b, "count": c} for b, c in stats.enrollments],
            "failures_over_time": [
                {"bucket": b, "reason": r, "count": c} for b, r, c in stats.failures
            ],
            "failures_by_reason": stats.failures_by_reason,
        }


def _revocation_json(result: RevocationResult) -> object:
    return {
        "revoked": [r.serial for r in result.revoked],
        "already_revoked": [r.serial for r in result.already],
        "crl_number": result.crl.number if result.crl else None,
    }


def _reason_from_body() -> str:
    content_type = (header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(
            'send the revocation as Content-Type: application/json, e.g. {"reason": '
            '"keyCompromise"}'
        )
    try:
        body = json.loads(read_body(_MAX_BODY) or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest('the body is not JSON; send {"reason": "keyCompromise"}') from None
    reason = body.get("reason", "unspecified") if isinstance(body, dict) else None
    if not isinstance(reason, str):
        raise BadRequest('"reason" must be a string such as "keyCompromise"')
    return reason


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allow=(allowed,))


def _int(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, got {raw[:20]!r}")
    return int(raw)


def _respond(status: int, data: object) -> bytes:
    cherrypy.response.status = status
    cherrypy.response.headers["Content-Type"] = "application/json"
    return (json.dumps(data, indent=1) + "\n").encode()


def _respond_error(error: EstError) -> bytes:
    cherrypy.response.headers.update(error.headers())
    return _respond(
        error.status,
        {"error": {"status": error.status, "reason": error.reason, "message": error.message}},
    )


def json_error_page(status: str, message: str, traceback: str, version: str) -> str:
    """CherryPy's own errors under /api (oversized header...) as JSON too."""
    cherrypy.response.headers["Content-Type"] = "application/json"
    code = int(status.split(" ", 1)[0])
    text = "internal error; see the appliance's log" if code >= 500 else message
    return json.dumps({"error": {"status": code, "reason": "http", "message": text}}) + "\n"
