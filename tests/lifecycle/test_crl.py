"""The CRL publisher in-process with a controlled clock: regenerated when nextUpdate comes
near (and not before), numbers strictly increasing even when several threads publish at once,
RFC 5280 details (no reason code for `unspecified`, AKI, expired entries dropped), and a CRL
from another CA never served."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from cryptography import x509

from appliance.clock import utc_now
from appliance.config import CrlConfig, load_config
from appliance.crl import CrlPublisher
from appliance.errors import BadRequest, ConfigError
from appliance.issuer import CaMaterial
from appliance.ledger import IssuanceRecord, SqliteLedger
from appliance.revocation import normalize_serial, parse_reason
from tests.support import make_lab


class Clock:
    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[CaMaterial, Path]:
    lab = make_lab(tmp_path_factory.mktemp("crl-unit"))
    return CaMaterial.load(load_config(lab.config).pki, utc_now()), lab.folder


def record(serial: str, not_after: dt.datetime) -> IssuanceRecord:
    now = utc_now()
    return IssuanceRecord(
        serial=serial, subject=f"CN=NPP{serial}", sans=(), not_before=now, not_after=not_after,
        requester="test", auth_method="test", endpoint="simpleenroll", issued_at=now, der=b"",
    )  # fmt: skip


def test_refresh_before_next_update_and_not_earlier(material, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca, _folder = material
    clock = Clock()
    ledger = SqliteLedger(tmp_path / "ledger.db")
    config = CrlConfig(path=tmp_path / "crl" / "ca.pem", validity_hours=24, refresh_before_hours=6)
    publisher = CrlPublisher(ca, ledger, config, clock)
    first = publisher.current()
    assert first.number == 1 and config.path.is_file() and config.der_path.is_file()
    clock.now += dt.timedelta(hours=17)  # 7 h before nextUpdate: not due yet
    assert publisher.current().number == 1
    clock.now += dt.timedelta(hours=2)  # 5 h before nextUpdate: due
    second = publisher.current()
    assert second.number == 2
    assert second.next_update > first.next_update
    crl = x509.load_pem_x509_crl(config.path.read_bytes())
    assert crl.is_signature_valid(ca.key.public_key())
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ledger.close()


def test_entries_reasons_and_expiry(material, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca, _folder = material
    clock = Clock()
    ledger = SqliteLedger(tmp_path / "ledger.db")
    later = clock.now + dt.timedelta(days=30)
    for serial, not_after in (
        ("a1", later),
        ("b2", later),
        ("c3", clock.now + dt.timedelta(hours=1)),
    ):
        ledger.record_issuance(record(serial, not_after))
    ledger.revoke("a1", "keyCompromise", clock.now, "test")
    ledger.revoke("b2", "unspecified", clock.now, "test")
    ledger.revoke("c3", "keyCompromise", clock.now, "test")
    # A second revocation keeps the first reason.
    ledger.revoke("a1", "superseded", clock.now + dt.timedelta(minutes=5), "test")
    publisher = CrlPublisher(ca, ledger, CrlConfig(path=tmp_path / "ca.pem"), clock)
    clock.now += dt.timedelta(hours=2)  # c3 has expired: it leaves the CRL (RFC 5280 §3.3)
    crl = x509.load_der_x509_crl(publisher.publish("test").der)
    entries = {format(e.serial_number, "x"): e for e in crl}
    assert set(entries) == {"a1", "b2"}
    reason = entries["a1"].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    with pytest.raises(x509.ExtensionNotFound):  # RFC 5280 §5.3.1: absent, not `unspecified`
        entries["b2"].extensions.get_extension_for_class(x509.CRLReason)
    ledger.close()


def test_concurrent_publishers_get_distinct_increasing_numbers(material, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca, _folder = material
    ledger = SqliteLedger(tmp_path / "ledger.db")
    config = CrlConfig(path=tmp_path / "ca.pem")
    numbers: list[int] = []
    lock = threading.Lock()

    def publish() -> None:
        publisher = CrlPublisher(ca, SqliteLedger(tmp_path / "ledger.db"), config, utc_now)
        for _ in range(5):
            number = publisher.publish("race").number
            with lock:
                numbers.append(number)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 21))
    final = x509.load_pem_x509_crl(config.path.read_bytes())
    number = final.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 20  # the file holds the last one signed, never an older one
    ledger.close()


def test_a_crl_of_another_ca_is_replaced(material, tmp_path: Path, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    ca, _folder = material
    other_lab = make_lab(tmp_path_factory.mktemp("other-ca"))
    other = CaMaterial.load(load_config(other_lab.config).pki, utc_now())
    config = CrlConfig(path=tmp_path / "ca.pem")
    ledger = SqliteLedger(tmp_path / "ledger.db")
    CrlPublisher(other, ledger, config, utc_now).publish("other")
    published = CrlPublisher(ca, ledger, config, utc_now).current()
    crl = x509.load_der_x509_crl(published.der)
    assert crl.issuer == ca.cert.subject and crl.is_signature_valid(ca.key.public_key())
    ledger.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("keyCompromise", "keyCompromise"), ("key-compromise", "keyCompromise"),
     ("CESSATION_OF_OPERATION", "cessationOfOperation"), ("unspecified", "unspecified")],
)  # fmt: skip
def test_reason_names(text: str, expected: str) -> None:
    assert parse_reason(text) == expected


@pytest.mark.parametrize("text", ["certificateHold", "lost", "", "removeFromCRL"])
def test_refused_reason_names(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_reason(text)


def test_serial_forms() -> None:
    assert normalize_serial("0x00AB:CD") == "abcd"
    assert normalize_serial(" 4B 1F ") == "4b1f"
    for bad in ("", "xyz", "12g4", "1" * 65):
        with pytest.raises(BadRequest):
            normalize_serial(bad)


def test_crl_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="refresh_before_hours"):
        CrlConfig(validity_hours=6, refresh_before_hours=6)
    with pytest.raises(ConfigError, match="distribution_url"):
        CrlConfig(distribution_url="ldap://x")
