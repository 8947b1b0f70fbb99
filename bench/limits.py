"""What this machine does with no appliance in between: the yardsticks for every ratio.

- CA signing: the lab's own CA key, signing through pyca/cryptography (the library the
  appliance signs with) in one process per core, the way a certificate's TBS is signed.
- TLS handshakes: `openssl s_server` with the lab's own server certificate and key, asking for
  a client certificate like the appliance, against `openssl s_time -new` presenting the RA
  certificate: full handshakes, no resumption, no HTTP.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

# About the size of a pump certificate's TBSCertificate.
_TBS = bytes(range(256)) * 3
_S_TIME = re.compile(rb"(\d+) connections in [\d.]+s;")


def signing_limit(key_path: Path, processes: int, duration: float) -> float:
    """CA signatures per second over `processes` processes signing at once."""
    context = multiprocessing.get_context("fork")
    pipes = []
    children = []
    for _ in range(processes):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_sign_loop, args=(key_path, child_end), daemon=True)
        process.start()
        child_end.close()
        pipes.append(parent_end)
        children.append(process)
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("signing process did not start")
    start_at = time.monotonic() + 0.05
    for pipe in pipes:
        pipe.send((start_at, start_at + duration))
    total = 0.0
    for pipe in pipes:
        if not pipe.poll(duration + 60):
            raise RuntimeError("signing process did not report")
        count, elapsed = pipe.recv()
        total += count / elapsed
    for process in children:
        process.join(timeout=10)
    return total


def _sign_loop(key_path: Path, pipe: multiprocessing.connection.Connection) -> None:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_key = key

        def sign() -> None:
            rsa_key.sign(_TBS, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        ec_key = key

        def sign() -> None:
            ec_key.sign(_TBS, ec.ECDSA(hashes.SHA256()))
    else:
        raise TypeError(f"unsupported CA key {type(key).__name__}")
    for _ in range(20):
        sign()
    pipe.send("ready")
    start_at, end_at = pipe.recv()
    time.sleep(max(0.0, start_at - time.monotonic()))
    count = 0
    now = time.monotonic()
    while now < end_at:
        for _ in range(10):
            sign()
        count += 10
        now = time.monotonic()
    pipe.send((count, now - start_at))


def handshake_limit(certs: Path, duration: float, clients: int) -> float:
    """Full TLS handshakes per second of `openssl s_server` against `clients` s_time runs."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is required (scripts/setup.sh installs it)")
    port = _free_port()
    server = subprocess.Popen(
        [
            openssl,
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(certs / "server-cert.pem"),
            "-key",
            str(certs / "server-key.pem"),
            "-CAfile",
            str(certs / "ca-cert.pem"),
            "-verify",
            "1",
            "-www",
            "-quiet",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_accepting(port, server)
        started = time.monotonic()
        runs = [
            subprocess.Popen(
                [
                    openssl,
                    "s_time",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-new",
                    "-time",
                    str(max(1, round(duration))),
                    "-cert",
                    str(certs / "iqe-ra-cert.pem"),
                    "-key",
                    str(certs / "iqe-ra-key.pem"),
                    "-CAfile",
                    str(certs / "ca-cert.pem"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(clients)
        ]
        rate = 0.0
        for run in runs:
            out, err = run.communicate(timeout=duration + 60)
            elapsed = time.monotonic() - started
            match = _S_TIME.search(out)
            if run.returncode != 0 or match is None:
                raise RuntimeError(f"openssl s_time failed: {err.decode(errors='replace')}")
            rate += int(match.group(1)) / elapsed
        return rate
    finally:
        server.terminate()
        server.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_accepting(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("openssl s_server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("openssl s_server did not accept connections")
