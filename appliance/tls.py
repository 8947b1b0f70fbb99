"""The server's TLS context: TLS 1.2+, strong suites, client certificate asked for, not required."""

from __future__ import annotations

import ssl

from appliance.config import PkiConfig

# TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are all strong already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


def server_context(pki: PkiConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    # RA and pump certificates chain to our CA; anything else fails the handshake. Optional,
    # because /cacerts and /bootstrap are used without a certificate (RFC 7030 §3.3.2).
    context.load_verify_locations(cafile=str(pki.ca_cert))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context
