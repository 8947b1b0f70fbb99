"""`python -m bench.inproc`: CPU per keep-alive enrollment of the appliance's Python, no sockets.

The full benchmark (`python -m bench`) measures the appliance as the gateways see it, and on a
shared 2-core machine its rates move by 10-20 % between runs with the load of other sessions.
A change that removes 3 % of the per-request work drowns in that. This measures the same
request path with the noise taken out: one process, one thread, the appliance's WSGI
application called exactly as cheroot calls it (the RA's verified client certificate in the
environ, as the TLS adapter puts it there), against a real lab made by `est-appliance init`,
with the SQLite ledger, the audit file, metrics and the INFO log all on. It reports the process
CPU time (`time.process_time`, so the ledger's fsync waits do not count) per enrollment, best
of several rounds. Not measured here: TLS and cheroot's HTTP parsing (about 15 % of a worker's
time in the py-spy profile), and the cost of many threads sharing the GIL.
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.config import load_config
from appliance.est_wsgi import WsgiApp
from appliance.logs import configure_logging
from appliance.server import build_appliance, configure_cherrypy, wsgi_application
from bench.csrs import pump_csrs
from bench.lab import make_lab

ENROLL_PATH = "/.well-known/est/simpleenroll"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    parser.add_argument("--enrollments", type=int, default=400, help="per round (default 400)")
    parser.add_argument("--rounds", type=int, default=5, help="best of N rounds (default 5)")
    parser.add_argument("--algorithm", default="rsa-2048", choices=("rsa-2048", "ec-p256"))
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="est-inproc-"))
    try:
        best = _measure(folder, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the lab holds a CA key
    print(
        f"in-process: {best * 1000:.3f} ms CPU per RA simpleenroll ({args.algorithm} CA, best "
        f"of {args.rounds} rounds of {args.enrollments}; WSGI app + service + ledger)"
    )
    return 0


def _measure(folder: Path, args: argparse.Namespace) -> float:
    """Best CPU seconds per enrollment over the rounds."""
    lab = make_lab(folder / args.algorithm, args.algorithm, workers=1, thread_pool=0)
    config = load_config(lab.config)
    # The served appliance's logging (appliance/logs.py), into a file instead of stderr.
    log_file = (folder / "appliance.log").open("a", encoding="utf-8")
    configure_logging(config.logging.level, log_file)
    appliance = build_appliance(config)
    configure_cherrypy(appliance)
    app = wsgi_application(appliance)
    ra_pem = lab.path("iqe-ra-cert.pem").read_text(encoding="ascii")
    csrs = pump_csrs(args.enrollments * args.rounds, keys=8)

    best = float("inf")
    for round_ in range(args.rounds):
        batch = csrs[round_ * args.enrollments : (round_ + 1) * args.enrollments]
        cpu = time.process_time()
        for csr in batch:
            _enroll(app, ra_pem, csr)
        best = min(best, (time.process_time() - cpu) / len(batch))
    appliance.ledger.close()
    logging.shutdown()
    log_file.close()
    return best


def _enroll(app: WsgiApp, ra_pem: str, csr: bytes) -> None:
    status: list[str] = []

    def start_response(code: str, _headers: list[tuple[str, str]], _exc: Any = None) -> Any:
        status.append(code)
        return lambda _data: None

    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": ENROLL_PATH,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8443",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "CONTENT_TYPE": "application/pkcs10",
        "CONTENT_LENGTH": str(len(csr)),
        "HTTP_HOST": "127.0.0.1:8443",
        "ACTUAL_SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(csr),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "HTTPS": "on",
        "SSL_PROTOCOL": "TLSv1.3",
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_CERT": ra_pem,
    }
    body = b"".join(app(environ, start_response))
    if not status or not status[0].startswith("200") or body[:1] != b"\x30":
        raise RuntimeError(f"enrollment failed: {status} {body[:200]!r}")


if __name__ == "__main__":
    sys.exit(main())
