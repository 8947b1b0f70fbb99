"""Password and RA-certificate authentication without HTTP."""

from __future__ import annotations

import base64

import pytest

from appliance.auth import PasswordAuth, RaCertificateAuth, hash_password
from appliance.errors import Forbidden, Unauthorized
from appliance.identity import AuthMethod

HASH = hash_password("correct horse battery")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_right_password_gives_identity() -> None:
    auth = PasswordAuth({"gw": HASH}, "EST", 300)
    identity = auth.authenticate(_basic("gw", "correct horse battery"))
    assert identity.principal == "gw"
    assert identity.method is AuthMethod.PASSWORD


@pytest.mark.parametrize(
    "header,message",
    [
        (None, "credentials are required"),
        ("", "credentials are required"),
        ("Digest abc", "scheme 'Digest' is not supported"),
        ("Basic !!!", "not valid base64"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "form 'user:password'"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "not valid base64 of UTF-8"),
        (_basic("gw", "wrong"), "user name or password is wrong"),
        (_basic("other", "correct horse battery"), "user name or password is wrong"),
    ],
)
def test_refusals_are_401_with_the_realm(header: str | None, message: str) -> None:
    auth = PasswordAuth({"gw": HASH}, "EST", 300)
    with pytest.raises(Unauthorized) as caught:
        auth.authenticate(header)
    assert message in caught.value.message
    assert caught.value.headers() == {"WWW-Authenticate": 'Basic realm="EST", charset="UTF-8"'}


def test_verified_credentials_are_remembered_then_expire() -> None:
    clock = FakeClock()
    auth = PasswordAuth({"gw": HASH}, "EST", 60, monotonic=clock)
    good = _basic("gw", "correct horse battery")
    auth.authenticate(good)
    calls: list[int] = []

    def counting_verify(stored: str, password: str) -> bool:
        calls.append(1)
        return False

    auth._verify = counting_verify  # type: ignore[method-assign]
    auth.authenticate(good)  # from the cache: no Argon2 call
    assert calls == []
    with pytest.raises(Unauthorized):  # a wrong password is never served from the cache
        auth.authenticate(_basic("gw", "correct horse batterY"))
    assert calls == [1]
    clock.now += 61
    with pytest.raises(Unauthorized):  # expired: verified again (and the stub says no)
        auth.authenticate(good)


def test_ra_auth_requires_a_certificate() -> None:
    with pytest.raises(Unauthorized, match="client certificate is required"):
        RaCertificateAuth(()).authenticate(None)


def test_ra_auth_refuses_a_certificate_without_ra_eku(pump_cert_pem: str) -> None:
    with pytest.raises(Forbidden, match="not authorized as a registration authority"):
        RaCertificateAuth(()).authenticate(pump_cert_pem)


def test_ra_auth_accepts_a_listed_fingerprint(pump_cert_pem: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    fingerprint = (
        x509.load_pem_x509_certificate(pump_cert_pem.encode()).fingerprint(hashes.SHA256()).hex()
    )
    identity = RaCertificateAuth((fingerprint,)).authenticate(pump_cert_pem)
    assert identity.fingerprint == fingerprint
    assert identity.method is AuthMethod.CLIENT_CERTIFICATE


@pytest.fixture(scope="module")
def pump_cert_pem() -> str:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NPPBBB5")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(dt.datetime(2026, 1, 1))
        .not_valid_after(dt.datetime(2027, 1, 1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_concurrent_logins_with_the_same_credentials_verify_once() -> None:
    """A gateway opening many connections at once pays Argon2 once per process, not per thread."""
    import threading

    auth = PasswordAuth({"gw": HASH}, "EST", 300)
    real_verify = auth._verify
    calls: list[int] = []

    def counting_verify(stored: str, password: str) -> bool:
        calls.append(1)
        return real_verify(stored, password)

    auth._verify = counting_verify  # type: ignore[method-assign]
    good = _basic("gw", "correct horse battery")
    start = threading.Barrier(8)
    identities = []

    def login() -> None:
        start.wait()
        identities.append(auth.authenticate(good))

    threads = [threading.Thread(target=login) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(identities) == 8
    assert calls == [1]
    # Negative control: a wrong password is verified every time, never served from the cache.
    for _ in range(2):
        with pytest.raises(Unauthorized):
            auth.authenticate(_basic("gw", "wrong"))
    assert len(calls) == 3
