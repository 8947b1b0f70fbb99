"""Live fuzz: >= 20,000 malformed requests against a running appliance (issue 7).

Zero 5xx answers, the appliance still enrolls afterwards, and its memory stays bounded.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.security.fuzz import FuzzRequest, RequestFactory
from tests.support import LAB_PASSWORD, LAB_USER, Lab, RunningAppliance, curl_ra_enroll, make_csr

REQUESTS = 20_000
WORKERS = 4


def _rss_kib(pid: int) -> int:
    """Resident memory of the appliance and any worker processes it forked."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class Client:
    """One keep-alive TLS connection that reconnects whenever the server closes it."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self._address = (host, port)
        self._context = context
        self._sock: ssl.SSLSocket | None = None

    def send(self, request: FuzzRequest) -> int:
        """The status code, or 0 when the server closed without an answer."""
        for _attempt in range(2):
            if self._sock is None:
                raw = socket.create_connection(self._address, timeout=30)
                self._sock = self._context.wrap_socket(raw, server_hostname="localhost")
            try:
                self._sock.sendall(request.raw)
                response = http.client.HTTPResponse(self._sock, method=_method(request.raw))
                response.begin()
                response.read()
                if response.will_close:
                    self.close()
                return response.status
            except (
                ConnectionError,
                ssl.SSLError,
                http.client.HTTPException,
                TimeoutError,
                OSError,
            ):
                self.close()
        return 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _is_fullcmc(raw: bytes) -> bool:
    target = raw.split(b" ", 2)[1] if raw.count(b" ") >= 2 else b""
    return target.split(b"?", 1)[0].rstrip(b"/").endswith(b"/fullcmc")


def _method(raw: bytes) -> str:
    return raw.split(b" ", 1)[0].decode("latin-1")


@pytest.mark.slow
def test_twenty_thousand_malformed_requests_get_no_5xx(
    appliance: RunningAppliance, lab: Lab, tmp_path: Path
) -> None:
    csr, _ = make_csr(tmp_path, "fuzz-pump")
    credentials = base64.b64encode(f"{LAB_USER}:{LAB_PASSWORD}".encode()).decode()
    host, port = appliance.base.removeprefix("https://").rsplit(":", 1)

    def context(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(lab.ca_cert))
        if with_cert:
            ctx.load_cert_chain(str(lab.ra_cert), str(lab.ra_key))
        return ctx

    def run(worker: int) -> tuple[Counter[int], list[bytes]]:
        factory = RequestFactory(7030 + worker, csr.read_bytes(), credentials)
        clients = {
            True: Client(host, int(port), context(True)),
            False: Client(host, int(port), context(False)),
        }
        statuses: Counter[int] = Counter()
        server_errors: list[bytes] = []
        for _ in range(REQUESTS // WORKERS):
            request = factory.next()
            status = clients[request.use_client_cert].send(request)
            statuses[status] += 1
            # RFC 7030 §4.3: fullcmc is not offered, and 501 is the defined answer for it.
            if status >= 500 and not (status == 501 and _is_fullcmc(request.raw)):
                server_errors.append(request.raw[:300])
        for client in clients.values():
            client.close()
        return statuses, server_errors

    # Warm up, then measure memory across the whole run.
    run(99)
    rss_before = _rss_kib(appliance.process.pid)
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(run, range(WORKERS)))
    rss_after = _rss_kib(appliance.process.pid)

    statuses: Counter[int] = Counter()
    errors: list[bytes] = []
    for counter, server_errors in results:
        statuses.update(counter)
        errors += server_errors
    print(f"fuzz statuses: {dict(sorted(statuses.items()))}; RSS {rss_before} -> {rss_after} KiB")
    assert sum(statuses.values()) >= REQUESTS
    assert not errors, f"{len(errors)} answers were 5xx; first request: {errors[0]!r}"
    # Most requests must have been answered (0 = closed without an answer, e.g. bad framing).
    assert statuses[0] < REQUESTS * 0.05, statuses
    assert {400, 401, 404, 405, 415} <= set(statuses), statuses
    assert rss_after - rss_before < 64 * 1024, "appliance memory grew by more than 64 MiB"
    appliance.assert_alive()
    status, _h, _b = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr)
    assert status == 200, "the appliance must still enroll after the fuzz run"
