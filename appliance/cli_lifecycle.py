"""`est-appliance` commands for the certificate lifecycle: revoke, crl, expiring, backup,
restore, admin-passwd. Thin: each builds what it needs from config.yaml and calls the library."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from appliance.auth import hash_password
from appliance.backup import backup, restore
from appliance.cli_passwords import add_password_arguments, change_password
from appliance.clock import utc_now
from appliance.config import Config, load_config
from appliance.crl import CrlPublisher
from appliance.devices import Device, Fleet
from appliance.issuer import CaMaterial
from appliance.ledger import Ledger
from appliance.ledger_factory import open_ledger
from appliance.pem_files import load_certificate
from appliance.revocation import REASONS, RevocationService
from appliance.users_file import set_user_hash

Command = Callable[[str, str], argparse.ArgumentParser]


def with_lifecycle_commands(
    parser: argparse.ArgumentParser, command: Command
) -> argparse.ArgumentParser:
    p = command("revoke", "revoke a certificate by serial, or every certificate of a pump")
    p.add_argument("serial", nargs="?", help="certificate serial (hex; colons allowed)")
    p.add_argument("--subject", help="the pump's CN (e.g. NPPR001) or full subject (CN=...)")
    p.add_argument(
        "--cert",
        type=Path,
        help="a PEM certificate this CA signed outside EST (an operator's, one made by hand)",
    )
    p.add_argument(
        "--reason",
        default="unspecified",
        help=f"RFC 5280 reason: {', '.join(REASONS)} (default: unspecified)",
    )
    p.set_defaults(func=_revoke)

    p = command("crl", "sign and publish a new CRL now, and print what it lists")
    p.set_defaults(func=_crl)

    p = command("expiring", "list devices whose certificate expires within N days")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(func=_expiring)

    p = command("backup", "copy the ledger (online, consistent) and the PKI into DIR")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_backup)

    p = command("restore", "restore the ledger and the PKI from DIR (appliance stopped)")
    p.add_argument("dir", type=Path)
    p.add_argument("--force", action="store_true", help="replace an existing ledger and CA")
    p.set_defaults(func=_restore)

    p = command("admin-passwd", "set an operator's password for the dashboard and device API")
    add_password_arguments(p, who="operator")
    p.set_defaults(func=_admin_passwd)
    return parser


def _services(config: Config) -> tuple[Ledger, CrlPublisher, RevocationService]:
    ca = CaMaterial.load(config.pki, utc_now())
    ledger = open_ledger(config.ledger)
    publisher = CrlPublisher(ca, ledger, config.crl, utc_now)

    def local() -> list[x509.Certificate]:
        return [load_certificate(p) for p in (config.pki.ra_cert, config.pki.server_cert)]

    return ledger, publisher, RevocationService(ledger, publisher, utc_now, local)


def _revoke(args: argparse.Namespace) -> int:
    if sum(bool(x) for x in (args.serial, args.subject, args.cert)) != 1:
        print("est-appliance: give one of SERIAL, --subject CN or --cert FILE", file=sys.stderr)
        return 2
    config = load_config(args.config)
    ledger, publisher, service = _services(config)
    actor = f"cli:{getpass.getuser()}"
    try:
        if args.serial:
            result = service.revoke_serial(args.serial, args.reason, actor)
        elif args.subject:
            result = service.revoke_subject(args.subject, args.reason, actor)
        else:
            result = service.revoke_certificate(
                load_certificate(args.cert),
                load_certificate(config.pki.ca_cert),
                args.reason,
                actor,
            )
    finally:
        ledger.close()
    for record in result.revoked:
        print(f"revoked {record.serial} {record.subject} ({args.reason})")
    for record in result.already:
        print(f"already revoked {record.serial} {record.subject}")
    if result.crl is not None:
        print(
            f"CRL #{result.crl.number} with {result.crl.entries} entries written to "
            f"{publisher.path}; reload it on the RADIUS servers"
        )
    return 0


def _crl(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ledger, publisher, _service = _services(config)
    try:
        published = publisher.publish("cli")
        listed = ledger.revocations(utc_now())
    finally:
        ledger.close()
    print(f"CRL #{published.number}: {publisher.path} and {config.crl.der_path}")
    print(f"  thisUpdate {published.this_update:%Y-%m-%d %H:%M:%S} UTC")
    print(f"  nextUpdate {published.next_update:%Y-%m-%d %H:%M:%S} UTC")
    for r in listed:
        print(f"  {r.serial}  {r.subject}  {r.reason}  {r.revoked_at:%Y-%m-%d %H:%M}")
    return 0


def _expiring(args: argparse.Namespace) -> int:
    if not 0 <= args.days <= 3650:
        print("est-appliance: --days must be between 0 and 3650", file=sys.stderr)
        return 2
    config = load_config(args.config)
    ledger = open_ledger(config.ledger)
    try:
        fleet = Fleet(ledger, utc_now, args.days)
        devices: list[Device] = []
        page = 1
        while True:
            result = fleet.devices(state="expiring", page=page, per_page=500)
            devices += result.devices
            if page * result.per_page >= result.total:
                break
            page += 1
    finally:
        ledger.close()
    now = utc_now()
    if args.json:
        for d in devices:
            r = d.record
            print(
                json.dumps(
                    {
                        "subject": r.subject,
                        "serial": r.serial,
                        "not_after": r.not_after.isoformat(),
                        "days_left": (r.not_after - now) // dt.timedelta(days=1),
                    }
                )
            )
        return 0
    if not devices:
        print(f"(no device certificate expires within {args.days} days)")
        return 0
    width = max(len(d.record.subject) for d in devices)
    print(f"{'SUBJECT'.ljust(width)}  {'SERIAL'.ljust(40)}  EXPIRES     DAYS LEFT")
    for d in devices:
        r = d.record
        left = (r.not_after - now) // dt.timedelta(days=1)
        print(f"{r.subject.ljust(width)}  {r.serial.ljust(40)}  {r.not_after:%Y-%m-%d}  {left}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    summary = backup(config, args.dir, utc_now())
    print(
        f"backed up the ledger ({summary.certificates} certificates) and "
        f"{len(summary.files) - 1} PKI/CRL files to {summary.folder}; it holds the CA key: "
        "keep it as safe as the appliance"
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    summary = restore(config, args.dir, force=args.force)
    print(
        f"restored the ledger ({summary.certificates} certificates) and the PKI from "
        f"{summary.folder}; run `est-appliance check` and start the appliance"
    )
    return 0


def _admin_passwd(args: argparse.Namespace) -> int:
    return change_password(args, section="admin", who="operator")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"New password for operator {args.user}: ")
        if getpass.getpass("Repeat it: ") != password:
            print("est-appliance: the passwords differ; nothing changed", file=sys.stderr)
            return 2
    if len(password) < 12:
        print("est-appliance: use at least 12 characters; nothing changed", file=sys.stderr)
        return 2
    set_user_hash(args.config, args.user, hash_password(password), section="admin")
    load_config(args.config)  # the result must validate (e.g. not also a bootstrap user)
    print(
        f"stored an Argon2id hash for operator {args.user} in {args.config}; restart the appliance"
    )
    return 0
