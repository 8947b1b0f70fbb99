"""The IQE gateway model against real appliances: both approaches, every failure classified
into its branch of the troubleshooting tree, the server's own sentences surfaced."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from simulator.gateway import Approach, Gateway
from simulator.pki import KeyType, create_ca, fingerprint, issue_client_certificate, write_key
from simulator.pump import Pump
from simulator.troubleshooting import Branch, EnrollmentError
from tests.e2e.conftest import iqe_sim
from tests.support import LAB_PASSWORD, LAB_USER, Lab, RunningAppliance, curl, openssl

pytestmark = pytest.mark.e2e


def password_gateway(appliance: RunningAppliance, **kwargs: object) -> Gateway:
    settings: dict[str, object] = {
        "ca_file": appliance.lab.ca_cert,
        "approach": Approach.PASSWORD,
        "username": LAB_USER,
        "password": LAB_PASSWORD,
    }
    settings.update(kwargs)
    return Gateway(appliance.base, **settings)  # type: ignore[arg-type]


def ra_gateway(appliance: RunningAppliance, **kwargs: object) -> Gateway:
    settings: dict[str, object] = {
        "ca_file": appliance.lab.ca_cert,
        "approach": Approach.RA,
        "ra_cert": appliance.lab.ra_cert,
        "ra_key": appliance.lab.ra_key,
    }
    settings.update(kwargs)
    return Gateway(appliance.base, **settings)  # type: ignore[arg-type]


def failure(gateway: Gateway, csr_der: bytes) -> EnrollmentError:
    with gateway, pytest.raises(EnrollmentError) as caught:
        gateway.enroll(csr_der)
    return caught.value


@pytest.mark.parametrize("approach", ["password", "ra"])
@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.EC_P256])
def test_both_approaches_install_a_verified_bundle(
    appliance: RunningAppliance, out: Path, approach: str, key_type: KeyType
) -> None:
    make = password_gateway if approach == "password" else ra_gateway
    pump = Pump.create("NPPBBB5", out / "NPPBBB5", key_type)
    with make(appliance) as gateway:
        enrollment = gateway.enroll_pump(pump, gateway.fetch_cacerts())
    assert enrollment.request_id
    assert stat.S_IMODE(pump.key_file.stat().st_mode) == 0o600
    verdict = openssl("verify", "-CAfile", str(pump.ca_file), str(pump.cert_file))
    assert verdict.returncode == 0, verdict.stderr.decode()
    text = openssl("x509", "-noout", "-text", "-in", str(pump.cert_file)).stdout.decode()
    assert "CN = NPPBBB5" in text
    assert "TLS Web Client Authentication" in text
    # The key installed is the one the certificate certifies.
    pub = openssl("pkey", "-in", str(pump.key_file), "-pubout").stdout
    cert_pub = openssl("x509", "-noout", "-pubkey", "-in", str(pump.cert_file)).stdout
    assert pub == cert_pub


def test_wrong_password_surfaces_the_servers_401(appliance: RunningAppliance, out: Path) -> None:
    pump = Pump.create("NPP0401", out)
    error = failure(password_gateway(appliance, password="not-the-password"), pump.csr_der)
    assert error.branch is Branch.CREDENTIALS
    assert error.status == 401
    # Exactly what curl gets from the same request: the gateway shows the server's sentence.
    status, _h, body = curl(
        [
            "--cacert",
            str(appliance.lab.ca_cert),
            "-u",
            f"{LAB_USER}:not-the-password",
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            "@/dev/null",
            appliance.url("bootstrap"),
        ]
    )
    assert status == 401
    assert error.server_message == body.decode().strip()
    assert error.server_message == "user name or password is wrong"
    assert "passwd" in error.fix


def test_weak_key_surfaces_the_servers_400(appliance: RunningAppliance) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key is the point
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NPPWEAK")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    error = failure(ra_gateway(appliance), csr)
    assert error.branch is Branch.REQUEST
    assert error.status == 400
    assert error.server_message is not None
    assert "1024" in error.server_message
    assert error.server_message in str(error)


def test_pump_certificate_as_ra_is_403(appliance: RunningAppliance, out: Path) -> None:
    pump = Pump.create("NPP0403", out / "p")
    with ra_gateway(appliance) as gateway:
        gateway.enroll_pump(pump, gateway.fetch_cacerts())
    other = Pump.create("NPP0404", out / "q")
    error = failure(
        ra_gateway(appliance, ra_cert=pump.cert_file, ra_key=pump.key_file), other.csr_der
    )
    assert error.branch is Branch.AUTHORIZATION
    assert error.status == 403
    assert error.server_message and "registration authority" in error.server_message


def test_ra_certificate_from_foreign_ca_fails_the_handshake(
    appliance: RunningAppliance, out: Path
) -> None:
    foreign = create_ca(out / "foreign", "Foreign RA CA")
    fake_ra = Pump.create("Fake RA", out / "fake")
    cert = issue_client_certificate(foreign, x509.load_der_x509_csr(fake_ra.csr_der))
    (out / "ra.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(out / "ra-key.pem", fake_ra.key)
    pump = Pump.create("NPP0495", out / "p")
    error = failure(
        ra_gateway(appliance, ra_cert=out / "ra.pem", ra_key=out / "ra-key.pem"), pump.csr_der
    )
    assert error.branch is Branch.TLS_CLIENT_CERT, str(error)


def test_untrusted_server_is_a_tls_trust_failure(appliance: RunningAppliance, out: Path) -> None:
    other_ca = create_ca(out / "other", "Some other CA")
    pump = Pump.create("NPP0TLS", out / "p")
    error = failure(password_gateway(appliance, ca_file=other_ca.cert), pump.csr_der)
    assert error.branch is Branch.TLS_TRUST
    assert error.status is None


def test_pinning_by_fingerprint(appliance: RunningAppliance, out: Path) -> None:
    ca = x509.load_pem_x509_certificate(appliance.lab.ca_cert.read_bytes())
    pump = Pump.create("NPPPIN1", out / "p")
    with password_gateway(appliance, ca_file=None, pin=fingerprint(ca)) as gateway:
        assert gateway.pin_ca() == (fingerprint(ca),)
        gateway.enroll_pump(pump, gateway.fetch_cacerts())
    assert pump.installed
    wrong = "AB:" * 31 + "AB"
    with (
        password_gateway(appliance, ca_file=None, pin=wrong) as gateway,
        pytest.raises(EnrollmentError) as caught,
    ):
        gateway.pin_ca()
    assert caught.value.branch is Branch.TLS_TRUST


def test_base64_answer_read_as_der_is_diagnosed(b64_appliance: RunningAppliance, out: Path) -> None:
    pump = Pump.create("NPPB64D", out / "p")
    error = failure(ra_gateway(b64_appliance, response_format="der"), pump.csr_der)
    assert error.branch is Branch.PKCS7
    assert "base64 text read as DER" in error.message
    assert "response_format: der" in error.fix
    # Positive controls: a gateway expecting base64, or detecting it, reads the same answer.
    for expected in ("base64", "auto"):
        again = Pump.create(f"NPPB64{expected[0].upper()}", out / expected)
        with ra_gateway(b64_appliance, response_format=expected) as gateway:
            gateway.enroll_pump(again, gateway.fetch_cacerts())
        assert again.installed


def test_diagnose_names_the_format_mismatch(b64_appliance: RunningAppliance) -> None:
    lab: Lab = b64_appliance.lab
    common = ["diagnose", "--url", b64_appliance.base, "--ca-file", str(lab.ca_cert)]
    common += ["--approach", "ra", "--ra-cert", str(lab.ra_cert), "--ra-key", str(lab.ra_key)]
    result = iqe_sim(*common, "--format", "der")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fails at branch 'pkcs7-format'" in result.stdout
    assert "base64 text read as DER" in result.stdout
    ok = iqe_sim(*common, "--format", "auto")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every branch of the troubleshooting tree passes" in ok.stdout


def test_diagnose_names_wrong_credentials(appliance: RunningAppliance) -> None:
    lab: Lab = appliance.lab
    result = iqe_sim(
        "diagnose", "--url", appliance.base, "--ca-file", str(lab.ca_cert),
        "--user", LAB_USER, "--password", "wrong-password-123",
    )  # fmt: skip
    assert result.returncode == 1
    assert "fails at branch '401-credentials'" in result.stdout
    assert "user name or password is wrong" in result.stdout


def test_diagnose_names_an_unreachable_server(out: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = iqe_sim("diagnose", "--url", f"https://127.0.0.1:{port}", "--password", "x" * 12)
    assert result.returncode == 1
    assert "fails at branch 'connect'" in result.stdout
