"""One listening socket for every worker process, accepted by the least busy one.

With SO_REUSEPORT each worker had its own accept queue and the kernel chose the queue by a hash
of the client's address and port: measured, 32 gateway connections split 20/12 between two
workers, so the gateways on the fuller worker waited ~1.7 times as long for every answer, and
a gateway with 4 connections could find them all on one worker and one core. A dying worker's
queued connections were reset with it.

Here the supervisor listens once and every worker inherits the socket. Each worker counts its
open connections in memory shared with its siblings and keeps the listening socket in its
selector only while it has no more connections than the least loaded worker, so new
connections go to the emptiest worker: connections that arrive a few milliseconds apart split
within one; in a burst, the fuller worker may take a few more while the emptier one is not yet
watching again (it looks every 5 ms at most). The queue belongs to the supervisor, so a worker's
restart loses nothing queued.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import selectors
import socket
import threading
import time
from typing import Any

from cheroot.connections import ConnectionManager
from cherrypy._cpwsgi_server import CPWSGIServer

# How often a worker that stepped back from accepting looks again at the counts; it is also
# woken by any event on its own connections.
_RECHECK_SECONDS = 0.005
# The open-connection count of a worker that died, until its successor starts.
_GONE = 2**62


class ConnectionShare:
    """Open connections per worker, and when each last accepted one, in memory that survives
    fork(). Among workers with equally few connections the one that accepted least recently
    goes first, so one client's short connections, one after another, alternate too."""

    def __init__(self, workers: int) -> None:
        self._counts = multiprocessing.RawArray(ctypes.c_long, workers)
        self._accepted_at = multiprocessing.RawArray(ctypes.c_double, workers)
        self._listening = multiprocessing.RawArray(ctypes.c_int, workers)
        self._index = 0
        self._lock = threading.Lock()

    def attach(self, index: int) -> None:
        """In worker `index` (also after a restart): count from zero."""
        self._index = index
        self._counts[index] = 0
        self._accepted_at[index] = 0.0
        self._listening[index] = 1

    def forget(self, index: int) -> None:
        """In the supervisor, when worker `index` died: until its successor attaches, it
        neither counts as the emptiest nor as watching the socket."""
        self._counts[index] = _GONE
        self._listening[index] = 0

    def opened(self) -> None:
        with self._lock:
            self._counts[self._index] += 1
            # CLOCK_MONOTONIC is one clock for every process on the host.
            self._accepted_at[self._index] = time.monotonic()

    def closed(self) -> None:
        with self._lock:
            self._counts[self._index] -= 1

    def may_accept(self) -> bool:
        """Whether this worker is the least loaded (fewest open connections, then the oldest
        last accept)."""
        ranks = list(zip(self._counts[:], self._accepted_at[:], strict=True))
        return ranks[self._index] <= min(ranks)

    def set_listening(self, listening: bool) -> None:
        self._listening[self._index] = int(listening)

    def others_listening(self) -> bool:
        return any(flag for i, flag in enumerate(self._listening[:]) if i != self._index)


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """The socket every worker accepts from (bound and listening; port 0 resolved once)."""
    family, _type, _proto, _name, address = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class BalancedConnectionManager(ConnectionManager):
    """cheroot's connection manager, accepting only while this worker is the least loaded."""

    def __init__(self, server: Any, share: ConnectionShare) -> None:
        super().__init__(server)
        self._share = share
        inner: Any = self._selector
        self._selector: Any = _GatedSelector(inner, server, share)

    def _from_server_socket(self, server_socket: socket.socket) -> Any:
        # Both workers may watch the socket for a moment (the fuller one keeps it until the
        # emptier one has taken it back) and both wake for a new connection: leave it to the
        # emptier one. The selector drops the socket before this worker waits again.
        if not self._share.may_accept() and self._share.others_listening():
            return None
        conn = super()._from_server_socket(server_socket)  # type: ignore[misc]
        if conn is not None:
            self._share.opened()
            conn.connection_share = self._share
        return conn


class _GatedSelector:
    """cheroot's selector, with the listening socket registered only while `may_accept`."""

    def __init__(self, inner: Any, server: Any, share: ConnectionShare) -> None:
        self._inner = inner
        self._server = server
        self._server_fd = server.socket.fileno()
        self._share = share
        self._listening = True

    def select(self, timeout: float | None = None) -> Any:
        if self._share.may_accept():
            if not self._listening:
                self._inner.register(self._server_fd, selectors.EVENT_READ, data=self._server)
                self._listening = True
                self._share.set_listening(True)
        # Step back only while a sibling watches the socket: new connections never wait for
        # a worker to notice that it has become the emptiest.
        elif self._listening and self._share.others_listening():
            self._inner.unregister(self._server_fd)
            self._listening = False
            self._share.set_listening(False)
        if not self._listening:
            timeout = _RECHECK_SECONDS if timeout is None else min(timeout, _RECHECK_SECONDS)
        return self._inner.select(timeout)

    def __len__(self) -> int:
        # cheroot counts its connections as len(selector) - 1 (the listening socket).
        return len(self._inner) + (0 if self._listening else 1)

    @property
    def connections(self) -> Any:
        return self._inner.connections

    def register(self, fileobj: Any, events: int, data: Any = None) -> Any:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> Any:
        return self._inner.unregister(fileobj)

    def close(self) -> None:
        self._inner.close()


class ApplianceHttpServer(CPWSGIServer):  # type: ignore[misc]
    """CherryPy's cheroot server; in a worker it adopts the supervisor's listening socket."""

    listener: socket.socket | None = None
    share: ConnectionShare | None = None

    def bind(self, family: int, type: int, proto: int = 0) -> socket.socket:
        if self.listener is None:
            return super().bind(family, type, proto)  # type: ignore[no-any-return]
        self.socket = self.listener
        self.bind_addr = self.listener.getsockname()[:2]
        return self.listener

    def prepare(self) -> None:
        super().prepare()
        if self.listener is None:
            return
        # Non-blocking accept: when a sibling took the connection, accept() returns at once
        # (cheroot ignores EAGAIN) instead of waiting a second (cheroot's own timeout) while
        # this worker's other connections wait for its selector.
        self.socket.settimeout(0)
        if self.share is not None:
            plain: Any = self._connections
            self._connections: Any = BalancedConnectionManager(self, self.share)
            plain._selector.close()
