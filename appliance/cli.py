"""`est-appliance`: a thin command line over the library."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from appliance import __version__, audit
from appliance.approvals import ApprovalGate
from appliance.cli_lifecycle import with_lifecycle_commands
from appliance.cli_passwords import add_password_arguments, change_password
from appliance.clock import utc_now
from appliance.config import Config, load_config
from appliance.errors import ApplianceError
from appliance.ledger import ApprovalState, IssuanceRecord
from appliance.ledger_factory import describe, open_ledger, target_version, upgrade_ledger
from appliance.ledger_transfer import export_ledger, import_ledger
from appliance.logs import configure_logging
from appliance.pki_init import create_pki, issue_ra
from appliance.server import build_appliance, serve

log = logging.getLogger("appliance")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ApplianceError as exc:
        print(f"est-appliance: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="est-appliance",
        description="EST (RFC 7030) certificate appliance for infusion-pump Wi-Fi certificates.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            type=Path,
            default=Path("config.yaml"),
            help="path to config.yaml (default: ./config.yaml)",
        )
        return p

    p = command("init", "create the CA, the server certificate and the IQE RA certificate")
    p.add_argument("--force", action="store_true", help="replace an existing CA (dangerous)")
    p.add_argument(
        "--encrypt-ca-key",
        action="store_true",
        help="encrypt ca-key.pem with the passphrase from pki.ca_key_passphrase_file or "
        "pki.ca_key_credential",
    )
    p.set_defaults(func=_init)

    _add_issue_ra(command)

    p = command("serve", "serve EST over HTTPS until stopped")
    p.add_argument("--port", type=int, help="override server.port (0 picks a free port)")
    p.add_argument("--host", help="override server.host")
    p.set_defaults(func=_serve)

    p = command("check", "validate config.yaml and the PKI files without serving")
    p.add_argument(
        "--config-only",
        action="store_true",
        help="validate config.yaml alone, before the PKI exists (what a deployment tool runs "
        "on a rendered file before installing it)",
    )
    p.set_defaults(func=_check)

    p = command("passwd", "set a bootstrap user's password (stored as an Argon2id hash)")
    add_password_arguments(p, who="user")
    p.set_defaults(func=_passwd)

    p = command("list", "list issued certificates, newest first")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(func=_list)

    # RFC 7030 §4.2.3 manual approval: the operator's side of the 202 flow.
    p = command("pending", "list enrollment requests waiting for approval, oldest first")
    p.add_argument("--all", action="store_true", help="also list approved and rejected requests")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(func=_pending)

    p = command("approve", "approve a pending request; the client gets its certificate on retry")
    p.add_argument("id", type=int)
    p.set_defaults(func=_decide, approve=True)

    p = command("reject", "reject a pending request; the client gets 403 on retry")
    p.add_argument("id", type=int)
    p.set_defaults(func=_decide, approve=False)

    p = command("db", "ledger database: upgrade the schema, export or import its contents")
    db = p.add_subparsers(dest="db_command", required=True)

    def db_command(name: str, help_text: str) -> argparse.ArgumentParser:
        d = db.add_parser(name, help=help_text, description=help_text)
        # `db upgrade --config X` as well as `db --config X upgrade`.
        d.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config.yaml")
        return d

    d = db_command("upgrade", "create or migrate the ledger schema (once per cluster)")
    d.set_defaults(func=_db_upgrade)
    d = db_command("export", "write every certificate and request to FILE (JSON lines)")
    d.add_argument("file", type=Path)
    d.set_defaults(func=_db_export)
    d = db_command("import", "load an export into the configured, empty ledger")
    d.add_argument("file", type=Path)
    d.set_defaults(func=_db_import)

    # Revocation, CRL, expiring, backup/restore, operators (issue 6).
    return with_lifecycle_commands(parser, command)


def _init(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    created = create_pki(config.pki, utc_now, force=args.force, encrypt_ca_key=args.encrypt_ca_key)
    for path in created.files:
        print(f"wrote {path}")
    print(f"CA:     {created.ca.subject.rfc4514_string()}")
    print(f"        SHA-256 {created.ca.fingerprint(hashes.SHA256()).hex(':').upper()}")
    print(f"server: {created.server.subject.rfc4514_string()}")
    print(
        f"RA:     {created.ra.subject.rfc4514_string()} (valid until "
        f"{created.ra.not_valid_after_utc:%Y-%m-%d})"
    )
    print("Hand ca-cert.pem, iqe-ra-cert.pem and iqe-ra-key.pem to the IQE gateway team.")
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    server = config.server
    if args.port is not None:
        server = dataclasses.replace(server, port=args.port)
    if args.host is not None:
        server = dataclasses.replace(server, host=args.host)
    config = dataclasses.replace(config, server=server)
    configure_logging(config.logging.level)
    serve(config)
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.config_only:
        print(f"{config.source}: configuration is valid (PKI not checked)")
        return 0
    appliance = build_appliance(config)
    appliance.ledger.close()
    print(f"{config.source}: configuration and PKI are valid")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    return change_password(args, section="auth", who="user")


def _list(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with closing(open_ledger(config.ledger)) as ledger:
        records = ledger.certificates(limit=args.limit)
    if args.json:
        for r in records:
            print(
                json.dumps(
                    {
                        "serial": r.serial,
                        "subject": r.subject,
                        "sans": list(r.sans),
                        "not_before": r.not_before.isoformat(),
                        "not_after": r.not_after.isoformat(),
                        "requester": r.requester,
                        "auth_method": r.auth_method,
                        "endpoint": r.endpoint,
                        "issued_at": r.issued_at.isoformat(),
                        "status": r.status,
                        "replaces": r.replaces,
                        "profile": r.profile,
                    }
                )
            )
        return 0
    rows = [
        ("SERIAL", "SUBJECT", "SANS", "NOT AFTER", "STATUS", "REQUESTER", "ENDPOINT", "ISSUED AT")
    ]
    rows += [
        (
            r.serial,
            r.subject,
            ",".join(r.sans) or "-",
            f"{r.not_after:%Y-%m-%d}",
            r.status,
            r.requester,
            r.endpoint,
            f"{r.issued_at:%Y-%m-%d %H:%M:%S}",
        )
        for r in records
    ]
    _print_table(rows)
    if not records:
        print("(no certificates issued yet)")
    return 0


def _pending(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with closing(open_ledger(config.ledger)) as ledger:
        approvals = ledger.approvals(None if args.all else ApprovalState.PENDING)
    if args.json:
        for a in approvals:
            print(
                json.dumps(
                    {
                        "id": a.id,
                        "state": a.state.value,
                        "profile": a.profile,
                        "operation": a.operation,
                        "subject": a.subject,
                        "requester": a.requester,
                        "created": a.created.isoformat(),
                        "decided": a.decided.isoformat() if a.decided else None,
                        "serial": a.serial,
                    }
                )
            )
        return 0
    rows = [("ID", "STATE", "LABEL", "OPERATION", "SUBJECT", "REQUESTER", "CREATED")]
    rows += [
        (
            str(a.id),
            a.state.value,
            a.profile or "-",
            a.operation,
            a.subject,
            a.requester,
            f"{a.created:%Y-%m-%d %H:%M:%S}",
        )
        for a in approvals
    ]
    _print_table(rows)
    if not approvals:
        print("(no requests waiting for approval)")
    return 0


def _decide(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ledger = open_ledger(config.ledger)
    try:
        approval = ApprovalGate(ledger, utc_now).decide(args.id, approve=args.approve)
    except ValueError as exc:
        print(f"est-appliance: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    verb = "approved" if args.approve else "rejected"
    _audit(config).record(
        audit.APPROVED if args.approve else audit.REJECTED,
        request_id=approval.id,
        subject=approval.subject,
        requester=approval.requester,
        profile=approval.profile or "default",
        by=f"operator:{getpass.getuser()}",
        address="cli",
    )
    print(
        f"request {approval.id} ({approval.subject}) {verb}; the client gets "
        f"{'its certificate' if args.approve else '403'} when it sends the request again"
    )
    return 0


def _add_issue_ra(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("issue-ra", "issue a new RA certificate and key from the existing CA (RA rotation)")
    p.add_argument("--cert", type=Path, required=True, help="where to write the certificate")
    p.add_argument("--key", type=Path, required=True, help="where to write its key (0600)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_issue_ra)


def _issue_ra(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    issued = issue_ra(config.pki, utc_now, args.cert, args.key, force=args.force)
    cert = issued.cert
    serial = format(cert.serial_number, "x")
    operator = f"operator:{getpass.getuser()}"
    # In the ledger like every certificate the CA signs, so it can be listed and revoked.
    ledger = open_ledger(config.ledger)
    try:
        ledger.record_issuance(
            IssuanceRecord(
                serial=serial,
                subject=cert.subject.rfc4514_string(),
                sans=(),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                requester=operator,
                auth_method="operator",
                endpoint="issue-ra",
                issued_at=utc_now(),
                der=cert.public_bytes(Encoding.DER),
            )
        )
    finally:
        ledger.close()
    _audit(config).record(
        audit.ISSUED,
        serial=serial,
        subject=cert.subject.rfc4514_string(),
        operation="issue-ra",
        by=operator,
        address="cli",
    )
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    print(f"wrote {issued.cert_path}")
    print(f"wrote {issued.key_path}")
    print(f"RA:     {cert.subject.rfc4514_string()} serial {serial}")
    print(f"        SHA-256 {fingerprint} (for auth.ra_scopes.<name>.fingerprint)")
    print(f"        valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    print("Hand both files to the IQE gateway team; revoke the old RA once the gateway uses this.")
    return 0


def _audit(config: Config) -> audit.AuditLog:
    """The audit log for a one-shot command (the server configures its own)."""
    return audit.AuditLog(config.audit.path, utc_now)


def _db_upgrade(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    before, after = upgrade_ledger(config.ledger)
    where = describe(config.ledger)
    if before == after:
        print(f"{where}: schema is at version {after}; nothing to do")
    else:
        print(f"{where}: schema upgraded from version {before} to {after}")
    if after < target_version():  # pragma: no cover - upgrade always reaches the target
        return 1
    return 0


def _db_export(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with closing(open_ledger(config.ledger)) as ledger:
        summary = export_ledger(ledger, args.file)
    print(
        f"exported {summary.certificates} certificates and {summary.approvals} requests "
        f"(CRL number {summary.crl_number}) from {describe(config.ledger)} to {args.file}"
    )
    return 0


def _db_import(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with closing(open_ledger(config.ledger)) as ledger:
        summary = import_ledger(ledger, args.file)
    print(
        f"imported {summary.certificates} certificates and {summary.approvals} requests "
        f"(CRL number {summary.crl_number}) into {describe(config.ledger)}; counts and "
        "serials match the export"
    )
    return 0


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


if __name__ == "__main__":
    sys.exit(main())
