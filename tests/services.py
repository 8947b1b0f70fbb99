"""Real PostgreSQL and HAProxy servers for the tests, on 127.0.0.1, in a temporary folder.

PostgreSQL refuses to run as root, and CI runs as root: the cluster is initialised and served
as the Debian `postgres` user in a folder it owns. Both servers listen on a freshly probed
free loopback port; PostgreSQL's unix socket stays in the temporary folder too.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s")


def _postgres_bin(name: str) -> str:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<major>/bin."""
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise FileNotFoundError(f"{name}: install the Debian package postgresql")
    return on_path


class PostgresServer:
    """A throwaway PostgreSQL cluster: `start()`, `create_database()`, `stop()`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="est-pg-"))
        self.data = self.folder / "data"
        self.port = 0
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # The server will not run as root; the Debian package created this account.
            postgres = pwd.getpwnam("postgres")
            os.chown(self.folder, postgres.pw_uid, postgres.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, args: Sequence[str], timeout: float = 60) -> None:
        result = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> PostgresServer:
        self._run(
            [
                _postgres_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",  # loopback only, throwaway cluster
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )
        self.port = free_port()
        options = " ".join(
            [
                f"-p {self.port}",
                f"-c listen_addresses={LOOPBACK}",
                f"-c unix_socket_directories={self.folder}",
                "-c max_connections=300",
                # A test cluster thrown away afterwards: no need to survive a power cut.
                "-c fsync=off",
                "-c full_page_writes=off",
            ]
        )
        self._run(
            [
                _postgres_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.folder / "server.log"),
                "-o",
                options,
                "-w",
                "start",
            ]
        )
        return self

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def create_database(self, prefix: str = "est") -> str:
        """A new empty database; returns its DSN."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{name}"

    def log_text(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.data.exists():
            pg_ctl = _postgres_bin("pg_ctl")
            subprocess.run(
                [*self._as_user, pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.folder, ignore_errors=True)


class HAProxy:
    """HAProxy in TCP mode in front of appliance nodes (TLS passes through untouched), with
    health checks so a dead node leaves the rotation within a fraction of a second."""

    def __init__(self, folder: Path, backends: Sequence[tuple[str, int]]) -> None:
        self.folder = folder
        self.backends = list(backends)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        servers = "\n".join(
            f"    server node{i} {host}:{port} check inter 200ms fall 1 rise 2"
            for i, (host, port) in enumerate(self.backends, 1)
        )
        return f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A connection refused by a dead node goes to another one before the client notices.
    retries 3
    option redispatch

frontend est
    bind {LOOPBACK}:{self.port}
    default_backend appliances

backend appliances
    balance roundrobin
    option tcp-check
{servers}
"""

    def start(self) -> HAProxy:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.port = free_port()
        path = self.folder / "haproxy.cfg"
        path.write_text(self.config(), encoding="utf-8")
        check = subprocess.run(
            [haproxy, "-c", "-f", str(path)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects its config:\n{check.stdout}{check.stderr}")
        log = (self.folder / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            [haproxy, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for_port(self.port)
        return self

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
