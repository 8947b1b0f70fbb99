"""multipart/mixed bodies (RFC 2046 §5.1) for /serverkeygen answers (RFC 7030 §4.4.2).

Written here rather than with the stdlib `email` generator because that generator re-wraps
base64 at 76 columns (RFC 8951 asks for the 64-column CRLF lines every other answer uses) and
cannot carry a raw binary part, which the DER response format needs. The tests parse the
result with the stdlib `email` parser.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    content_type: str
    content: bytes
    transfer_encoding: str | None = None


def multipart_mixed(parts: Sequence[Part], boundary: str | None = None) -> tuple[str, bytes]:
    """Return (Content-Type header value, body)."""
    boundary = boundary or "est-" + secrets.token_hex(16)
    delimiter = b"--" + boundary.encode("ascii")
    for part in parts:
        # A boundary inside a part would end it early; with 128 random bits this never
        # happens, and if it ever did the body would be wrong, so check rather than hope.
        if delimiter in part.content:
            raise ValueError("multipart boundary occurs in a part")
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(delimiter + b"\r\n")
        chunks.append(f"Content-Type: {part.content_type}\r\n".encode("ascii"))
        if part.transfer_encoding:
            chunks.append(f"Content-Transfer-Encoding: {part.transfer_encoding}\r\n".encode())
        chunks.append(b"\r\n")
        chunks.append(part.content)
        # The CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
        chunks.append(b"\r\n")
    chunks.append(delimiter + b"--\r\n")
    return f'multipart/mixed; boundary="{boundary}"', b"".join(chunks)
