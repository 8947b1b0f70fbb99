"""`iqe-sim`: the IQE gateway and pump simulator on the command line.

One function per subcommand (`_lab`, `_fleet`, `_enroll`, `_renew`, `_diagnose`, `_cacerts`,
`_tree`), each registered in `_parser`; a new subcommand is one more `add_parser` block
and function.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from simulator.appliance_process import ApplianceStartError
from simulator.diagnose import diagnose
from simulator.eapol import EapolError, authenticate
from simulator.fleet import DEFAULT_EAP_CONCURRENCY, run_fleet
from simulator.gateway import Approach, Gateway
from simulator.lab import LabSettings, run_lab
from simulator.pkcs7 import EXPECTED_FORMATS
from simulator.pki import KeyType, certs_pem, fingerprint, write_file
from simulator.pump import Pump
from simulator.radius import RadiusError, RadiusServer
from simulator.renewal import renew_pump
from simulator.report import Report, Summary
from simulator.troubleshooting import TREE, EnrollmentError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # SIGTERM ends a run like Ctrl-C does: every context manager stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result: int = args.func(args)
    except EnrollmentError as error:
        print(f"iqe-sim: {error}", file=sys.stderr)
        return 1
    except (RadiusError, EapolError, ApplianceStartError, ValueError, OSError) as exc:
        print(f"iqe-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iqe-sim: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    return result


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iqe-sim",
        description="IQE gateway and infusion-pump simulator for the EST appliance.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log key=value lines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "lab",
        help="the full local lab: PKI, appliance, FreeRADIUS, pumps by both approaches, report",
        description="Create a lab PKI in a scratch folder, start the appliance and FreeRADIUS "
        "on 127.0.0.1, enroll N pumps by each approach, prove each by EAP-TLS, run the "
        "negative controls, print the report and stop everything.",
    )
    p.add_argument("--pumps", type=int, default=10, help="pumps per approach (default 10)")
    p.add_argument("--approach", choices=["password", "ra", "both"], default="both")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--key-type", choices=[k.value for k in KeyType], default="rsa-2048")
    p.add_argument("--report", type=Path, help="write the JSON report to this file")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    p.set_defaults(func=_lab)

    p = sub.add_parser(
        "fleet",
        help="enroll many pumps at once against a running appliance, with a summary",
    )
    _gateway_options(p)
    p.add_argument("--pumps", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prefix", default="NPP", help="serial number prefix (default NPP)")
    p.add_argument("--key-type", choices=[k.value for k in KeyType], default="rsa-2048")
    p.add_argument(
        "--eap-tls",
        action="store_true",
        help="start a local FreeRADIUS trusting the EST CA and authenticate every pump",
    )
    p.add_argument(
        "--eap-concurrency",
        type=int,
        default=DEFAULT_EAP_CONCURRENCY,
        help=f"eapol_test processes at once (default {DEFAULT_EAP_CONCURRENCY})",
    )
    p.add_argument(
        "--radius-debug",
        action="store_true",
        help="run FreeRADIUS as -X (one thread, full trace in the log) instead of threaded",
    )
    p.add_argument("--workdir", type=Path, help="where pump bundles go (default: temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the pump bundles afterwards")
    p.add_argument("--report", type=Path, help="write the JSON report to this file")
    p.set_defaults(func=_fleet)

    p = sub.add_parser("enroll", help="enroll one pump and install its bundle in a folder")
    _gateway_options(p)
    p.add_argument("--serial", required=True, help="the pump's serial number, its CN")
    p.add_argument("--out", type=Path, required=True, help="folder for key.pem, cert.pem, ca.pem")
    p.add_argument("--key-type", choices=[k.value for k in KeyType], default="rsa-2048")
    p.add_argument(
        "--eap-tls",
        action="store_true",
        help="then authenticate it against a local FreeRADIUS trusting the EST CA",
    )
    p.set_defaults(func=_enroll)

    _add_renew_parser(sub)

    p = sub.add_parser(
        "diagnose",
        help="walk the troubleshooting tree against a live appliance",
        description="Check connection, TLS trust, /cacerts, credentials and one enrollment; "
        "name the first branch of the troubleshooting tree that fails and its fix.",
    )
    _gateway_options(p)
    p.add_argument("--no-enroll", action="store_true", help="stop after /cacerts")
    p.add_argument("--cn", default="iqe-sim-diagnose", help="CN of the test enrollment")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser(
        "cacerts", help="fetch /cacerts, print the CA fingerprints, optionally save them"
    )
    _gateway_options(p, credentials=False)
    p.add_argument("--out", type=Path, help="write the CA chain as PEM to this file")
    p.set_defaults(func=_cacerts)

    p = sub.add_parser("tree", help="print the troubleshooting tree")
    p.set_defaults(func=_tree)
    return parser


def _add_renew_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "renew",
        help="renew an enrolled pump with its current certificate (simplereenroll)",
        description="The pump in --pump (key.pem, cert.pem, ca.pem from `iqe-sim enroll`) "
        "authenticates with its current certificate, asks /simplereenroll for a new one with "
        "the same subject (RFC 7030 §4.2.2) and installs it; --rekey uses a new key.",
    )
    p.add_argument("--url", required=True, help="https://HOST:PORT of the appliance")
    p.add_argument("--pump", type=Path, required=True, help="the pump's bundle folder")
    p.add_argument("--ca-file", type=Path, help="CA to trust (default: the pump's ca.pem)")
    p.add_argument("--label", help="CA label (RFC 7030 §3.2.2), if the appliance uses one")
    p.add_argument("--format", choices=EXPECTED_FORMATS, default="auto")
    p.add_argument("--rekey", action="store_true", help="make a new key (rekey, not renew)")
    p.add_argument("--key-type", choices=[k.value for k in KeyType], default="rsa-2048")
    p.add_argument(
        "--eap-tls",
        action="store_true",
        help="then authenticate with the renewed certificate against a local FreeRADIUS",
    )
    p.set_defaults(func=_renew)


def _gateway_options(p: argparse.ArgumentParser, *, credentials: bool = True) -> None:
    p.add_argument("--url", required=True, help="https://HOST:PORT of the appliance")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--ca-file", type=Path, help="the only CA the gateway trusts")
    trust.add_argument(
        "--pin",
        help="SHA-256 fingerprint of the CA; without --ca-file and --pin the fetched CA is "
        "trusted and its fingerprint printed for you to compare",
    )
    p.add_argument(
        "--format",
        choices=EXPECTED_FORMATS,
        default="der",
        help="response encoding the gateway expects (default der, as the IQE gateway)",
    )
    if credentials:
        p.add_argument("--approach", choices=[a.value for a in Approach], default="password")
        p.add_argument("--user", default="iqe-gateway", help="password approach: user name")
        p.add_argument(
            "--password",
            default=os.environ.get("IQE_SIM_PASSWORD"),
            help="password approach: password (default: $IQE_SIM_PASSWORD)",
        )
        p.add_argument("--ra-cert", type=Path, help="RA approach: iqe-ra-cert.pem")
        p.add_argument("--ra-key", type=Path, help="RA approach: iqe-ra-key.pem")


def _gateway(args: argparse.Namespace) -> Gateway:
    approach = Approach(getattr(args, "approach", "password"))
    return Gateway(
        args.url,
        ca_file=args.ca_file,
        pin=args.pin,
        approach=approach,
        username=getattr(args, "user", None) if approach is Approach.PASSWORD else None,
        password=_password(args) if approach is Approach.PASSWORD else None,
        ra_cert=getattr(args, "ra_cert", None),
        ra_key=getattr(args, "ra_key", None),
        response_format=args.format,
    )


def _password(args: argparse.Namespace) -> str:
    password = getattr(args, "password", None)
    if password is None:
        raise ValueError("the password approach needs --password or $IQE_SIM_PASSWORD")
    return str(password)


def _announce_trust(gateway: Gateway) -> None:
    if gateway.ca_file is None:
        prints = gateway.pin_ca()
        note = "matches --pin" if gateway.pin else "compare it with `est-appliance init` output"
        print(f"trusting the CA from /cacerts, SHA-256 {prints[0]} ({note})")


class ProgressBar:
    """One line per phase on a terminal; quiet otherwise (logs and CI stay readable)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.phase = ""
        self.started = time.monotonic()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.phase, self.started = phase, time.monotonic()
        if not self.tty:
            if done == total:
                self.stream.write(f"  {phase:8} {done}/{total}\n")
            return
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"\r  {phase:8} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:5.1f}s"
        )
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _lab(args: argparse.Namespace) -> int:
    approaches = (
        (Approach.PASSWORD, Approach.RA) if args.approach == "both" else (Approach(args.approach),)
    )
    settings = LabSettings(
        pumps=args.pumps,
        approaches=approaches,
        concurrency=args.concurrency,
        key_type=KeyType(args.key_type),
        workdir=args.workdir,
        keep=args.keep or args.workdir is not None,
    )
    report = run_lab(settings, announce=print, progress=ProgressBar())
    return _finish(report, args.report)


def _fleet(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="iqe-fleet-"))
    started = time.perf_counter()
    try:
        with _gateway(args) as gateway:
            _announce_trust(gateway)
            radius = None
            if args.eap_tls:
                # Threaded, errors-only logging unless asked: -X serves one request at a time
                # and writes ~20 KB of trace per authentication.
                radius = RadiusServer(
                    gateway.trusted_ca_file(),
                    workdir / "radius",
                    debug=args.radius_debug,
                    threads=max(1, args.eap_concurrency),
                ).start()
                mode = "-X" if radius.debug else f"{radius.threads} threads"
                print(f"FreeRADIUS (EAP-TLS, {mode}) on {radius.host}:{radius.port}")
            try:
                outcomes = run_fleet(
                    gateway,
                    pumps=args.pumps,
                    concurrency=args.concurrency,
                    folder=workdir / "pumps",
                    prefix=args.prefix,
                    key_type=KeyType(args.key_type),
                    radius=radius,
                    eap_concurrency=args.eap_concurrency,
                    progress=ProgressBar(),
                )
            finally:
                if radius is not None:
                    radius.stop()
        report = Report(
            groups=[Summary(gateway.approach.value, outcomes)],
            eap_checked=args.eap_tls,
            seconds=time.perf_counter() - started,
            context={
                "appliance_url": gateway.base,
                "concurrency": args.concurrency,
                "eap_concurrency": args.eap_concurrency if args.eap_tls else None,
            },
        )
        if args.keep or args.workdir:
            report.context["workdir"] = str(workdir)
        return _finish(report, args.report)
    finally:
        if not (args.keep or args.workdir):
            shutil.rmtree(workdir, ignore_errors=True)


def _finish(report: Report, path: Path | None) -> int:
    print()
    print(report.render())
    if path is not None:
        report.write_json(path)
        print(f"JSON report: {path}")
    return 0 if report.ok else 1


def _enroll(args: argparse.Namespace) -> int:
    with _gateway(args) as gateway:
        _announce_trust(gateway)
        pump = Pump.create(args.serial, args.out, KeyType(args.key_type))
        ca_chain = gateway.fetch_cacerts()
        enrollment = gateway.enroll_pump(pump, ca_chain)
        print(
            f"{pump.serial}: certificate {enrollment.certificates[0].serial_number:x} installed in "
            f"{pump.folder} ({enrollment.seconds * 1000:.0f} ms)"
        )
        if not args.eap_tls:
            return 0
        with (
            tempfile.TemporaryDirectory(prefix="iqe-radius-") as tmp,
            RadiusServer(gateway.trusted_ca_file(), Path(tmp)) as radius,
        ):
            result = authenticate(pump, radius, explain=True)
        print(f"EAP-TLS: {result.summary()}")
        return 0 if result.accepted else 1


def _renew(args: argparse.Namespace) -> int:
    renewal = renew_pump(
        args.url,
        args.pump,
        ca_file=args.ca_file,
        rekey=args.rekey,
        key_type=KeyType(args.key_type),
        response_format=args.format,
        label=args.label,
    )
    pump = renewal.pump
    print(
        f"{pump.serial}: {'rekeyed' if renewal.rekeyed else 'renewed'}, certificate "
        f"{renewal.old_serial:x} replaced by {renewal.new_serial:x} in {pump.folder} "
        f"({renewal.seconds * 1000:.0f} ms)"
    )
    if not args.eap_tls:
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="iqe-radius-") as tmp,
        RadiusServer(args.ca_file or pump.ca_file, Path(tmp)) as radius,
    ):
        result = authenticate(pump, radius, explain=True)
    print(f"EAP-TLS: {result.summary()}")
    return 0 if result.accepted else 1


def _diagnose(args: argparse.Namespace) -> int:
    approach = Approach(args.approach)
    result = diagnose(
        args.url,
        ca_file=args.ca_file,
        pin=args.pin,
        approach=approach,
        username=args.user if approach is Approach.PASSWORD else None,
        password=_password(args) if approach is Approach.PASSWORD else None,
        ra_cert=args.ra_cert,
        ra_key=args.ra_key,
        response_format=args.format,
        enroll=not args.no_enroll,
        common_name=args.cn,
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.render())
    return 0 if result.ok else 1


def _cacerts(args: argparse.Namespace) -> int:
    gateway = Gateway(args.url, ca_file=args.ca_file, pin=args.pin, response_format=args.format)
    with gateway:
        _announce_trust(gateway)
        certs = gateway.fetch_cacerts()
    for cert in certs:
        print(f"{cert.subject.rfc4514_string()}\n  SHA-256 {fingerprint(cert)}")
    if args.out:
        write_file(args.out, certs_pem(certs))
        print(f"wrote {args.out}")
    return 0


def _tree(_args: argparse.Namespace) -> int:
    for number, node in enumerate(TREE, 1):
        print(f"{number}. [{node.branch.value}] {node.check}")
        print(f"   fails: {node.branch.title}")
        print(f"   fix:   {node.fix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
