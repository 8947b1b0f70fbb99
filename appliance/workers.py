"""Several serving processes on one port: pre-forked workers sharing one listening socket.

One CPython process uses about one core: the GIL serializes the Python part of every
enrollment (CSR parsing, building the certificate, the ledger insert, HTTP parsing). With
`server.workers` > 1 each worker process runs the whole appliance (cheroot and its thread pool,
the CA key, its own ledger connections) and accepts from the supervisor's listening socket,
the least loaded worker first (shared_listener.py; docs/PERFORMANCE.md has the numbers).

The parent only supervises. It listens first (so port 0 resolves once, to one port for every
worker, and connections queue while a worker restarts), forks the workers, reports
ready once every worker accepts connections, restarts a worker that dies, and stops them all on
SIGTERM, SIGINT or SIGHUP. Each worker asks the kernel for SIGTERM when the parent dies
(PR_SET_PDEATHSIG), so no worker outlives a parent killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cherrypy
from cherrypy.process.servers import ServerAdapter

from appliance.config import Config, ServerConfig
from appliance.errors import ApplianceError
from appliance.keepalive import lingering_connection_class
from appliance.shared_listener import (
    ApplianceHttpServer,
    ConnectionShare,
    listening_socket,
)

if TYPE_CHECKING:
    from appliance.server import Appliance

log = logging.getLogger(__name__)

# The parent handles these itself (sigtimedwait); workers get the default dispositions back.
_PARENT_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0
# A worker that dies this often this fast is broken, not unlucky: stop instead of looping.
_RESTART_WINDOW = 60.0
_MAX_RESTARTS_IN_WINDOW = 5

# The worker body: gets its index and a callback to call once it accepts connections; returns
# when the worker should exit (after SIGTERM).
WorkerMain = Callable[[int, Callable[[], None]], None]


class WorkerError(ApplianceError):
    """A worker process could not start or keeps dying."""


def serve_workers(
    config: Config,
    count: int,
    build: Callable[[Config], Appliance],
    configure: Callable[[Appliance], None],
    announce: Callable[[Config, str, int], None],
) -> None:
    """Serve `config` from `count` worker processes; returns after SIGTERM/SIGINT/SIGHUP.

    `build` and `configure` are the composition root's: the parent builds once to report a bad
    config or key by name before anything forks, then every worker builds its own appliance
    (an SQLite connection must never cross a fork). `announce` runs once all workers serve.
    """
    build(config).ledger.close()
    try:
        listener = listening_socket(config.server.host, config.server.port, LISTEN_BACKLOG)
    except OSError as exc:
        raise WorkerError(
            f"cannot listen on {config.server.host}:{config.server.port} "
            f"(server.host/server.port): {exc.strerror}"
        ) from None
    share = ConnectionShare(count)
    port = int(listener.getsockname()[1])
    bound = dataclasses.replace(config, server=dataclasses.replace(config.server, port=port))
    cpus = allowed_cpus()

    def main(index: int, ready: Callable[[], None]) -> None:
        cpu = worker_cpu(index, count, cpus, config.server.cpu_affinity)
        if cpu is not None:
            _pin(index, cpu)
        share.attach(index)
        _serve_worker(bound, build, configure, ready, listener=listener, share=share)

    try:
        Supervisor(count, main, on_exit=share.forget).run(
            lambda: announce(bound, bound.server.host, port)
        )
    finally:
        listener.close()


def _serve_worker(
    config: Config,
    build: Callable[[Config], Appliance],
    configure: Callable[[Appliance], None],
    ready: Callable[[], None],
    *,
    listener: socket.socket,
    share: ConnectionShare,
) -> None:  # pragma: no cover - runs in a worker process
    appliance = build(config)
    configure(appliance)
    engine = cherrypy.engine
    # CherryPy's own server adapter checks that the port is free before binding, and it is
    # not: the supervisor listens on it. Serve the inherited socket through an adapter without
    # an address, which skips that check (and the matching one at stop).
    cherrypy.server.unsubscribe()
    httpserver = cherrypy.server.httpserver
    httpserver.listener = listener
    httpserver.share = share
    _SharedPortAdapter(engine, httpserver, None).subscribe()
    # CherryPy's SIGHUP handler re-executes the command line, which in a worker would start a
    # second supervisor; every signal here means "stop", the parent decides about restarts.
    engine.signal_handler.handlers = {"SIGTERM": engine.exit, "SIGINT": engine.exit}
    engine.signal_handler.handlers["SIGHUP"] = engine.exit
    engine.signal_handler.subscribe()
    engine.start()
    ready()
    try:
        engine.block()
    finally:
        appliance.ledger.close()


class _SharedPortAdapter(ServerAdapter):  # type: ignore[misc]
    """CherryPy's adapter without its bind address (see _serve_worker), named for the log."""

    @property
    def description(self) -> str:
        host, port = self.httpserver.bind_addr[:2]
        return f"https://{host}:{port} (one of several workers on the supervisor's socket)"


# Pending connections the kernel queues per worker (cheroot's default is 5: a burst of gateways
# reconnecting after a restart would see refused or retried SYNs).
LISTEN_BACKLOG = 1024


def prepare_http_server(
    server: ServerConfig, wsgi_app: Any = None, apps: Sequence[Any] = ()
) -> None:
    """Create CherryPy's cheroot server now, to set what CherryPy's config keys cannot reach:
    the WSGI application (est_wsgi.ApplianceWsgi instead of the bare CherryPy tree), the
    keep-alive limit and the connection class."""
    for app in apps:
        # web.py logs one line per request; CherryPy would still format its own access line
        # for every request (measured: ~3% of a worker's CPU) only to have it discarded.
        app.log.access = _no_access_log
    adapter = cherrypy.server
    adapter.socket_queue_size = LISTEN_BACKLOG
    httpserver = ApplianceHttpServer(adapter)
    httpserver.keep_alive_conn_limit = server.keepalive_connections
    httpserver.ConnectionClass = lingering_connection_class(server.keepalive_linger_ms)
    if wsgi_app is not None:
        httpserver.wsgi_app = wsgi_app
    adapter.httpserver = httpserver


def _no_access_log() -> None:
    return None


def effective_workers(configured: int) -> int:
    """`server.workers: 0` means one worker per CPU core this process may run on."""
    if configured > 0:
        return configured
    return max(1, len(allowed_cpus()))


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (taskset, systemd CPUAffinity=, cgroup cpusets)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def worker_cpu(index: int, count: int, cpus: Sequence[int], setting: str) -> int | None:
    """The CPU worker `index` of `count` stays on, or None to leave it to the scheduler.

    Only when every worker gets a core of its own: with more workers than cores, pinned
    workers cannot borrow an idle core from a busy sibling, and measured slower than free ones
    (docs/PERFORMANCE.md). A single process keeps every core for its TLS handshakes and fsyncs,
    which run without the GIL."""
    if setting != "auto" or count < 2 or count > len(cpus):
        return None
    return cpus[index]


def _pin(index: int, cpu: int) -> None:  # pragma: no cover - runs in a worker process
    # Before any thread starts: cheroot's pool and the ledger's threads inherit the mask.
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # the CPU went offline or the cpuset shrank since start-up
        log.warning("event=worker_not_pinned worker=%d cpu=%d reason=%s", index, cpu, exc.strerror)
        return
    log.info("event=worker_pinned worker=%d cpu=%d", index, cpu)


@dataclass
class _Worker:
    index: int
    pid: int
    started: float
    ready: bool = False


@dataclass
class Supervisor:
    """Forks `count` workers running `main` and keeps them running until told to stop."""

    count: int
    main: WorkerMain
    # Told the index of a worker that died, before its successor is forked.
    on_exit: Callable[[int], None] | None = None
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _restarts: list[float] = field(default_factory=list)
    _ready_r: int = -1
    _ready_w: int = -1

    def run(self, on_ready: Callable[[], None]) -> None:
        """Start the workers, call `on_ready` once all accept connections, supervise, stop."""
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        try:
            for index in range(self.count):
                self._spawn(index)
            if self._wait_until_ready():
                on_ready()
                self._supervise()
        finally:
            self._stop_all()
            os.close(self._ready_r)
            os.close(self._ready_w)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)

    def _spawn(self, index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; measured by the integration tests
            self._run_child(index, parent)
        self._workers[pid] = _Worker(index=index, pid=pid, started=time.monotonic())
        log.debug("event=worker_started worker=%d pid=%d", index, pid)

    def _run_child(self, index: int, parent: int) -> None:  # pragma: no cover - child process
        code = 1
        try:
            _die_with_parent(parent)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.close(self._ready_r)
            ready_w = self._ready_w

            def ready() -> None:
                os.write(ready_w, f"{os.getpid()}\n".encode())

            self.main(index, ready)
            code = 0
        except BaseException:
            log.exception("event=worker_failed worker=%d pid=%d", index, os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _wait_until_ready(self) -> bool:
        """True once every worker reported ready; False if told to stop first."""
        deadline = time.monotonic() + _START_TIMEOUT
        while not all(worker.ready for worker in self._workers.values()):
            if time.monotonic() > deadline:
                raise WorkerError(f"workers did not start within {_START_TIMEOUT:.0f} seconds")
            select.select([self._ready_r], [], [], 0.05)
            self._read_ready()
            info = signal.sigtimedwait(_PARENT_SIGNALS, 0)
            if info is not None and info.si_signo != signal.SIGCHLD:
                return False
            for worker, status in self._reap():
                raise WorkerError(
                    f"worker {worker.index} (pid {worker.pid}) {_describe(status)} before "
                    "serving; its log lines above say why"
                )
        return True

    def _supervise(self) -> None:
        while True:
            info = signal.sigtimedwait(_PARENT_SIGNALS, 1.0)
            self._read_ready()
            if info is not None and info.si_signo != signal.SIGCHLD:
                log.info(
                    "event=stopping signal=%s workers=%d",
                    signal.Signals(info.si_signo).name,
                    len(self._workers),
                )
                return
            for worker, status in self._reap():
                log.error(
                    "event=worker_exited worker=%d pid=%d status=%s",
                    worker.index,
                    worker.pid,
                    _quote(_describe(status)),
                )
                if self.on_exit is not None:
                    self.on_exit(worker.index)
                self._check_restart_rate()
                self._spawn(worker.index)

    def _check_restart_rate(self) -> None:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < _RESTART_WINDOW]
        self._restarts.append(now)
        if len(self._restarts) > _MAX_RESTARTS_IN_WINDOW:
            raise WorkerError(
                f"workers died {len(self._restarts)} times within {_RESTART_WINDOW:.0f} "
                "seconds; stopping instead of restarting them again"
            )

    def _read_ready(self) -> None:
        try:
            data = os.read(self._ready_r, 4096)
        except BlockingIOError:
            return
        for line in data.decode().split():
            worker = self._workers.get(int(line))
            if worker is not None:
                worker.ready = True
                log.debug("event=worker_ready worker=%d pid=%d", worker.index, worker.pid)

    def _reap(self) -> list[tuple[_Worker, int]]:
        exited = []
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self._workers.pop(pid, None)
            if worker is not None:
                exited.append((worker, status))
        return exited

    def _stop_all(self) -> None:
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while self._workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for worker in list(self._workers.values()):
            log.warning("event=worker_killed worker=%d pid=%d", worker.index, worker.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
        self._workers.clear()


def _die_with_parent(parent: int) -> None:  # pragma: no cover - child process
    """Ask Linux to SIGTERM this worker when the supervisor dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died between fork() and prctl(): then nobody would signal us.
    if os.getppid() != parent:
        raise WorkerError("the supervisor exited while this worker was starting")


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _quote(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'
