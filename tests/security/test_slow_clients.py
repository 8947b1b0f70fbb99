"""Slow and silent clients cannot starve an honest gateway (issue 7: limits and slow clients).

A bounded slowloris-style attack from 127.0.0.2 — silent TCP connections, stalled TLS
handshakes, and TLS connections trickling header bytes — while the honest gateway on
127.0.0.1 enrolls. Without the guarded TLS adapter, three silent connections alone delayed an
honest client by 30 seconds.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.support import Lab, curl_ra_enroll, make_csr, make_lab, running_appliance

ATTACKER = "127.0.0.2"
SILENT = 6
TRICKLERS = 20
PER_IP = 12
REQUEST_TIMEOUT = 3


@pytest.fixture(scope="module")
def guarded_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(
        tmp_path_factory.mktemp("slow"),
        {
            "server": {
                "request_timeout": REQUEST_TIMEOUT,
                "socket_timeout": 2,
                "thread_pool": 16,
                "max_connections_per_ip": PER_IP,
            }
        },
    )


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server ends the connection (after an error answer, if any) in time."""
    deadline = time.monotonic() + within
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if sock.recv(4096) == b"":
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def _enroll_seconds(lab: Lab, url: str, csr: Path) -> float:
    started = time.monotonic()
    status, _h, body = curl_ra_enroll(lab, url, csr, timeout=20)
    assert status == 200, body
    return time.monotonic() - started


def test_silent_and_stalled_connections_do_not_delay_others(
    guarded_lab: Lab, tmp_path: Path
) -> None:
    """cheroot alone handshakes in its acceptor thread: each silent client stalled everyone."""
    lab = guarded_lab
    csr, _ = make_csr(tmp_path, "patient-pump")
    with running_appliance(lab) as appliance:
        port = int(appliance.base.rsplit(":", 1)[1])
        held = [_connect(port) for _ in range(SILENT)]
        for _ in range(PER_IP - SILENT):
            sock = _connect(port)
            sock.sendall(b"\x16\x03\x01\x02")  # the start of a TLS record, then nothing
            held.append(sock)
        try:
            time.sleep(0.3)
            timings = [_enroll_seconds(lab, appliance.url("simpleenroll"), csr) for _ in range(3)]
            print("honest enrollment seconds beside silent clients:", timings)
            assert max(timings) < 1.0
            # The stalled handshakes are cut once the request deadline passes.
            cut = [_closed_by_server(s, REQUEST_TIMEOUT + 4) for s in held[SILENT:]]
            assert all(cut), "a stalled TLS handshake outlived server.request_timeout"
        finally:
            for sock in held:
                sock.close()
        appliance.assert_alive()


def test_honest_gateway_enrolls_within_a_second_under_slowloris(
    guarded_lab: Lab, tmp_path: Path
) -> None:
    """Tricklers hold worker threads; the per-address cap keeps some for everyone else."""
    lab = guarded_lab
    csr, _ = make_csr(tmp_path, "honest-pump")
    with running_appliance(lab) as appliance:
        port = int(appliance.base.rsplit(":", 1)[1])
        admitted: list[ssl.SSLSocket] = []
        refused = 0
        stop = threading.Event()

        def trickle(sock: ssl.SSLSocket) -> None:
            try:
                sock.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n")
                while not stop.is_set():
                    sock.sendall(b"X")
                    stop.wait(0.3)
            except OSError:
                return

        context = ssl.create_default_context(cafile=str(lab.ca_cert))
        threads = []
        try:
            for _ in range(TRICKLERS):
                try:
                    tls = context.wrap_socket(_connect(port), server_hostname="localhost")
                except OSError:
                    refused += 1  # closed by the per-address cap
                    continue
                admitted.append(tls)
                thread = threading.Thread(target=trickle, args=(tls,))
                thread.start()
                threads.append(thread)
            time.sleep(0.5)
            timings = [_enroll_seconds(lab, appliance.url("simpleenroll"), csr) for _ in range(3)]
            print(f"admitted {len(admitted)}, refused {refused}; honest seconds: {timings}")
            assert max(timings) < 1.0
            assert len(admitted) == PER_IP
            assert refused == TRICKLERS - PER_IP
            cut = [_closed_by_server(s, REQUEST_TIMEOUT + 4) for s in admitted]
            assert all(cut), "a trickling client outlived server.request_timeout"
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
            for sock in admitted:
                sock.close()
        appliance.assert_alive()
        assert "too many open connections from this address" in appliance.log_text()


def test_negative_control_without_attack_is_fast(guarded_lab: Lab, tmp_path: Path) -> None:
    csr, _ = make_csr(tmp_path, "calm-pump")
    with running_appliance(guarded_lab) as appliance:
        assert _enroll_seconds(guarded_lab, appliance.url("simpleenroll"), csr) < 1.0
