"""How the ledger and the log write a certificate's subjectAltName: as csr_policy names it."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from appliance.config import CsrPolicyConfig
from appliance.csr_policy import vet
from appliance.errors import Forbidden
from appliance.service import requested_san_of

_KEY = ec.generate_private_key(ec.SECP256R1())
_RID = ObjectIdentifier("1.3.6.1.4.1.55555.7")
_NAMES: list[x509.GeneralName] = [
    x509.DNSName("pump-7.example"),
    x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
    x509.RFC822Name("biomed@example.org"),
    x509.UniformResourceIdentifier("urn:pump:7"),
    x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pump-7")])),
    x509.RegisteredID(_RID),
    x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x06pump-7"),
]


def _certificate(names: list[x509.GeneralName]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pump-7")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(_KEY, hashes.SHA256())
    )


def test_every_kind_of_name_is_written_as_kind_colon_value() -> None:
    assert requested_san_of(_certificate(_NAMES)) == (
        "DNS:pump-7.example",
        "IP:10.0.0.7",
        "email:biomed@example.org",
        "URI:urn:pump:7",
        "dirName:CN=pump-7",
        "RID:1.3.6.1.4.1.55555.7",
        "otherName:1.3.6.1.4.1.311.20.2.3",
    )


def test_a_registered_id_reads_the_same_in_the_ledger_and_in_a_refusal() -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pump-7")]))
        .add_extension(x509.SubjectAlternativeName([x509.RegisteredID(_RID)]), critical=False)
        .sign(_KEY, hashes.SHA256())
    )
    refusal = ""
    try:
        vet(csr, CsrPolicyConfig(san_types=("DNS",)), rule="enrollment.csr_policy")
    except Forbidden as error:
        refusal = error.message
    (recorded,) = requested_san_of(_certificate([x509.RegisteredID(_RID)]))
    assert recorded == "RID:1.3.6.1.4.1.55555.7"
    assert f"subjectAltName {recorded} is not allowed" in refusal
