"""RFC 7030 / RFC 8951 conformance: one test per rule, each naming the section it checks.

Everything goes through real curl (or Python's ssl where the TLS session itself matters) over
real TLS against one running appliance with a CA label per behaviour (see conftest.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import http.client
import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AttributeOID, NameOID

from appliance.csrattrs import tlv
from appliance.ledger import REVOKED, SUPERSEDED, VALID, SqliteLedger
from tests.conformance.conftest import (
    CSR_TYPE,
    cert_of,
    cli,
    enroll_pump,
    new_csr,
    ra,
    save_cert,
    url,
)
from tests.support import (
    LAB_PASSWORD,
    LAB_USER,
    Lab,
    RunningAppliance,
    curl,
    openssl,
    pkcs7_certificates,
    verify_with_ca,
)

# RFC 7030 §4.5.2's example CsrAttrs, byte for byte.
RFC7030_CSRATTRS_EXAMPLE = (
    b"MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw=="
)


def _post(appliance: RunningAppliance, op: str, csr: Path, *auth: str, label: str = ""):  # type: ignore[no-untyped-def]
    return curl([*auth, *CSR_TYPE, "--data-binary", f"@{csr}", url(appliance, op, label)])


def _pump_tls(lab: Lab, pump_cert: Path, pump_key: Path) -> list[str]:
    return ["--cacert", str(lab.ca_cert), "--cert", str(pump_cert), "--key", str(pump_key)]


def _assert_base64_lines(body: bytes) -> None:
    """RFC 8951 §3 / RFC 2045: 64-character lines, CRLF, a final line break."""
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    assert all(len(line) == 64 for line in lines[:-1]), [len(x) for x in lines]
    assert 0 < len(lines[-1]) <= 64
    assert b"\n" not in body.replace(b"\r\n", b"")


# --- /cacerts -------------------------------------------------------------------------------


def test_cacerts_is_certs_only_pkcs7_with_the_ca_rfc7030_4_1_3(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.1.3: application/pkcs7-mime, a certs-only SignedData holding the CA."""
    status, headers, body = curl(["--cacert", str(lab.ca_cert), appliance.url("cacerts")])
    assert status == 200
    assert headers["content-type"] == "application/pkcs7-mime"
    certs = pkcs7_certificates(body, "DER")
    ca = x509.load_pem_x509_certificate(lab.ca_cert.read_bytes())
    served = x509.load_pem_x509_certificate(certs.encode())
    assert served == ca
    # Negative control: the served CA verifies itself, a foreign cert would not.
    assert verify_with_ca(certs, lab.ca_cert, work).returncode == 0


def test_cacerts_needs_no_authentication_rfc7030_4_1_1(appliance: RunningAppliance) -> None:
    """RFC 7030 §4.1.1: /cacerts is served without client authentication (here: not even a
    trusted server certificate; the client checks it out of band)."""
    status, _h, body = curl(["--insecure", appliance.url("cacerts")])
    assert status == 200 and body


def test_cacerts_base64_profile_rfc8951_3(appliance: RunningAppliance) -> None:
    """RFC 8951 §3 / RFC 7030 §4.1.3: a base64 answer with Content-Transfer-Encoding."""
    status, headers, body = curl(["--insecure", url(appliance, "cacerts", "rfc")])
    assert status == 200
    assert headers["content-transfer-encoding"] == "base64"
    _assert_base64_lines(body)
    assert "EST Appliance Device CA" in pkcs7_certificates(base64.b64decode(body))


# --- media types, base64 tolerance, Content-Length ---------------------------------------------


def test_enroll_answer_media_type_rfc7030_4_2_3(appliance: RunningAppliance, work: Path) -> None:
    """RFC 7030 §4.2.3: application/pkcs7-mime; smime-type=certs-only, one certificate."""
    csr, _key = new_csr(work, "media-pump")
    status, headers, body = _post(appliance, "simpleenroll", csr, *ra(appliance.lab), label="rfc")
    assert status == 200, body
    assert headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert headers["content-transfer-encoding"] == "base64"
    _assert_base64_lines(body)
    assert cert_of(body, base64_body=True).subject.rfc4514_string() == "CN=media-pump"


def test_csr_media_type_enforced_rfc7030_4_2_1(appliance: RunningAppliance, work: Path) -> None:
    """RFC 7030 §4.2.1: the request is application/pkcs10; anything else is 415."""
    csr, _key = new_csr(work, "wrong-type")
    status, _h, body = curl(
        [
            *ra(appliance.lab),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            f"@{csr}",
            appliance.url("simpleenroll"),
        ]
    )
    assert status == 415
    assert b"Content-Type must be application/pkcs10" in body


def test_csr_encoding_decided_by_content_rfc8951_3(appliance: RunningAppliance, work: Path) -> None:
    """RFC 8951 §3: base64 with or without the header, wrapped or not, and raw DER with a
    misleading `Content-Transfer-Encoding: base64` are all accepted."""
    csr, _key = new_csr(work, "tolerant")
    der = csr.read_bytes()
    flat = base64.b64encode(der)
    wrapped = base64.encodebytes(der)  # 76 columns, LF
    unpadded = flat.rstrip(b"=")
    cases = [
        (flat, ["-H", "Content-Transfer-Encoding: base64"]),
        (wrapped, []),
        (unpadded, []),
        (der, ["-H", "Content-Transfer-Encoding: base64"]),
    ]
    for index, (payload, extra) in enumerate(cases):
        path = work / f"body-{index}"
        path.write_bytes(payload)
        status, _h, body = curl(
            [
                *ra(appliance.lab),
                *CSR_TYPE,
                *extra,
                "--data-binary",
                f"@{path}",
                appliance.url("simpleenroll"),
            ]
        )
        assert status == 200, (index, body)
    # Negative control: bytes that are neither base64 nor DER.
    path = work / "garbage"
    path.write_bytes(b"this is not a CSR at all!")
    status, _h, body = curl(
        [*ra(appliance.lab), *CSR_TYPE, "--data-binary", f"@{path}", appliance.url("simpleenroll")]
    )
    assert status == 400 and b"neither base64 nor DER" in body


def test_every_answer_carries_content_length_rfc9110_8_6(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """Issue 5: every answer (success, 202, 4xx, 405, 501) carries a matching Content-Length
    so a client can read it without waiting for the connection to close."""
    csr, _key = new_csr(work, "length")
    answers = [
        curl(["--cacert", str(lab.ca_cert), appliance.url("cacerts")]),
        curl(["--cacert", str(lab.ca_cert), url(appliance, "csrattrs", "rfc")]),
        _post(appliance, "simpleenroll", csr, *ra(lab), label="manual"),  # 202
        _post(appliance, "simpleenroll", csr, "--cacert", str(lab.ca_cert)),  # 401
        curl(["--cacert", str(lab.ca_cert), appliance.url("simpleenroll")]),  # 405
        _post(appliance, "fullcmc", csr, *ra(lab)),  # 501
        curl(["--cacert", str(lab.ca_cert), url(appliance, "cacerts", "nosuchlabel")]),  # 404
    ]
    seen = set()
    for status, headers, body in answers:
        seen.add(status)
        assert headers.get("content-length") == str(len(body)), (status, headers)
    assert seen == {200, 202, 401, 405, 501, 404}


# --- authentication ----------------------------------------------------------------------------


def test_password_endpoint_challenges_rfc7030_3_2_3(
    appliance: RunningAppliance, work: Path
) -> None:
    """RFC 7030 §3.2.3: 401 with WWW-Authenticate naming Basic and the realm; the right
    password then enrolls (positive control)."""
    csr, _key = new_csr(work, "basic-pump")
    status, headers, body = _post(
        appliance, "bootstrap", csr, "--cacert", str(appliance.lab.ca_cert)
    )
    assert status == 401
    assert headers["www-authenticate"].startswith('Basic realm="EST appliance"')
    status, _h, body = _post(
        appliance,
        "bootstrap",
        csr,
        "--cacert",
        str(appliance.lab.ca_cert),
        "-u",
        f"{LAB_USER}:{LAB_PASSWORD}",
    )
    assert status == 200, body


def test_pump_certificate_is_not_an_ra_rfc7030_3_7(appliance: RunningAppliance, work: Path) -> None:
    """RFC 7030 §3.7: only an RA (id-kp-cmcRA) enrolls for others; a pump's own certificate
    gets 403 on simpleenroll."""
    pump = enroll_pump(appliance, work, "not-an-ra")
    csr, _key = new_csr(work, "someone-else")
    status, _h, body = _post(
        appliance, "simpleenroll", csr, *_pump_tls(appliance.lab, pump.cert, pump.key)
    )
    assert status == 403 and b"not authorized as a registration authority" in body


# --- simplereenroll ------------------------------------------------------------------------------


def test_reenroll_renew_same_key_rfc7030_4_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.2: the pump renews with its current certificate; same key = renew. The
    ledger links the new certificate to the old one, which becomes superseded."""
    pump = enroll_pump(appliance, work, "renew-pump")
    csr, _ = new_csr(work, "renew-pump", key=pump.key)
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 200, body
    new = cert_of(body, base64_body=False)
    old = x509.load_pem_x509_certificate(pump.pem.encode())
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject
    assert _spki(new) == _spki(old)
    assert verify_with_ca(pkcs7_certificates(body), lab.ca_cert, work).returncode == 0
    ledger = SqliteLedger(lab.ledger)
    try:
        record = ledger.find(format(new.serial_number, "x"))
        assert record is not None and record.replaces == pump.serial
        assert record.endpoint == "simplereenroll"
        old_record = ledger.find(pump.serial)
        assert old_record is not None and old_record.status == SUPERSEDED
    finally:
        ledger.close()
    # The superseded certificate cannot renew again (negative control).
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 403 and b"is superseded" in body


def test_reenroll_rekey_new_key_rfc7030_4_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.2: a new key in the CSR = rekey; it succeeds and certifies the new key."""
    pump = enroll_pump(appliance, work, "rekey-pump")
    csr, new_key = new_csr(work, "rekey-pump")
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 200, body
    new = cert_of(body, base64_body=False)
    key = serialization.load_pem_private_key(new_key.read_bytes(), None)
    assert _spki(new) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert _spki(new) != _spki(x509.load_pem_x509_certificate(pump.pem.encode()))
    # The request's log line says what it was and what it replaced.
    old = f"{x509.load_pem_x509_certificate(pump.pem.encode()).serial_number:x}"
    assert re.search(
        rf"endpoint=simplereenroll .* status=200 serial={new.serial_number:x} kind=rekey "
        rf"profile=\S+ replaces={old} retired={old} ms=",
        appliance.log_text(),
    )


def test_reenroll_subject_must_match_rfc7030_4_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.2: a different Subject is 403 naming both subjects."""
    pump = enroll_pump(appliance, work, "subject-pump")
    csr, _ = new_csr(work, "other-subject", key=pump.key)
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 403
    assert b"CSR subject 'CN=other-subject' differs from the TLS client certificate subject" in body
    assert b"'CN=subject-pump'" in body


def test_reenroll_san_in_cert_absent_in_csr_rfc7030_4_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.2: the certificate has a SubjectAltName, the CSR none: 403 naming it."""
    pump = enroll_pump(appliance, work, "san-pump", san="DNS:san-pump.pumps.example")
    csr, _ = new_csr(work, "san-pump", key=pump.key)
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 403
    assert b"CSR has no subjectAltName but the TLS client certificate has DNS:san-pump" in body
    # Positive control: the same SAN renews.
    csr, _ = new_csr(work, "san-pump", key=pump.key, san="DNS:san-pump.pumps.example")
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 200, body


def test_reenroll_san_in_csr_absent_in_cert_rfc7030_4_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.2: the CSR adds a SubjectAltName the certificate lacks: 403 naming it."""
    pump = enroll_pump(appliance, work, "nosan-pump")
    csr, _ = new_csr(work, "nosan-pump", key=pump.key, san="DNS:extra.pumps.example")
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 403
    assert b"CSR requests subjectAltName DNS:extra.pumps.example but the TLS client" in body


def test_reenroll_revoked_certificate_refused_rfc7030_4_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.2 / §3.3.2: a client certificate revoked in the ledger cannot renew."""
    pump = enroll_pump(appliance, work, "revoked-pump")
    ledger = SqliteLedger(lab.ledger)
    try:
        assert ledger.set_status(pump.serial, REVOKED, dt.datetime.now(dt.UTC))
    finally:
        ledger.close()
    csr, _ = new_csr(work, "revoked-pump", key=pump.key)
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, pump.cert, pump.key))
    assert status == 403 and b"is revoked and cannot be renewed" in body


def test_reenroll_expired_certificate_refused_rfc7030_3_3_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §3.3.2: an expired client certificate fails TLS client authentication, so it
    never reaches reenroll; a valid one from the same CA, missing from the ledger, gets 403."""
    ca_key = serialization.load_pem_private_key((lab.certs / "ca-key.pem").read_bytes(), None)
    ca = x509.load_pem_x509_certificate(lab.ca_cert.read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = work / "forged-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    now = dt.datetime.now(dt.UTC)

    def signed(cn: str, not_after: dt.datetime) -> Path:
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        path = work / f"{cn}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    expired = signed("expired-pump", now - dt.timedelta(days=1))
    csr, _ = new_csr(work, "expired-pump", key=key_path)
    status, headers, _body = _post(
        appliance, "simplereenroll", csr, *_pump_tls(lab, expired, key_path)
    )
    assert status == 0, "the TLS handshake must fail for an expired client certificate"
    assert "expired" in headers["curl-error"]

    unknown = signed("unknown-pump", now + dt.timedelta(days=30))
    csr, _ = new_csr(work, "unknown-pump", key=key_path)
    status, _h, body = _post(appliance, "simplereenroll", csr, *_pump_tls(lab, unknown, key_path))
    assert status == 403 and b"was not issued by this appliance" in body


def test_reenroll_needs_a_client_certificate_rfc7030_4_2_2(
    appliance: RunningAppliance, work: Path
) -> None:
    """RFC 7030 §4.2.2: reenroll authenticates with the certificate being renewed."""
    csr, _ = new_csr(work, "anonymous")
    status, _h, body = _post(
        appliance, "simplereenroll", csr, "--cacert", str(appliance.lab.ca_cert)
    )
    assert status == 401 and b"needs a TLS client certificate" in body


def test_ra_reenrolls_on_behalf_of_a_pump_rfc7030_4_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.2 with §3.7: an RA renews for a pump; the CSR subject must match a
    currently valid certificate in the ledger, which the new one replaces."""
    pump = enroll_pump(appliance, work, "ra-renewed-pump")
    csr, _ = new_csr(work, "ra-renewed-pump", key=pump.key)
    status, _h, body = _post(appliance, "simplereenroll", csr, *ra(lab))
    assert status == 200, body
    ledger = SqliteLedger(lab.ledger)
    try:
        record = ledger.find(format(cert_of(body, base64_body=False).serial_number, "x"))
        assert record is not None and record.replaces == pump.serial
    finally:
        ledger.close()
    csr, _ = new_csr(work, "never-enrolled-pump")
    status, _h, body = _post(appliance, "simplereenroll", csr, *ra(lab))
    assert status == 403
    assert b"no valid certificate with subject 'CN=never-enrolled-pump' to renew" in body
    # A label can forbid RA renewals altogether.
    other = enroll_pump(appliance, work, "noreg-pump", label="noreg")
    csr, _ = new_csr(work, "noreg-pump", key=other.key)
    status, _h, body = _post(appliance, "simplereenroll", csr, *ra(lab), label="noreg")
    assert status == 403 and b"does not let a registration authority renew" in body


# --- duplicate-subject policy ------------------------------------------------------------------


def test_duplicate_subject_policies_issue5(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """Issue 5 (RFC 7030 §4.2.1 leaves it to CA policy): allow, reject with 409 naming the
    serial, supersede (old one marked, and here also revoked)."""
    first = enroll_pump(appliance, work, "dup-allow")
    second = enroll_pump(appliance, work, "dup-allow")
    assert first.serial != second.serial  # allow: both valid

    existing = enroll_pump(appliance, work, "dup-reject", label="rfc")
    csr, _ = new_csr(work, "dup-reject")
    status, _h, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="rfc")
    assert status == 409
    assert f"(serial {existing.serial})".encode() in body

    old = enroll_pump(appliance, work, "dup-supersede", label="supersede")
    new = enroll_pump(appliance, work, "dup-supersede", label="supersede")
    ledger = SqliteLedger(lab.ledger)
    try:
        assert ledger.find(first.serial).status == VALID  # type: ignore[union-attr]
        assert ledger.find(second.serial).status == VALID  # type: ignore[union-attr]
        old_record = ledger.find(old.serial)
        new_record = ledger.find(new.serial)
        assert old_record is not None and old_record.status == REVOKED
        assert new_record is not None and new_record.replaces == old.serial
        assert new_record.status == VALID and new_record.profile == "supersede"
    finally:
        ledger.close()


def test_duplicate_subject_reject_holds_under_concurrency_issue5(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """Issue 5, `reject`: requests for one new subject racing each other get one certificate
    and 409s, never two valid certificates (the ledger decides inside its write)."""
    import threading

    folders = [work / f"race-{i}" for i in range(6)]
    for folder in folders:
        folder.mkdir()
    csrs = [new_csr(folder, "dup-race")[0] for folder in folders]
    statuses: list[int] = []

    def post(csr: Path) -> None:
        status, _h, _b = _post(appliance, "simpleenroll", csr, *ra(lab), label="rfc")
        statuses.append(status)

    threads = [threading.Thread(target=post, args=(csr,)) for csr in csrs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409, 409, 409, 409, 409], statuses
    ledger = SqliteLedger(lab.ledger)
    try:
        assert len(ledger.valid_for_subject("CN=dup-race", dt.datetime.now(dt.UTC))) == 1
    finally:
        ledger.close()


# --- csrattrs ----------------------------------------------------------------------------------


def test_csrattrs_rfc7030_4_5_2(appliance: RunningAppliance, lab: Lab) -> None:
    """RFC 7030 §4.5.2: application/csrattrs, base64 DER; the configured attributes give
    exactly the RFC's own example. openssl parses it."""
    status, headers, body = curl(["--cacert", str(lab.ca_cert), url(appliance, "csrattrs", "rfc")])
    assert status == 200
    assert headers["content-type"] == "application/csrattrs"
    _assert_base64_lines(body)
    assert body.replace(b"\r\n", b"") == RFC7030_CSRATTRS_EXAMPLE
    parsed = openssl("asn1parse", "-inform", "DER", input_bytes=base64.b64decode(body))
    assert parsed.returncode == 0
    for name in (b"challengePassword", b"secp384r1", b"ecdsa-with-SHA384"):
        assert name in parsed.stdout


def test_csrattrs_none_configured_is_204_rfc7030_4_5_2(
    appliance: RunningAppliance, lab: Lab
) -> None:
    """RFC 7030 §4.5.2: no attributes configured: 204 with no body."""
    status, headers, body = curl(["--cacert", str(lab.ca_cert), appliance.url("csrattrs")])
    assert status == 204 and body == b""
    assert "content-type" not in headers
    # A PoP label always asks for challengePassword, even without csr_attributes.
    status, _h, body = curl(["--cacert", str(lab.ca_cert), url(appliance, "csrattrs", "pop")])
    assert status == 200
    assert (
        b"challengePassword"
        in openssl("asn1parse", "-inform", "DER", input_bytes=base64.b64decode(body)).stdout
    )


# --- serverkeygen ------------------------------------------------------------------------------


def _parts(headers: dict[str, str], body: bytes) -> list[email.message.Message]:
    head = f"Content-Type: {headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    assert message.is_multipart()
    return list(message.iter_parts())


def test_serverkeygen_rfc7030_4_4_2(appliance: RunningAppliance, lab: Lab, work: Path) -> None:
    """RFC 7030 §4.4.2: multipart/mixed, the key as application/pkcs8, the certificate as
    certs-only PKCS#7 certifying that key (not the CSR's); the key is in neither the ledger
    nor the log."""
    csr, csr_key = new_csr(work, "keygen-pump")
    status, headers, body = _post(appliance, "serverkeygen", csr, *ra(lab), label="keygen")
    assert status == 200, body
    assert headers["content-type"].startswith("multipart/mixed; boundary=")
    key_part, cert_part = _parts(headers, body)
    assert key_part.get_content_type() == "application/pkcs8"
    assert key_part["Content-Transfer-Encoding"] == "base64"
    assert cert_part.get_content_type() == "application/pkcs7-mime"
    assert cert_part.get_param("smime-type") == "certs-only"
    assert b"Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n" in body
    key_b64 = key_part.get_payload(decode=False)
    assert isinstance(key_b64, str)
    _assert_base64_lines(key_b64.encode())
    key_der = key_part.get_payload(decode=True)
    assert isinstance(key_der, bytes)
    key = serialization.load_der_private_key(key_der, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    cert_der = cert_part.get_payload(decode=True)
    assert isinstance(cert_der, bytes)
    certs = pkcs7_certificates(cert_der)
    cert = x509.load_pem_x509_certificate(certs.encode())
    assert cert.public_key() == key.public_key()
    csr_public = serialization.load_pem_private_key(csr_key.read_bytes(), None).public_key()
    assert cert.public_key() != csr_public
    assert verify_with_ca(certs, lab.ca_cert, work).returncode == 0
    # Never stored or logged: look for the key's DER and base64 in the database and the log.
    db = b"".join(p.read_bytes() for p in lab.ledger.parent.glob("ledger.db*"))
    assert key_der not in db
    assert base64.b64encode(key_der)[:40].decode() not in appliance.log_text()
    assert cert.public_bytes(serialization.Encoding.DER) in db  # the certificate is recorded


def test_serverkeygen_der_profile_binary_parts_rfc7030_4_4_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.4.2 under the DER response format: raw PKCS#8 and PKCS#7 parts."""
    csr, _ = new_csr(work, "keygen-der-pump")
    status, headers, body = _post(appliance, "serverkeygen", csr, *ra(lab))
    assert status == 200, body
    key_part, cert_part = _parts(headers, body)
    assert key_part.get_content_type() == "application/pkcs8"
    raw = body.split(b"\r\n\r\n", 2)[1].rsplit(b"\r\n--", 1)[0]
    key = serialization.load_der_private_key(raw, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert cert_part.get_content_type() == "application/pkcs7-mime"


@pytest.mark.parametrize(
    ("oid", "attribute"),
    [
        ("1.2.840.113549.1.9.16.2.37", "DecryptKeyIdentifier"),
        ("1.2.840.113549.1.9.16.2.54", "AsymmetricDecryptKeyIdentifier"),
    ],
)
def test_serverkeygen_refuses_key_encryption_it_cannot_honour_rfc7030_4_4_1(
    appliance: RunningAppliance, lab: Lab, work: Path, oid: str, attribute: str
) -> None:
    """RFC 7030 §4.4.1.1/§4.4.1.2: a server without the key the attribute identifies MUST end
    the request with an error; sending the key unencrypted instead would be less than asked."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = f"keyenc-{attribute.lower()}"
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    # The identifier is an OCTET STRING (RFC 7030 appendix A).
    builder = builder.add_attribute(
        x509.ObjectIdentifier(oid), b"kek-1", _tag=_ASN1Type.OctetString
    )
    csr = work / f"{name}.der"
    csr.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    assert (
        oid in openssl("req", "-inform", "DER", "-in", str(csr), "-noout", "-text").stdout.decode()
    )
    status, _headers, body = _post(appliance, "serverkeygen", csr, *ra(lab))
    assert status == 400, body
    assert f"encrypted ({attribute} (RFC 7030".encode() in body, body
    assert b"PRIVATE KEY" not in body and b"application/pkcs8" not in body
    assert name.encode() not in b"".join(
        p.read_bytes() for p in lab.ledger.parent.glob("ledger.db*")
    )
    # The same request without the attribute gets its key.
    plain, _ = new_csr(work, name)
    status, headers, body = _post(appliance, "serverkeygen", plain, *ra(lab))
    assert status == 200 and headers["content-type"].startswith("multipart/mixed"), body


# --- CA labels and routing ---------------------------------------------------------------------


def test_labels_side_by_side_rfc7030_3_2_2(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §3.2.2: /.well-known/est/<label>/<operation>; the bare path is the default.
    The default answers DER (IQE gateway), the rfc label base64, from the same appliance."""
    csr, _ = new_csr(work, "label-pump")
    status, headers, der = _post(appliance, "simpleenroll", csr, *ra(lab))
    assert status == 200 and "content-transfer-encoding" not in headers
    pkcs7_certificates(der, "DER")
    csr, _ = new_csr(work, "label-pump-2")
    status, headers, b64 = _post(appliance, "simpleenroll", csr, *ra(lab), label="rfc")
    assert status == 200 and headers["content-transfer-encoding"] == "base64"
    pkcs7_certificates(base64.b64decode(b64), "DER")
    ledger = SqliteLedger(lab.ledger)
    try:
        serial = format(cert_of(b64, base64_body=True).serial_number, "x")
        assert ledger.find(serial).profile == "rfc"  # type: ignore[union-attr]
    finally:
        ledger.close()


def test_unknown_label_or_operation_is_404_rfc7030_3_2_2(
    appliance: RunningAppliance, lab: Lab
) -> None:
    """RFC 7030 §3.2.2: an unknown label or operation is 404, with a sentence."""
    ca = ["--cacert", str(lab.ca_cert)]
    status, _h, body = curl([*ca, url(appliance, "cacerts", "nosuchlabel")])
    assert status == 404 and b"unknown CA label 'nosuchlabel'" in body
    status, _h, body = curl([*ca, url(appliance, "enrol", "rfc")])
    assert status == 404 and b"unknown EST operation 'enrol'" in body
    status, _h, body = curl([*ca, appliance.url("rfc/cacerts/extra")])
    assert status == 404


def test_wrong_method_is_405_with_allow_rfc9110_15_5_6(
    appliance: RunningAppliance, lab: Lab
) -> None:
    """RFC 7030 §3.2.2 operations have fixed methods; RFC 9110 §15.5.6 405 lists them."""
    status, headers, _body = curl(
        ["--cacert", str(lab.ca_cert), url(appliance, "simplereenroll", "rfc")]
    )
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _body = curl(
        ["--cacert", str(lab.ca_cert), "--data", "", url(appliance, "csrattrs", "rfc")]
    )
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_fullcmc_is_501_rfc7030_4_3(appliance: RunningAppliance, lab: Lab, work: Path) -> None:
    """RFC 7030 §4.3: Full CMC is optional; this appliance answers 501 with a sentence."""
    csr, _ = new_csr(work, "cmc")
    status, headers, body = _post(appliance, "fullcmc", csr, *ra(lab), label="rfc")
    assert status == 501
    assert headers["content-type"].startswith("text/plain")
    assert b"fullcmc (RFC 7030 \xc2\xa74.3) is not offered" in body


# --- manual approval -----------------------------------------------------------------------------


def _pending_id(body: bytes) -> int:
    text = body.decode()
    assert text.startswith("request "), text
    return int(text.split()[1])


def test_manual_approval_202_then_approve_rfc7030_4_2_3(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.3: 202 with Retry-After; `est-appliance pending` lists it; after
    `approve ID` the same CSR gets 200 with the certificate (and again the same one)."""
    csr, _ = new_csr(work, "approved-pump")
    status, headers, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
    assert status == 202, body
    assert headers["retry-after"] == "30"
    request_id = _pending_id(body)
    status, headers, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
    assert status == 202 and _pending_id(body) == request_id  # same request, same id
    listing = cli(lab, "pending")
    assert listing.returncode == 0 and "CN=approved-pump" in listing.stdout
    assert cli(lab, "approve", str(request_id)).returncode == 0
    assert cli(lab, "approve", str(request_id)).returncode == 1  # already decided
    status, _h, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
    assert status == 200, body
    cert = cert_of(body, base64_body=True)
    assert cert.subject.rfc4514_string() == "CN=approved-pump"
    status, _h, again = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
    assert status == 200 and cert_of(again, base64_body=True) == cert
    assert "CN=approved-pump" not in cli(lab, "pending").stdout
    # The log tells the first answer (issued) from the second (the same certificate again).
    log = appliance.log_text()
    assert log.count(f"serial={cert.serial_number:x} kind=enroll profile=") == 1
    assert log.count(f"serial={cert.serial_number:x} kind=resent profile=") == 1


def test_approved_request_resent_at_once_gets_one_certificate_rfc7030_4_2_3(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.3: simultaneous re-sends of one approved request all get the same
    certificate; the ledger holds one, linked to the request."""
    import threading

    csr, _ = new_csr(work, "resent-pump")
    status, _h, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
    assert status == 202, body
    assert cli(lab, "approve", str(_pending_id(body))).returncode == 0
    answers: list[tuple[int, bytes]] = []

    def resend() -> None:
        status, _h, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
        answers.append((status, body))

    threads = [threading.Thread(target=resend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _body in answers] == [200] * 6, answers
    serials = {cert_of(body, base64_body=True).serial_number for _status, body in answers}
    assert len(serials) == 1
    ledger = SqliteLedger(lab.ledger)
    try:
        issued = ledger.valid_for_subject("CN=resent-pump", dt.datetime.now(dt.UTC))
        assert [int(r.serial, 16) for r in issued] == list(serials)
    finally:
        ledger.close()


def test_manual_approval_reject_rfc7030_4_2_3(
    appliance: RunningAppliance, lab: Lab, work: Path
) -> None:
    """RFC 7030 §4.2.3: after `reject ID` the same CSR gets 403."""
    csr, _ = new_csr(work, "rejected-pump")
    status, _h, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
    assert status == 202
    request_id = _pending_id(body)
    assert cli(lab, "reject", str(request_id)).returncode == 0
    status, _h, body = _post(appliance, "simpleenroll", csr, *ra(lab), label="manual")
    assert status == 403 and f"request {request_id} was rejected".encode() in body


# --- proof-of-possession linking ---------------------------------------------------------------


def _pop_request(
    appliance: RunningAppliance,
    lab: Lab,
    label: str,
    *,
    tls13: bool = False,
    password: bytes | None = None,
    use_binding: bool = True,
) -> tuple[int, bytes]:
    """Enroll over one TLS connection whose tls-unique goes into the CSR's challengePassword."""
    context = ssl.create_default_context(cafile=str(lab.ca_cert))
    context.load_cert_chain(str(lab.ra_cert), str(lab.ra_key))
    version = ssl.TLSVersion.TLSv1_3 if tls13 else ssl.TLSVersion.TLSv1_2
    context.minimum_version = context.maximum_version = version
    host, port = appliance.base.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        conn.connect()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pop-{label}-{tls13}")])
        )
        if use_binding:
            binding = sock.get_channel_binding("tls-unique")
            value = password if password is not None else base64.b64encode(binding or b"")
            builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, value)
        csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        conn.request(
            "POST",
            f"/.well-known/est/{label}/simpleenroll",
            body=base64.b64encode(csr),
            headers={"Content-Type": "application/pkcs10"},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_pop_linking_tls_unique_rfc7030_3_5(appliance: RunningAppliance, lab: Lab) -> None:
    """RFC 7030 §3.5: the challengePassword must carry this connection's tls-unique (TLS 1.2):
    right value 200, another value 403, none 400."""
    status, body = _pop_request(appliance, lab, "pop")
    assert status == 200, body
    status, body = _pop_request(appliance, lab, "pop", password=base64.b64encode(b"x" * 12))
    assert status == 403 and b"does not match this TLS connection's tls-unique" in body
    status, body = _pop_request(appliance, lab, "pop", use_binding=False)
    assert status == 400 and b"CSR has no challengePassword" in body


def test_pop_linking_tls13_per_profile_rfc7030_3_5(appliance: RunningAppliance, lab: Lab) -> None:
    """RFC 7030 §3.5 with TLS 1.3 (no tls-unique, RFC 8446 §C.5): the profile decides —
    `refuse` answers 403 asking for TLS 1.2, `skip` enrolls unlinked."""
    status, body = _pop_request(appliance, lab, "pop", tls13=True, use_binding=False)
    assert status == 403 and b"connect with TLS 1.2" in body
    status, body = _pop_request(appliance, lab, "pop13", tls13=True, use_binding=False)
    assert status == 200, body


def _csr_with_a_two_valued_challenge_password(path: Path) -> Path:
    """A correctly signed PKCS#10 whose challengePassword is a SET of two values: RFC 2986
    allows it, cryptography cannot read it, and no library builds one, so it is built here."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cn = tlv(0x30, tlv(0x06, bytes.fromhex("550403")) + tlv(0x0C, b"NPPTWOVALUES"))
    password = tlv(0x06, bytes.fromhex("2a864886f70d010907"))  # 1.2.840.113549.1.9.7
    values = tlv(0x31, tlv(0x0C, b"first") + tlv(0x0C, b"second"))
    attributes = tlv(0xA0, tlv(0x30, password + values))
    info = tlv(0x30, tlv(0x02, b"\x00") + tlv(0x30, tlv(0x31, cn)) + spki + attributes)
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    ecdsa_sha256 = tlv(0x30, tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    path.write_bytes(tlv(0x30, info + ecdsa_sha256 + tlv(0x03, b"\x00" + signature)))
    return path


@pytest.mark.parametrize(("operation", "label"), [("simpleenroll", "pop"), ("serverkeygen", "")])
def test_unreadable_csr_attributes_are_400_not_500_rfc2986(
    appliance: RunningAppliance, lab: Lab, work: Path, operation: str, label: str
) -> None:
    """Where the appliance reads attributes (challengePassword for PoP linking, the
    key-encryption request of serverkeygen), one it cannot read is the client's to fix."""
    csr = _csr_with_a_two_valued_challenge_password(work / f"two-values-{operation}.der")
    assert (
        "challengePassword"
        in openssl("req", "-inform", "DER", "-in", str(csr), "-noout", "-text").stdout.decode()
    )
    status, _headers, body = curl(
        [
            "--tls-max",
            "1.2",
            *ra(lab),
            *CSR_TYPE,
            "--data-binary",
            f"@{csr}",
            url(appliance, operation, label),
        ]
    )
    assert status == 400, body
    assert b"CSR attributes cannot be read" in body and b"exactly one value" in body
    appliance.assert_alive()


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


__all__ = ["save_cert"]
