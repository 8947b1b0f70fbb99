"""The /serverkeygen answer (RFC 7030 §4.4.2): the private key and its certificate as
multipart/mixed.

Part one is the key as unencrypted PKCS#8 (`application/pkcs8`), protected by the TLS session
only: this appliance holds no key that a DecryptKeyIdentifier / AsymmetricDecryptKeyIdentifier
attribute could name, so a CSR asking for that additional encryption is refused (§4.4.1.1,
§4.4.1.2) rather than answered with a key less protected than asked. Part two is the
certificate as certs-only PKCS#7. With the base64 and pem response formats both parts are
base64 in 64-column CRLF lines with `Content-Transfer-Encoding: base64` (RFC 8951 §3); with
der they are raw DER, as the IQE gateway reads every other answer.

The key bytes exist only in this answer: nothing here logs or stores them.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from appliance.codec import (
    CERTS_ONLY_MIME,
    EncodedBody,
    certs_only_der,
    csr_attributes,
    wrap_base64,
)
from appliance.config import ResponseFormat
from appliance.errors import BadRequest
from appliance.keys import SigningKey
from appliance.multipart import Part, multipart_mixed

PKCS8_MIME = "application/pkcs8"

# id-aa-decryptKeyID and id-aa-asymmDecryptKeyID (RFC 7030 §4.4.1.1, §4.4.1.2, appendix A).
_KEY_ENCRYPTION_ATTRIBUTES = {
    "1.2.840.113549.1.9.16.2.37": "DecryptKeyIdentifier (RFC 7030 §4.4.1.1)",
    "1.2.840.113549.1.9.16.2.54": "AsymmetricDecryptKeyIdentifier (RFC 7030 §4.4.1.2)",
}


def refuse_key_encryption_request(csr: x509.CertificateSigningRequest) -> None:
    """RFC 7030 §4.4.1: a server without the key such an attribute identifies MUST end the
    request with an error; this appliance holds none."""
    for oid in (attribute.oid.dotted_string for attribute in csr_attributes(csr)):
        if oid in _KEY_ENCRYPTION_ATTRIBUTES:
            asked = _KEY_ENCRYPTION_ATTRIBUTES[oid]
            raise BadRequest(
                f"CSR asks for the new private key to be encrypted ({asked}), but this "
                "appliance holds no key-encryption key to do so; it returns the key "
                "protected by the TLS session only. Send the CSR without that attribute, or "
                "generate the key on the device and use simpleenroll"
            )


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
