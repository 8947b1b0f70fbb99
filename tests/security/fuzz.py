"""Malformed EST requests for the live fuzz run: seeded, so a failure can be replayed."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

# Weighted towards the enrollment operations, where the CSR decoder and auth do their work.
OPERATIONS = (
    ["simpleenroll"] * 5
    + ["bootstrap"] * 5
    + [
        "cacerts",
        "simplereenroll",
        "csrattrs",
        "serverkeygen",
        "fullcmc",
        "",
    ]
)
CONTENT_TYPES = [
    "application/pkcs10",
    "application/pkcs10; charset=binary",
    "APPLICATION/PKCS10",
    "application/pkcs10;",
    "text/plain",
    "multipart/mixed",
    "multipart/form-data; boundary=x",
    "multipart/mixed; boundary=",
    "application/x-www-form-urlencoded",
    "",
    ";;;",
    "\x7f",
    'application/pkcs10; boundary="unterminated',
]
TRANSFER_ENCODINGS = ["base64", "BASE64", "binary", "8bit", "quoted-printable", "", "x" * 300]


@dataclass(frozen=True)
class FuzzRequest:
    raw: bytes
    use_client_cert: bool


class RequestFactory:
    def __init__(self, seed: int, valid_csr_der: bytes, credentials: str) -> None:
        self._rng = random.Random(seed)
        self._csr = valid_csr_der
        self._credentials = credentials

    def _body(self) -> bytes:
        rng = self._rng
        kind = rng.randrange(10)
        if kind == 0:
            return rng.randbytes(rng.randrange(0, 3000))
        if kind == 1:  # one flipped byte in a valid DER CSR
            mutated = bytearray(self._csr)
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            return bytes(mutated)
        if kind == 2:  # truncated or padded DER
            cut = rng.randrange(len(self._csr))
            return self._csr[:cut] if rng.random() < 0.5 else self._csr + rng.randbytes(cut % 16)
        if kind == 3:  # base64 with junk characters inserted
            text = bytearray(base64.encodebytes(self._csr))
            for _ in range(rng.randrange(1, 5)):
                text.insert(rng.randrange(len(text)), rng.choice(b"!@#$%^&*~\x00\xff-_ "))
            return bytes(text)
        if kind == 4:  # PEM armour around garbage or a cut CSR
            inner = base64.encodebytes(self._csr[: rng.randrange(len(self._csr))])
            return (
                b"-----BEGIN CERTIFICATE REQUEST-----\n"
                + inner
                + rng.choice([b"-----END CERTIFICATE REQUEST-----\n", b"", b"-----END X-----"])
            )
        if kind == 5:  # deeply nested or overlong DER lengths
            return b"\x30\x84\xff\xff\xff\xff" + rng.randbytes(rng.randrange(50))
        if kind == 6:
            return b"\x30\x80" * rng.randrange(1, 500)
        if kind == 7:  # base64 of random bytes
            return base64.b64encode(rng.randbytes(rng.randrange(1, 2000)))
        if kind == 8:  # unicode text
            return "".join(
                chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(200))
            ).encode("utf-8", "surrogatepass")
        return self._csr  # a valid CSR with malformed headers around it

    def _auth(self) -> list[str]:
        rng = self._rng
        kind = rng.randrange(8)
        if kind == 0:
            return []
        if kind == 1:
            return [f"Authorization: Basic {self._credentials}"]
        if kind == 2:
            return ["Authorization: Basic " + base64.b64encode(rng.randbytes(20)).decode()]
        if kind == 3:
            return ["Authorization: Basic"]
        if kind == 4:
            return ["Authorization: Basic !!!not-base64!!!"]
        if kind == 5:
            return ["Authorization: " + rng.choice(["Bearer x", "Digest a=b", "NTLM", "basic"])]
        if kind == 6:
            return ["Authorization: Basic " + "A" * rng.randrange(100, 4000)]
        return ["Authorization: Basic " + base64.b64encode(b"\xff\xfe:\x00").decode()]

    def next(self) -> FuzzRequest:
        rng = self._rng
        body = self._body()
        operation = rng.choice(OPERATIONS)
        path = f"/.well-known/est/{operation}"
        if rng.random() < 0.1:
            path = rng.choice(
                [
                    "/.well-known/est/" + "a/" * rng.randrange(1, 40),
                    "/.well-known/est/%00%ff%2e%2e/simpleenroll",
                    "/.well-known/est/label/simpleenroll?x=" + "y" * 500,
                    "/" + "%" * rng.randrange(1, 10),
                    "/.well-known/est/simpleenroll/",
                ]
            )
        method = rng.choice(["POST"] * 6 + ["GET", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"])
        headers = ["Host: 127.0.0.1"]
        content_type = rng.choice(CONTENT_TYPES)
        if content_type:
            headers.append(f"Content-Type: {content_type}")
        if rng.random() < 0.5:
            headers.append(f"Content-Transfer-Encoding: {rng.choice(TRANSFER_ENCODINGS)}")
        headers += self._auth()
        if rng.random() < 0.05:
            headers.append("X-Junk: " + "j" * rng.randrange(1, 8000))
        chunked = rng.random() < 0.1
        if chunked:
            headers.append("Transfer-Encoding: chunked")
            payload = (
                f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
            )
        else:
            headers.append(f"Content-Length: {len(body)}")
            payload = body
        head = f"{method} {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
        return FuzzRequest(
            raw=head.encode("latin-1", "replace") + payload,
            use_client_cert=rng.random() < 0.5,
        )
