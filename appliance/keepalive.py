"""Keep a busy keep-alive connection on its worker thread between requests.

cheroot hands a keep-alive connection back to its selector thread after every answer; the
gateway's next request then wakes the selector, goes through the pool's queue and wakes a
worker: two thread hand-offs, two epoll changes and a queue per request. An IQE gateway
posting a batch sends its next CSR within a millisecond or two of the last answer, so the
worker that answered waits a little (`server.keepalive_linger_ms`, the GIL released while it
waits) for the next request on the same connection and serves it itself. A connection that
stays quiet longer goes back to the selector as before, and nobody lingers while other
connections are queued for a thread, so an idle gateway never keeps a busy one waiting for
more than the linger.
"""

from __future__ import annotations

import contextlib
import select
import ssl

from cheroot.server import HTTPConnection

from appliance.shared_listener import ConnectionShare


class LingeringConnection(HTTPConnection):
    linger_seconds: float = 0.02
    # Set when a worker accepted it through shared_listener (its open-connection count).
    connection_share: ConnectionShare | None = None

    def close(self) -> None:
        share, self.connection_share = self.connection_share, None
        if share is not None:
            share.closed()
        super().close()

    def communicate(self) -> bool:
        keep_open: bool = self._one_request()
        while keep_open and self._next_request_arrives():
            keep_open = self._one_request()
        return keep_open

    def _one_request(self) -> bool:
        try:
            return bool(super().communicate())  # type: ignore[no-untyped-call]
        finally:
            # socket_files.SocketWriter may hold the last response's head (204, HEAD).
            with contextlib.suppress(OSError, ValueError):
                self.wfile.flush()

    def _next_request_arrives(self) -> bool:
        if self.rfile.has_data():
            return True
        sock = self.socket
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        if self.linger_seconds <= 0 or self.server.requests.qsize > 0:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(self.linger_seconds * 1000))


def lingering_connection_class(linger_ms: int) -> type[HTTPConnection]:
    """The connection class for `server.keepalive_linger_ms`."""
    return type(
        "ConfiguredLingeringConnection",
        (LingeringConnection,),
        {"linger_seconds": linger_ms / 1000},
    )
