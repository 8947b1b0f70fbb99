"""The /serverkeygen answer (RFC 7030 §4.4.2): the private key and its certificate as
multipart/mixed.

Part one is the key as unencrypted PKCS#8 (`application/pkcs8`), protected by the TLS session
only: this appliance does not support the DecryptKeyIdentifier / AsymmetricDecryptKeyIdentifier
attributes for additional encryption. Part two is the certificate as certs-only PKCS#7. With
the base64 and pem response formats both parts are base64 in 64-column CRLF lines with
`Content-Transfer-Encoding: base64` (RFC 8951 §3); with der they are raw DER, as the IQE
gateway reads every other answer.

The key bytes exist only in this answer: nothing here logs or stores them.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from appliance.codec import CERTS_ONLY_MIME, EncodedBody, certs_only_der, wrap_base64
from appliance.config import ResponseFormat
from appliance.keys import SigningKey
from appliance.multipart import Part, multipart_mixed

PKCS8_MIME = "application/pkcs8"


def encode_serverkeygen(
    cert: x509.Certificate, key: SigningKey, fmt: ResponseFormat
) -> EncodedBody:
    key_der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    cert_der = certs_only_der([cert])
    if fmt == "der":
        parts = [Part(PKCS8_MIME, key_der), Part(CERTS_ONLY_MIME, cert_der)]
    else:
        parts = [
            Part(PKCS8_MIME, wrap_base64(key_der), "base64"),
            Part(CERTS_ONLY_MIME, wrap_base64(cert_der), "base64"),
        ]
    content_type, body = multipart_mixed(parts)
    return EncodedBody(body, content_type)
