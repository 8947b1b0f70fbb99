"""`est-appliance db export / import`: move a ledger between backends (SQLite -> PostgreSQL
when a single appliance becomes a cluster) with nothing lost.

The file is JSON lines: a header with the counts, then one line per certificate and per
approval request, every field as the `Ledger` protocol returns it (DER and CSRs in base64,
times in ISO 8601 with their offset). Import only fills an empty ledger, then reads everything
back and compares counts and serials with the header before it reports success.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.ledger import Approval, ApprovalState, IssuanceRecord, Ledger

log = logging.getLogger(__name__)

FORMAT = "est-appliance-ledger"
FORMAT_VERSION = 1
_PAGE = 1000


class TransferError(ApplianceError):
    """The export file is unreadable, or the target ledger is not empty, or a check failed."""


@dataclass(frozen=True)
class TransferSummary:
    certificates: int
    approvals: int
    crl_number: int
    serials_sha256: str


def export_ledger(ledger: Ledger, path: Path, *, page: int = _PAGE) -> TransferSummary:
    """Write every certificate, approval and the CRL counter to `path` (mode 0600: the file
    holds the request history, though no private key)."""
    records = list(_all_certificates(ledger, page))
    approvals = list(ledger.approvals(None))
    summary = TransferSummary(
        certificates=len(records),
        approvals=len(approvals),
        crl_number=ledger.last_crl_number(),
        serials_sha256=_serials_digest(r.serial for r in records),
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        header = {"format": FORMAT, "version": FORMAT_VERSION, **summary.__dict__}
        out.write(json.dumps(header) + "\n")
        for record in records:
            out.write(json.dumps({"certificate": _record_json(record)}) + "\n")
        for approval in approvals:
            out.write(json.dumps({"approval": _approval_json(approval)}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    log.info(
        "event=ledger_exported file=%s certificates=%d approvals=%d",
        path,
        summary.certificates,
        summary.approvals,
    )
    return summary


def import_ledger(ledger: Ledger, path: Path, *, page: int = _PAGE) -> TransferSummary:
    """Load an export into an empty `ledger` and verify it; TransferError on any mismatch."""
    if ledger.count() or ledger.approvals(None):
        raise TransferError(
            "the target ledger already holds certificates or requests; import only into an "
            "empty ledger (a new database after `est-appliance db upgrade`)"
        )
    header, lines = _read(path)
    certificates = approvals = 0
    for number, item in lines:
        try:
            if "certificate" in item:
                ledger.record_issuance(_record_from(item["certificate"]))
                certificates += 1
            elif "approval" in item:
                ledger.restore_approval(_approval_from(item["approval"]))
                approvals += 1
            else:
                raise TransferError(f"{path}:{number}: neither a certificate nor an approval")
        except (KeyError, TypeError, ValueError) as exc:
            raise TransferError(f"{path}:{number}: malformed entry ({exc})") from None
    ledger.restore_crl_number(int(header["crl_number"]))
    loaded = TransferSummary(
        certificates=ledger.count(),
        approvals=len(ledger.approvals(None)),
        crl_number=ledger.last_crl_number(),
        serials_sha256=_serials_digest(r.serial for r in _all_certificates(ledger, page)),
    )
    expected = TransferSummary(
        certificates=int(header["certificates"]),
        approvals=int(header["approvals"]),
        crl_number=int(header["crl_number"]),
        serials_sha256=str(header["serials_sha256"]),
    )
    if (certificates, approvals) != (expected.certificates, expected.approvals):
        raise TransferError(
            f"{path}: the header announces {expected.certificates} certificates and "
            f"{expected.approvals} requests, the file holds {certificates} and {approvals}"
        )
    if loaded != expected:
        raise TransferError(f"the imported ledger does not match {path}: {loaded} != {expected}")
    log.info(
        "event=ledger_imported file=%s certificates=%d approvals=%d",
        path,
        loaded.certificates,
        loaded.approvals,
    )
    return loaded


def _all_certificates(ledger: Ledger, page: int) -> Iterator[IssuanceRecord]:
    offset = 0
    while True:
        records = ledger.certificates(limit=page, offset=offset)
        yield from records
        if len(records) < page:
            return
        offset += len(records)


def _serials_digest(serials: Iterator[str]) -> str:
    return hashlib.sha256("\n".join(sorted(serials)).encode()).hexdigest()


def _read(path: Path) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TransferError(f"{path}: cannot read the export: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TransferError(f"{path}: not an est-appliance ledger export (not text)") from None
    lines: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise TransferError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(item, dict):
            raise TransferError(f"{path}:{number}: not a JSON object")
        lines.append((number, item))
    if not lines or lines[0][1].get("format") != FORMAT:
        raise TransferError(f"{path}: not an est-appliance ledger export")
    header = lines[0][1]
    if header.get("version") != FORMAT_VERSION:
        raise TransferError(
            f"{path}: export format version {header.get('version')!r}; this appliance reads "
            f"version {FORMAT_VERSION}"
        )
    return header, lines[1:]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: object) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError(f"time without an offset: {value!r}")
    return parsed


def _record_json(r: IssuanceRecord) -> dict[str, object]:
    return {
        "serial": r.serial,
        "subject": r.subject,
        "sans": list(r.sans),
        "not_before": _iso(r.not_before),
        "not_after": _iso(r.not_after),
        "requester": r.requester,
        "auth_method": r.auth_method,
        "endpoint": r.endpoint,
        "issued_at": _iso(r.issued_at),
        "der": base64.b64encode(r.der).decode(),
        "status": r.status,
        "replaces": r.replaces,
        "profile": r.profile,
        "status_changed_at": _iso(r.status_changed_at),
    }


def _record_from(d: dict[str, Any]) -> IssuanceRecord:
    return IssuanceRecord(
        serial=str(d["serial"]),
        subject=str(d["subject"]),
        sans=tuple(str(s) for s in d["sans"]),
        not_before=_time(d["not_before"]),
        not_after=_time(d["not_after"]),
        requester=str(d["requester"]),
        auth_method=str(d["auth_method"]),
        endpoint=str(d["endpoint"]),
        issued_at=_time(d["issued_at"]),
        der=base64.b64decode(d["der"], validate=True),
        status=str(d["status"]),
        replaces=str(d["replaces"]) if d["replaces"] else None,
        profile=str(d["profile"]),
        status_changed_at=_time(d["status_changed_at"]) if d["status_changed_at"] else None,
    )


def _approval_json(a: Approval) -> dict[str, object]:
    return {
        "id": a.id,
        "fingerprint": a.fingerprint,
        "profile": a.profile,
        "operation": a.operation,
        "subject": a.subject,
        "requester": a.requester,
        "csr": base64.b64encode(a.csr_der).decode(),
        "state": a.state.value,
        "created": _iso(a.created),
        "decided": _iso(a.decided),
        "serial": a.serial,
    }


def _approval_from(d: dict[str, Any]) -> Approval:
    return Approval(
        id=int(d["id"]),
        fingerprint=str(d["fingerprint"]),
        profile=str(d["profile"]),
        operation=str(d["operation"]),
        subject=str(d["subject"]),
        requester=str(d["requester"]),
        csr_der=base64.b64decode(d["csr"], validate=True),
        state=ApprovalState(d["state"]),
        created=_time(d["created"]),
        decided=_time(d["decided"]) if d["decided"] else None,
        serial=str(d["serial"]) if d["serial"] else None,
    )
