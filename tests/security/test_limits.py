"""Header size limit (issue 7): a request whose headers exceed `server.max_header_bytes` gets a
4xx plain-text sentence, never a 5xx, and the appliance keeps serving. (The body limit,
`server.max_body_bytes`, is tested with and without Content-Length in
tests/integration/test_rejections.py.)"""

from __future__ import annotations

import contextlib
import socket
import ssl

import pytest

from tests.support import Lab, RunningAppliance

MAX_HEADER_BYTES = 16384  # ServerConfig default


def _exchange(appliance: RunningAppliance, lab: Lab, request: bytes) -> bytes:
    host, port = appliance.base.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(lab.ca_cert))
    with (
        socket.create_connection((host, int(port)), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        # The server may answer and close before reading everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            tls.sendall(request)
        answer = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            answer += chunk
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("header_bytes", "expected"),
    [(MAX_HEADER_BYTES // 4, {200}), (MAX_HEADER_BYTES + 4096, {413, 431})],
)
def test_header_size_limit(
    appliance: RunningAppliance, lab: Lab, header_bytes: int, expected: set[int]
) -> None:
    request = (
        b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n"
        + b"X-Padding: "
        + b"a" * header_bytes
        + b"\r\nConnection: close\r\n\r\n"
    )
    answer = _exchange(appliance, lab, request)
    assert _status(answer) in expected, answer[:300]
    if 200 not in expected:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"text/plain" in head.lower()
        assert b"<html" not in body.lower()
        assert body.strip(), "the refusal carries a sentence"
    appliance.assert_alive()
