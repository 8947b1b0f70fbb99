"""The pieces behind the RFC rules, checked without a server: CsrAttrs DER (RFC 7030 §4.5.2),
multipart/mixed (RFC 2046 §5.1 for §4.4.2), profile configuration (§3.2.2) and ledger
migrations (a v1 database from the appliance core opens and gains the new columns)."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import sqlite3
from pathlib import Path

import pytest

from appliance.config import CsrAttributesConfig, parse_config
from appliance.csrattrs import csr_attributes_der, integer, oid
from appliance.errors import ConfigError
from appliance.ledger import (
    _MIGRATIONS,
    ApprovalState,
    IssuanceRecord,
    PendingRequest,
    SqliteLedger,
)
from appliance.multipart import Part, multipart_mixed
from tests.support import openssl


def test_csrattrs_matches_the_rfc7030_4_5_2_example() -> None:
    """RFC 7030 §4.5.2: challengePassword, P-384 key, macAddress extension, SHA-384."""
    der = csr_attributes_der(
        CsrAttributesConfig(key_type="ec-p384", extension_requests=("macAddress",)),
        challenge_password=True,
    )
    assert der is not None
    assert base64.b64encode(der) == (
        b"MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJ"
        b"BgcrBgEBAQEWBggqhkjOPQQDAw=="
    )


def test_csrattrs_rsa_and_empty_rfc7030_4_5_2() -> None:
    """RFC 7030 §4.5.2: nothing configured means no CsrAttrs (the server answers 204)."""
    assert csr_attributes_der(CsrAttributesConfig(), challenge_password=False) is None
    der = csr_attributes_der(CsrAttributesConfig(key_type="rsa-3072"), challenge_password=False)
    assert der is not None
    parsed = openssl("asn1parse", "-inform", "DER", input_bytes=der).stdout.decode()
    assert "rsaEncryption" in parsed and "INTEGER           :0C00" in parsed
    assert "sha256WithRSAEncryption" in parsed


@pytest.mark.parametrize(
    ("dotted", "expected"),
    [("2.5.29.17", "0603551d11"), ("1.2.840.113549.1.9.7", "06092a864886f70d010907")],
)
def test_der_oid_encoding_x690_8_19(dotted: str, expected: str) -> None:
    assert oid(dotted).hex() == expected


def test_der_integer_and_long_lengths_x690_8_1_3() -> None:
    assert integer(2048).hex() == "02020800"
    assert integer(128).hex() == "02020080"  # a leading zero keeps it positive
    with pytest.raises(ValueError, match="not an object identifier"):
        oid("3.1")


def test_multipart_parses_with_the_stdlib_rfc2046_5_1() -> None:
    content_type, body = multipart_mixed(
        [
            Part("application/pkcs8", b"S0VZ\r\n", "base64"),
            Part("application/pkcs7-mime; smime-type=certs-only", b"\x30\x0d\x0a\x00"),
        ]
    )
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    first, second = message.iter_parts()
    assert first.get_payload(decode=True) == b"KEY"
    assert second.get_content_type() == "application/pkcs7-mime"
    assert body.endswith(b"--\r\n")
    with pytest.raises(ValueError, match="boundary occurs"):
        multipart_mixed([Part("text/plain", b"--fixed")], boundary="fixed")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"profiles": {"cacerts": {}}},
            "profiles.cacerts: an EST operation name cannot be a label",
        ),
        ({"profiles": {"a/b": {}}}, "profiles.a/b: a label is 1-64 letters"),
        (
            {"profiles": {"rfc": {"enrollment": {"validity_days": 0}}}},
            "profiles.rfc.enrollment.validity_days: must be between 1 and 3650, got 0",
        ),
        (
            {"profiles": {"rfc": {"enrollment": {"duplicate_subject": "maybe"}}}},
            "profiles.rfc.enrollment.duplicate_subject: must be one of allow, reject, supersede",
        ),
        (
            {"enrollment": {"csr_attributes": {"extension_requests": ["colour"]}}},
            "enrollment.csr_attributes.extension_requests: 'colour' is neither a dotted OID",
        ),
        ({"profiles": {"rfc": {"response_format": "xml"}}}, "profiles.rfc.response_format"),
    ],
)
def test_profile_config_errors_name_the_key_rfc7030_3_2_2(
    raw: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("/", ".")):
        parse_config(raw, base_dir=Path())


def test_default_profile_is_todays_keys_rfc7030_3_2_2() -> None:
    """The bare path keeps gateway.response_format, enrollment.* and
    auth.simpleenroll_allow_basic; a label defaults to base64."""
    config = parse_config(
        {
            "gateway": {"response_format": "der"},
            "enrollment": {"validity_days": 30},
            "auth": {"simpleenroll_allow_basic": True},
            "profiles": {"rfc": {}},
        },
        base_dir=Path(),
    )
    profiles = config.all_profiles()
    assert profiles[""].response_format == "der"
    assert profiles[""].enrollment.validity_days == 30
    assert profiles[""].simpleenroll_allow_basic is True
    assert profiles["rfc"].response_format == "base64"
    assert profiles["rfc"].enrollment.validity_days == 365


def test_ledger_migrates_a_version_1_database(tmp_path: Path) -> None:
    """Migration 1 is never edited; 2 and 3 add the replaces link, status and approvals to a
    database the appliance core created, keeping its rows."""
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.executescript(_MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO certificates VALUES ('ab','CN=old','','2026-01-01T00:00:00+00:00',"
        "'2027-01-01T00:00:00+00:00','ra','client-certificate','simpleenroll',"
        "'2026-01-01T00:00:00+00:00','valid',x'30')"
    )
    conn.commit()
    conn.close()
    ledger = SqliteLedger(path)
    try:
        assert ledger.schema_version() == len(_MIGRATIONS) >= 3
        old = ledger.find("ab")
        assert old is not None and old.replaces is None and old.profile == ""
        now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
        ledger.record_issuance(
            IssuanceRecord(
                serial="cd",
                subject="CN=old",
                sans=(),
                not_before=now,
                not_after=now + dt.timedelta(days=1),
                requester="ra",
                auth_method="client-certificate",
                endpoint="simplereenroll",
                issued_at=now,
                der=b"\x30",
                replaces="ab",
            ),
            retire=("ab",),
        )
        assert ledger.find("ab").status == "superseded"  # type: ignore[union-attr]
        assert [r.serial for r in ledger.valid_for_subject("CN=old", now)] == ["cd"]
        pending = PendingRequest("fp", "", "simpleenroll", "CN=x", "ra", b"\x30", now)
        first = ledger.add_pending(pending)
        assert ledger.add_pending(pending).id == first.id  # the same request, once
        decided = ledger.decide(first.id, ApprovalState.REJECTED, now)
        assert decided.state is ApprovalState.REJECTED and decided.decided == now
        with pytest.raises(ValueError, match="already rejected"):
            ledger.decide(first.id, ApprovalState.APPROVED, now)
    finally:
        ledger.close()
