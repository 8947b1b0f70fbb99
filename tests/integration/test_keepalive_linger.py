"""Keep-alive connections served on their worker thread while busy (appliance/keepalive.py)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from bench.csrs import pump_csrs
from bench.loadgen import check_answer, exchange
from tests.support import Lab, RunningAppliance, curl, make_lab, start_appliance

LINGER_MS = 100


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    # One worker thread: whatever a lingering connection holds, nobody else has.
    lab = make_lab(
        tmp_path_factory.mktemp("linger"),
        {"server": {"keepalive_linger_ms": LINGER_MS, "thread_pool": 1}},
    )
    appliance = start_appliance(lab)
    yield appliance
    appliance.stop()


def _gateway(appliance: RunningAppliance) -> ssl.SSLSocket:
    lab: Lab = appliance.lab
    host, port = appliance.base.removeprefix("https://").rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(lab.ca_cert))
    context.load_cert_chain(str(lab.ra_cert), str(lab.ra_key))
    raw = socket.create_connection((host, int(port)), timeout=30)
    return context.wrap_socket(raw, server_hostname=host)


def _enrollment(csr: bytes) -> bytes:
    return (
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: appliance\r\n"
        b"Content-Type: application/pkcs10\r\nContent-Length: %d\r\n\r\n" % len(csr)
    ) + csr


def test_one_connection_serves_back_to_back_and_after_a_pause(
    one_thread: RunningAppliance,
) -> None:
    csrs = pump_csrs(5, keys=1)
    buffer = bytearray()
    with _gateway(one_thread) as sock:
        for csr in csrs[:3]:
            status, body, reusable = exchange(sock, _enrollment(csr), buffer)
            check_answer(status, body, csr)
            assert reusable
        # Quiet past the linger: the connection went back to cheroot's selector, and the
        # next request on it is served from there.
        time.sleep(3 * LINGER_MS / 1000)
        for csr in csrs[3:]:
            status, body, reusable = exchange(sock, _enrollment(csr), buffer)
            check_answer(status, body, csr)
            assert reusable


def test_a_quiet_gateway_does_not_keep_the_only_thread(one_thread: RunningAppliance) -> None:
    csr = pump_csrs(1, keys=1)[0]
    buffer = bytearray()
    with _gateway(one_thread) as idle:
        status, body, _reusable = exchange(idle, _enrollment(csr), buffer)
        check_answer(status, body, csr)
        # The idle gateway's thread lingers; another client still gets the only thread.
        status, _headers, chain = curl(
            ["--cacert", str(one_thread.lab.ca_cert), f"{one_thread.base}/.well-known/est/cacerts"],
            timeout=10,
        )
        assert status == 200 and chain
        # And the idle gateway's connection still works afterwards.
        status, body, _reusable = exchange(idle, _enrollment(csr), buffer)
        assert status in (200, 409), body  # 409 if the profile refuses a duplicate subject


@pytest.mark.parametrize(("value", "ok"), [(0, True), (20, True), (1000, True), (-1, False)])
def test_linger_setting_is_validated(tmp_path: Path, value: int, ok: bool) -> None:
    raw = {"server": {"keepalive_linger_ms": value}}
    if ok:
        assert parse_config(raw, base_dir=tmp_path).server.keepalive_linger_ms == value
    else:
        with pytest.raises(ConfigError, match=r"server\.keepalive_linger_ms: must be between"):
            parse_config(raw, base_dir=tmp_path)
