"""Buffered socket files for cheroot, in C, with the response head sent together with its body.

cheroot reads and writes through `_pyio`, the pure-Python io module, and flushes every write:
a response leaves as two TLS records and two sends (head, then body), and every header line
read runs a few Python frames under a lock. These are the C io classes with the two things
cheroot asks of its files besides reading and writing: `has_data()` (bytes already buffered,
so the connection must not wait on the selector) and the byte counters of its statistics.
"""

from __future__ import annotations

import io
import socket
from typing import Any

_HEAD_END = b"\r\n\r\n"


class _CountingSocketIO(socket.SocketIO):
    """The raw socket stream, counting the bytes it delivered (see SocketReader.has_data)."""

    delivered = 0

    def readinto(self, buffer: Any) -> int | None:
        count = super().readinto(buffer)
        if count:
            self.delivered += count
        return count

    def tell(self) -> int:
        return self.delivered


class SocketReader(io.BufferedReader):
    def __init__(self, sock: socket.socket, bufsize: int = io.DEFAULT_BUFFER_SIZE) -> None:
        self._counting = _CountingSocketIO(sock, "rb")
        super().__init__(self._counting, bufsize)

    def has_data(self) -> bool:
        """Whether bytes are buffered that the socket will not signal again."""
        return self._counting.delivered > self.tell()

    @property
    def bytes_read(self) -> int:
        return self.tell()


class SocketWriter(io.BufferedWriter):
    """Holds a final response's head until its body follows, then sends both at once.

    Everything else is sent at once, `100 Continue` in particular (the client waits for it
    before sending the body). The connection flushes after every request (keepalive.py), so
    a head with no body (204, HEAD) leaves then.
    """

    def __init__(self, sock: socket.socket, bufsize: int = io.DEFAULT_BUFFER_SIZE) -> None:
        super().__init__(socket.SocketIO(sock, "wb"), bufsize)
        self.bytes_written = 0

    def write(self, data: Any) -> int:
        count = super().write(data)
        self.bytes_written += count
        if not (data[:5] == b"HTTP/" and data[9:10] != b"1" and data[-4:] == _HEAD_END):
            self.flush()
        return count


def make_socket_file(
    sock: socket.socket, mode: str = "r", bufsize: int = io.DEFAULT_BUFFER_SIZE
) -> SocketReader | SocketWriter:
    """cheroot's `makefile` signature."""
    return SocketReader(sock, bufsize) if "r" in mode else SocketWriter(sock, bufsize)
