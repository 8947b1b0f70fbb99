"""cheroot's TLS adapter, changed so that no single client can stall the server.

cheroot's built-in adapter performs the TLS handshake in its acceptor thread: one client that
connects and sends nothing delays every other connection until the socket timeout (measured:
three idle TCP connections held an honest client for 30 s). This adapter

- defers the handshake to the worker thread that serves the connection (cheroot only hands a
  connection to a worker once bytes have arrived, so a silent client costs no thread);
- bounds the whole reading of one request (handshake, headers, body) by a deadline, so a
  client that trickles bytes holds a worker for at most `request_timeout` seconds;
- caps the connections one peer address may hold open.

It also exposes the TLS channel binding `tls-unique` (RFC 5929) of TLS 1.2 connections as
`SSL_TLS_UNIQUE` (base64) for proof-of-possession linking (RFC 7030 §3.5).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from cheroot import errors
from cheroot import server as cheroot_server
from cheroot.ssl.builtin import BuiltinSSLAdapter

from appliance.socket_files import SocketReader, SocketWriter, make_socket_file

log = logging.getLogger(__name__)

# How long a connection whose TLS handshake failed is read (and discarded) after the alert.
_DRAIN_SECONDS = 0.5


class ConnectionLimiter:
    """Counts open connections per peer address."""

    def __init__(self, per_ip: int) -> None:
        self._per_ip = per_ip
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, ip: str) -> bool:
        with self._lock:
            if self._open[ip] >= self._per_ip:
                return False
            self._open[ip] += 1
            return True

    def release(self, ip: str) -> None:
        with self._lock:
            self._open[ip] -= 1
            if self._open[ip] <= 0:
                del self._open[ip]

    def open_connections(self, ip: str) -> int:
        with self._lock:
            return self._open[ip]


class GuardedSSLSocket(ssl.SSLSocket):
    """An SSLSocket whose reads for one request share a deadline.

    The clock starts at the first read of a request and stops when the server sends its
    answer; each read waits at most the socket timeout and never past the deadline.
    """

    request_timeout: float = 20.0
    limiter: ConnectionLimiter | None = None
    _peer_ip: str | None = None
    _request_started: float | None = None
    _read_timeout: float | None = None
    _handshake_done = False
    # The connection's SSL_* WSGI variables, filled in when the handshake completes (wrap).
    _ssl_environ: dict[str, Any] | None = None
    _adapter: GuardedSSLAdapter | None = None

    def _remaining(self) -> float:
        now = time.monotonic()
        if self._request_started is None:
            self._request_started = now
            self._read_timeout = self.gettimeout()
        remaining = self._request_started + self.request_timeout - now
        if remaining <= 0:
            raise TimeoutError("request not completed within server.request_timeout")
        return remaining

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._before_read()
        return super().recv_into(buffer, nbytes or 0, flags)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._before_read()
        return super().recv(buflen, flags)

    def _before_read(self) -> None:
        remaining = self._remaining()
        base = self._read_timeout
        timeout = remaining if base is None else min(base, remaining)
        # settimeout() is an ioctl every time; most reads keep the per-read timeout.
        if timeout != self.gettimeout():
            self.settimeout(timeout)
        if not self._handshake_done:
            self._handshake()

    def _handshake(self) -> None:
        try:
            self.do_handshake()
        except ssl.SSLError:
            # The alert that says why (an expired or foreign client certificate) is on its way
            # to the client, but a TLS 1.3 client has already sent its request behind its
            # certificate: closing with those bytes unread makes the kernel answer with a TCP
            # reset, which can overtake the alert, and the integrator sees "connection reset"
            # instead of "certificate expired". End the stream in order: FIN, then read what
            # the client still sends until it closes (briefly).
            self._end_after_alert()
            raise
        self._handshake_done = True
        if self._ssl_environ is not None and self._adapter is not None:
            self._ssl_environ.update(self._adapter.ssl_environ(self))

    def _end_after_alert(self) -> None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self, socket.SHUT_WR)
            deadline = time.monotonic() + _DRAIN_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                socket.socket.settimeout(self, left)
                if not socket.socket.recv(self, 4096):
                    break

    def send(self, data: Any, flags: int = 0) -> int:
        self._request_finished()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._request_finished()
        super().sendall(data, flags)

    def _request_finished(self) -> None:
        if self._request_started is not None:
            self._request_started = None
            if self._read_timeout is not None and self._read_timeout != self.gettimeout():
                self.settimeout(self._read_timeout)

    def close(self) -> None:
        ip, self._peer_ip = self._peer_ip, None
        if ip is not None and self.limiter is not None:
            self.limiter.release(ip)
        super().close()


class GuardedSSLAdapter(BuiltinSSLAdapter):
    """Set `context`, `request_timeout` and `limiter` before the server starts."""

    request_timeout: float = 20.0
    limiter: ConnectionLimiter = ConnectionLimiter(48)

    def ssl_environ(self, sock: ssl.SSLSocket) -> dict[str, Any]:
        """The SSL_* WSGI variables of a connection whose handshake is complete."""
        environ = dict(BuiltinSSLAdapter.get_environ(self, sock))  # type: ignore[no-untyped-call]
        binding = sock.get_channel_binding("tls-unique")
        if binding is not None and sock.version() == "TLSv1.2":
            environ["SSL_TLS_UNIQUE"] = base64.b64encode(binding).decode("ascii")
        return environ

    def makefile(
        self, sock: socket.socket, mode: str = "r", bufsize: int = io.DEFAULT_BUFFER_SIZE
    ) -> SocketReader | SocketWriter:
        return make_socket_file(sock, mode, bufsize)

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, Mapping[str, Any]]:
        try:
            peer_ip = str(sock.getpeername()[0])
        except OSError as exc:
            raise errors.FatalSSLAlert(*exc.args) from exc
        if not self.limiter.acquire(peer_ip):
            log.warning(
                "event=connection_refused peer=%s reason=%s",
                peer_ip,
                "too many open connections from this address",
            )
            raise errors.FatalSSLAlert("too many connections from " + peer_ip)
        try:
            context = self.context
            context.sslsocket_class = _socket_class(self.request_timeout, self.limiter)
            wrapped = context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
        except BaseException:
            self.limiter.release(peer_ip)
            raise
        wrapped._peer_ip = peer_ip
        # cheroot copies this into every request's environ. A plain dict, filled in by the
        # worker thread that completes the handshake (the acceptor thread does none), so the
        # copy is C's dict merge, not a Python call per variable (about 40 with a client
        # certificate) on every request of a keep-alive connection.
        environ: dict[str, Any] = {}
        wrapped._ssl_environ = environ
        wrapped._adapter = self
        return wrapped, environ


_SOCKET_CLASSES: dict[tuple[float, int], type[GuardedSSLSocket]] = {}


def _socket_class(request_timeout: float, limiter: ConnectionLimiter) -> type[GuardedSSLSocket]:
    key = (request_timeout, id(limiter))
    cls = _SOCKET_CLASSES.get(key)
    if cls is None:
        cls = type(
            "ConfiguredGuardedSSLSocket",
            (GuardedSSLSocket,),
            {"request_timeout": request_timeout, "limiter": limiter},
        )
        _SOCKET_CLASSES[key] = cls
    return cls


ADAPTER_NAME = "est-guarded"


def register_adapter(request_timeout: float, max_connections_per_ip: int) -> str:
    """Make the configured adapter selectable as `server.ssl_module`; returns its name."""
    adapter = type(
        "ConfiguredGuardedSSLAdapter",
        (GuardedSSLAdapter,),
        {
            "request_timeout": request_timeout,
            "limiter": ConnectionLimiter(max_connections_per_ip),
        },
    )
    cheroot_server.ssl_adapters[ADAPTER_NAME] = adapter  # type: ignore[attr-defined]
    return ADAPTER_NAME
