"""The load generator: several processes, each with threads, each thread one TLS connection.

Python on purpose: Debian's wrk cannot present a TLS client certificate, which the keep-alive
and new-connection modes are about, and ab posts one fixed body from a single process. To keep
it from being the bottleneck it spreads over processes, builds every request's bytes before the
clock starts, speaks the few lines of HTTP/1.1 it needs directly on the TLS socket, and reports
its own CPU time so a reader can see its share.

Modes (how the IQE gateway talks to the appliance):
- keepalive: one persistent TLS connection per gateway with the RA certificate, /simpleenroll
  with raw DER CSRs back to back;
- newconn: a full TLS handshake with the RA certificate for every enrollment (no session
  resumption), `Connection: close`;
- password: /bootstrap with HTTP Basic and base64 CSRs on a persistent connection, no
  client certificate.
"""

from __future__ import annotations

import array
import base64
import contextlib
import multiprocessing
import multiprocessing.connection
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

Mode = Literal["keepalive", "newconn", "password"]
MODES: tuple[Mode, ...] = ("keepalive", "newconn", "password")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    ca_cert: Path
    ra_cert: Path
    ra_key: Path
    user: str
    password: str


@dataclass(frozen=True)
class LoadSpec:
    mode: Mode
    concurrency: int
    processes: int
    duration: float | None = None  # seconds of measurement, or
    requests: int | None = None  # a total number of enrollments (soak runs)


@dataclass
class LoadResult:
    spec: LoadSpec
    elapsed: float
    ok: int
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    client_cpu: float = 0.0  # seconds, all load processes
    client_max_core: float = 0.0  # busiest load process: CPU seconds per wall second

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index] / 1e6


class BadAnswer(Exception):
    """The appliance answered something that is not the pump's certificate."""


def run_load(
    target: Target,
    spec: LoadSpec,
    csrs: list[bytes],
    *,
    window: Callable[[], Callable[[], None]] | None = None,
) -> LoadResult:
    """Run one measurement: connect, start every thread at the same instant, collect.

    `window()` is called when the threads start, after the load processes have started and
    connected, and what it returns is called once the last of them is done: the caller's
    own readings (server CPU, idle CPU) then cover the measured load and not its set-up."""
    processes = max(1, min(spec.processes, spec.concurrency))
    threads = [spec.concurrency // processes] * processes
    for i in range(spec.concurrency % processes):
        threads[i] += 1
    per_thread = None
    if spec.requests is not None:
        per_thread = -(-spec.requests // spec.concurrency)
    context = multiprocessing.get_context("fork")
    pipes = []
    children = []
    for index, count in enumerate(threads):
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_process_main,
            args=(target, spec.mode, count, csrs, index, per_thread, child_end),
            daemon=True,
        )
        process.start()
        child_end.close()
        pipes.append(parent_end)
        children.append(process)
    try:
        for pipe in pipes:
            _expect(pipe, "ready")
        start_at = time.monotonic() + 0.05
        end_at = start_at + spec.duration if spec.duration is not None else None
        for pipe in pipes:
            pipe.send(("go", start_at, end_at))
        close_window = None
        if window is not None:
            time.sleep(max(0.0, start_at - time.monotonic()))
            close_window = window()
        result = LoadResult(spec=spec, elapsed=0.0, ok=0)
        finished = start_at
        for pipe in pipes:
            report = _expect(pipe, "done")
            result.ok += report["ok"]
            result.errors.update(report["errors"])
            result.latencies_ns.frombytes(report["latencies"])
            result.client_cpu += report["cpu"]
            finished = max(finished, report["finished"])
            busy = report["cpu"] / max(1e-9, report["finished"] - start_at)
            result.client_max_core = max(result.client_max_core, busy)
        if close_window is not None:
            close_window()
        result.elapsed = finished - start_at
        return result
    finally:
        for process in children:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def _expect(pipe: multiprocessing.connection.Connection, kind: str) -> dict[str, Any]:
    if not pipe.poll(300):
        raise RuntimeError(f"load process did not report {kind!r} within 300 s")
    message = pipe.recv()
    if message[0] == "failed":
        raise RuntimeError(f"load process failed: {message[1]}")
    if message[0] != kind:
        raise RuntimeError(f"load process sent {message[0]!r}, expected {kind!r}")
    payload: dict[str, Any] = message[1]
    return payload


# ---- inside a load process -------------------------------------------------------------------


def _process_main(  # noqa: PLR0917 - multiprocessing passes positional args
    target: Target,
    mode: Mode,
    threads: int,
    csrs: list[bytes],
    index: int,
    per_thread: int | None,
    pipe: multiprocessing.connection.Connection,
) -> None:
    try:
        client = _Client(target, mode, csrs)
        connections = [client.warm_connection() for _ in range(threads)]
        pipe.send(("ready", {}))
        _go, start_at, end_at = pipe.recv()
        workers = [
            _Thread(client, connections[i], (index * 97 + i * 13) % len(csrs), per_thread)
            for i in range(threads)
        ]
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu_before = time.process_time()
        for worker in workers:
            worker.start(end_at)
        for worker in workers:
            worker.join()
        cpu = time.process_time() - cpu_before
        latencies: array.array[int] = array.array("q")
        errors: Counter[str] = Counter()
        for worker in workers:
            latencies.extend(worker.latencies)
            errors.update(worker.errors)
        pipe.send(
            (
                "done",
                {
                    "ok": sum(worker.ok for worker in workers),
                    "errors": dict(errors),
                    "latencies": latencies.tobytes(),
                    "cpu": cpu,
                    "finished": max(worker.finished for worker in workers),
                },
            )
        )
    except BaseException as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))


class _Client:
    """Everything built once per process: TLS context, the request bytes of every CSR."""

    def __init__(self, target: Target, mode: Mode, csrs: list[bytes]) -> None:
        self.target = target
        self.mode = mode
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(target.ca_cert))
        if mode in ("keepalive", "newconn"):
            context.load_cert_chain(str(target.ra_cert), str(target.ra_key))
        self.context = context
        self.requests = [self._request(csr) for csr in csrs]
        self.csrs = csrs

    def _request(self, csr: bytes) -> bytes:
        host = f"{self.target.host}:{self.target.port}"
        if self.mode == "password":
            credentials = f"{self.target.user}:{self.target.password}".encode()
            body = base64.b64encode(csr)
            head = (
                f"POST /.well-known/est/bootstrap HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
                "Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n"
            )
        else:
            body = csr
            head = (
                f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/pkcs10\r\n"
            )
        if self.mode == "newconn":
            head += "Connection: close\r\n"
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.target.host, self.target.port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(raw, server_hostname=self.target.host)

    def warm_connection(self) -> ssl.SSLSocket | None:
        """A persistent connection that already enrolled once, checked in full."""
        if self.mode == "newconn":
            return None
        sock = self.connect()
        buffer = bytearray()
        status, body, _keep = exchange(sock, self.requests[0], buffer)
        check_answer(status, body, self.csrs[0])
        return sock


class _Thread:
    def __init__(
        self, client: _Client, sock: ssl.SSLSocket | None, first: int, limit: int | None
    ) -> None:
        self.client = client
        self.sock = sock
        self.next = first
        self.limit = limit
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.latencies: array.array[int] = array.array("q")
        self.finished = 0.0
        self._thread: threading.Thread | None = None

    def start(self, end_at: float | None) -> None:
        self._thread = threading.Thread(target=self._run, args=(end_at,), daemon=True)
        self._thread.start()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join()

    def _run(self, end_at: float | None) -> None:
        client = self.client
        requests = client.requests
        newconn = client.mode == "newconn"
        buffer = bytearray()
        done = 0
        clock = time.perf_counter_ns
        checked = False
        while True:
            if end_at is not None and time.monotonic() >= end_at:
                break
            if self.limit is not None and done >= self.limit:
                break
            index = self.next
            self.next = (index + 1) % len(requests)
            done += 1
            started = clock()
            try:
                if newconn or self.sock is None:
                    self.sock = client.connect()
                    buffer.clear()
                status, body, keep = exchange(self.sock, requests[index], buffer)
            except (OSError, ConnectionError) as exc:
                self.errors[f"connection: {type(exc).__name__}"] += 1
                self._drop()
                continue
            elapsed = clock() - started
            if not keep:
                self._drop()
            if status != 200:
                self.errors[f"HTTP {status}"] += 1
                continue
            if not checked:
                try:
                    check_answer(status, body, client.csrs[index])
                except BadAnswer as exc:
                    self.errors[f"bad answer: {exc}"] += 1
                    continue
                checked = True
            elif body[:1] != b"\x30":
                self.errors["bad answer: not DER"] += 1
                continue
            self.ok += 1
            self.latencies.append(elapsed)
        self._drop()
        self.finished = time.monotonic()

    def _drop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def exchange(sock: ssl.SSLSocket, request: bytes, buffer: bytearray) -> tuple[int, bytes, bool]:
    """Send one request, read one response: (status, body, connection may be reused)."""
    sock.sendall(request)
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the appliance closed the connection")
        buffer += chunk
    head = bytes(buffer[:end]).lower()
    del buffer[: end + 4]
    status = int(head[9:12])
    marker = head.find(b"\r\ncontent-length:")
    if marker < 0:
        raise ConnectionError("answer without Content-Length")
    line_end = head.find(b"\r\n", marker + 2)
    length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)].strip())
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the appliance closed the connection mid-answer")
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, body, b"\r\nconnection: close" not in head


def check_answer(status: int, body: bytes, csr_der: bytes) -> None:
    """The answer is a certs-only PKCS#7 whose certificate carries the CSR's public key."""
    if status != 200:
        raise BadAnswer(f"HTTP {status}: {body[:200]!r}")
    try:
        certs = pkcs7.load_der_pkcs7_certificates(body)
    except ValueError as exc:
        raise BadAnswer(f"not a DER PKCS#7: {exc}") from None
    csr = x509.load_der_x509_csr(csr_der)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if not certs or certs[0].public_key().public_bytes(der, spki) != csr.public_key().public_bytes(
        der, spki
    ):
        raise BadAnswer("the certificate does not carry the CSR's public key")
