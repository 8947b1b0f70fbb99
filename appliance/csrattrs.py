"""RFC 7030 §4.5.2 CsrAttrs: what /csrattrs tells a client to put in its CSR, as DER.

    CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
    AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
    Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET SIZE (1..MAX) OF ANY }

pyca/cryptography has no CsrAttrs type, and the structure needs only OBJECT IDENTIFIER,
INTEGER, SET and SEQUENCE, so the few DER rules (X.690 §8.1.3 lengths, §8.19 OIDs) are here
rather than a new dependency. The tests check the output with `openssl asn1parse`.
"""

from __future__ import annotations

from cryptography.x509.oid import AttributeOID

from appliance.config import CsrAttributesConfig

# RFC 2985 §5.4.1 challengePassword: present means "link the CSR to TLS" (RFC 7030 §3.5).
CHALLENGE_PASSWORD = AttributeOID.CHALLENGE_PASSWORD.dotted_string
# RFC 2985 §5.4.2 extensionRequest; its values name the extensions to request.
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
ECDSA_WITH_SHA384 = "1.2.840.10045.4.3.3"
_CURVES = {"ec-p256": "1.2.840.10045.3.1.7", "ec-p384": "1.3.132.0.34"}
_RSA_BITS = {"rsa-2048": 2048, "rsa-3072": 3072}


def csr_attributes_der(config: CsrAttributesConfig, *, challenge_password: bool) -> bytes | None:
    """The CsrAttrs SEQUENCE for a profile, or None when nothing is asked (RFC 7030 §4.5.2:
    the server answers 204 then)."""
    # Same order as the RFC 7030 §4.5.2 example: password, key, extensions, signature hash.
    items: list[bytes] = []
    signature: list[bytes] = []
    if challenge_password or config.challenge_password:
        items.append(oid(CHALLENGE_PASSWORD))
    if config.key_type in _CURVES:
        # The RFC 7030 §4.5.2 example: an ecPublicKey attribute whose value is the curve.
        items.append(attribute(EC_PUBLIC_KEY, [oid(_CURVES[config.key_type])]))
        hash_oid = ECDSA_WITH_SHA384 if config.key_type == "ec-p384" else ECDSA_WITH_SHA256
        signature.append(oid(hash_oid))
    elif config.key_type in _RSA_BITS:
        # RFC 9908 (csrattrs clarification) form: rsaEncryption with the modulus size.
        items.append(attribute(RSA_ENCRYPTION, [integer(_RSA_BITS[config.key_type])]))
        signature.append(oid(SHA256_WITH_RSA))
    if config.extension_requests:
        items.append(attribute(EXTENSION_REQUEST, [oid(o) for o in config.extension_requests]))
    items += signature
    if not items:
        return None
    return tlv(0x30, b"".join(items))


def attribute(type_oid: str, values: list[bytes]) -> bytes:
    # DER SET OF: elements sorted by their encodings (X.690 §11.6).
    return tlv(0x30, oid(type_oid) + tlv(0x31, b"".join(sorted(values))))


def oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"{dotted!r} is not an object identifier")
    body = b"".join(_base128(arc) for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]])
    return tlv(0x06, body)


def integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative integers are needed here")
    # Minimal two's complement: a leading 0x00 only when the top bit would read as negative.
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return tlv(0x02, body)


def tlv(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes([tag, length]) + body
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))
