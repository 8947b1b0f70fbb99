"""RA scope and CSR policy against a running appliance (issue 7).

Three RA certificates from one CA (the lab's, and two from `est-appliance issue-ra`): each scope
is selected by fingerprint, so two RAs with the same subject get different rights, and an RA
without a scope may do nothing. Two CA labels show the CSR policy refusing (`strict`) and
stripping (`strip`) what a CSR may not ask for; the issued certificate is read back with openssl.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from appliance.auth import hash_password
from appliance.config import AuthConfig, RaScopeConfig
from appliance.errors import ConfigError
from tests.support import (
    LAB_PASSWORD,
    LAB_USER,
    RunningAppliance,
    curl,
    curl_password_enroll,
    curl_ra_enroll,
    lab_password_hash,
    make_csr,
    make_lab,
    openssl,
    pkcs7_certificates,
    run_cli,
    start_appliance,
    verify_with_ca,
    write_config,
)


@dataclass(frozen=True)
class Ra:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Scoped:
    appliance: RunningAppliance
    iqe: Ra  # the lab's RA: scope "iqe"
    keygen: Ra  # scope "keygen"
    unscoped: Ra  # no scope


def _fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":")


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scoped]:
    folder = tmp_path_factory.mktemp("ra-scope")
    profiles = {
        "strict": {
            "enrollment": {
                "csr_policy": {
                    "ca_request": "refuse",
                    "unknown_critical": "refuse",
                    "names": "refuse",
                    "san_types": ["DNS"],
                    "san_patterns": {"DNS": r"[a-z0-9-]+\.pumps\.example"},
                    "subject_attributes": ["CN", "O", "OU"],
                }
            }
        },
        "strip": {
            "enrollment": {
                "csr_policy": {
                    "ca_request": "strip",
                    "unknown_critical": "strip",
                    "names": "strip",
                    "san_types": ["DNS"],
                    "subject_attributes": ["CN", "OU"],
                }
            }
        },
    }
    lab = make_lab(folder, {"profiles": profiles})
    keygen = Ra(folder / "keygen-ra-cert.pem", folder / "keygen-ra-key.pem")
    unscoped = Ra(folder / "other-ra-cert.pem", folder / "other-ra-key.pem")
    for ra in (keygen, unscoped):
        run_cli(
            "issue-ra", "--config", str(lab.config), "--cert", str(ra.cert), "--key", str(ra.key)
        )
    scopes = {
        "iqe": {
            "fingerprint": _fingerprint(lab.ra_cert),
            "labels": ["default", "strict", "strip"],
            "operations": ["simpleenroll", "simplereenroll"],
            "common_name_pattern": "NPP[0-9]{4}",
        },
        "keygen": {
            # Same subject as the lab RA: only the fingerprint tells them apart.
            "fingerprint": _fingerprint(keygen.cert),
            "labels": ["strip"],
            "operations": ["serverkeygen"],
            "subject_pattern": "CN=KEYGEN-[0-9]+",
        },
    }
    write_config(folder, {"profiles": profiles, "auth": {"ra_scopes": scopes}})
    running = start_appliance(lab)
    yield Scoped(running, Ra(lab.ra_cert, lab.ra_key), keygen, unscoped)
    running.stop()


def _enroll(scoped: Scoped, ra: Ra, path: str, csr: Path) -> tuple[int, dict[str, str], bytes]:
    appliance = scoped.appliance
    return curl(
        [
            "--cacert",
            str(appliance.lab.ca_cert),
            "--cert",
            str(ra.cert),
            "--key",
            str(ra.key),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{csr}",
            appliance.url(path),
        ]
    )


RA_SCOPE_CASES: list[tuple[str, str, str, int, str]] = [
    ("iqe", "simpleenroll", "NPP1234", 200, ""),
    ("iqe", "strict/simpleenroll", "NPP1240", 200, ""),
    (
        "iqe",
        "simpleenroll",
        "laptop-7",
        403,
        "may not enroll CN 'laptop-7': it does not match "
        "auth.ra_scopes.iqe.common_name_pattern 'NPP[0-9]{4}'",
    ),
    ("iqe", "serverkeygen", "NPP1235", 403, "auth.ra_scopes.iqe.operations allows"),
    ("keygen", "strip/serverkeygen", "KEYGEN-1", 200, ""),
    ("keygen", "simpleenroll", "KEYGEN-2", 403, "auth.ra_scopes.keygen.labels allows strip"),
    (
        "keygen",
        "strip/serverkeygen",
        "NPP1236",
        403,
        "does not match auth.ra_scopes.keygen.subject_pattern",
    ),
    ("unscoped", "simpleenroll", "NPP1237", 403, "matches no entry of auth.ra_scopes"),
]


@pytest.mark.parametrize("case", RA_SCOPE_CASES)
def test_ra_scope(scoped: Scoped, tmp_path: Path, case: tuple[str, str, str, int, str]) -> None:
    ra_name, path, cn, status, message = case
    csr, _key = make_csr(tmp_path, cn)
    got, _h, body = _enroll(scoped, getattr(scoped, ra_name), path, csr)
    assert got == status, body
    assert message.encode() in body
    if status == 200:
        assert f"subject=CN = {cn}" in _certificates(body, path)


def test_password_enrollment_is_not_ra_scoped(scoped: Scoped, tmp_path: Path) -> None:
    csr, _key = make_csr(tmp_path, "not-a-pump-serial")
    appliance = scoped.appliance
    status, _h, body = curl_password_enroll(
        appliance.lab, appliance.url("bootstrap"), csr, LAB_USER, LAB_PASSWORD
    )
    assert status == 200, body


WARD_USER, WARD_PASSWORD = "ward-3", "ward-three-password-2024"


@pytest.fixture(scope="module")
def user_scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    """A scope for the gateway's password user only: password users are scoped, RA
    certificates (no certificate scope configured) are not."""
    folder = tmp_path_factory.mktemp("user-scope")
    users = {LAB_USER: lab_password_hash(), WARD_USER: hash_password(WARD_PASSWORD)}
    scopes = {
        "gateway-password": {
            "user": LAB_USER,
            "labels": ["default"],
            "operations": ["simpleenroll"],
            "common_name_pattern": "NPP[0-9]{4}",
        }
    }
    lab = make_lab(folder, {"auth": {"users": users, "ra_scopes": scopes}})
    running = start_appliance(lab)
    yield running
    running.stop()


USER_SCOPE_CASES: list[tuple[str, str, int, str]] = [
    (LAB_USER, "NPP3001", 200, ""),
    (
        LAB_USER,
        "laptop-9",
        403,
        f"user '{LAB_USER}' may not enroll CN 'laptop-9': it does not match "
        "auth.ra_scopes.gateway-password.common_name_pattern 'NPP[0-9]{4}'",
    ),
    (
        WARD_USER,
        "NPP3002",
        403,
        f"user '{WARD_USER}' matches no entry of auth.ra_scopes, so it may not enroll "
        "anything; add a scope for its user name",
    ),
]


@pytest.mark.parametrize("case", USER_SCOPE_CASES)
def test_password_user_scope(
    user_scoped: RunningAppliance, tmp_path: Path, case: tuple[str, str, int, str]
) -> None:
    user, cn, status, message = case
    password = LAB_PASSWORD if user == LAB_USER else WARD_PASSWORD
    csr, _key = make_csr(tmp_path, cn)
    appliance = user_scoped
    got, _h, body = curl_password_enroll(
        appliance.lab, appliance.url("bootstrap"), csr, user, password
    )
    assert got == status, body
    assert message.encode() in body
    if status == 200:
        assert f"subject=CN = {cn}" in _certificates(body, "bootstrap")


def test_ra_certificates_stay_unscoped_when_only_users_are(
    user_scoped: RunningAppliance, tmp_path: Path
) -> None:
    csr, _key = make_csr(tmp_path, "laptop-10")
    appliance = user_scoped
    status, _h, body = curl_ra_enroll(appliance.lab, appliance.url("simpleenroll"), csr)
    assert status == 200, body


def test_a_user_scope_must_name_a_configured_user() -> None:
    with pytest.raises(ConfigError, match=r"auth.ra_scopes.night.user: no user 'nobody'"):
        AuthConfig(
            users={LAB_USER: lab_password_hash()},
            ra_scopes={"night": RaScopeConfig(user="nobody")},
        )
    with pytest.raises(ConfigError, match="set exactly one of fingerprint, subject"):
        RaScopeConfig(user=LAB_USER, subject="CN=IQE Gateway RA")


STRICT = "profiles.strict.enrollment.csr_policy"


@pytest.mark.parametrize(
    ("subject", "extensions", "message"),
    [
        ("/CN=NPP2001", ("basicConstraints=critical,CA:TRUE",), f"({STRICT}.ca_request: refuse)"),
        (
            "/CN=NPP2002",
            ("1.3.6.1.4.1.99999.1=critical,DER:0500",),
            f"extension 1.3.6.1.4.1.99999.1 critical and this CA does not issue it "
            f"({STRICT}.unknown_critical: refuse)",
        ),
        (
            "/CN=NPP2003",
            ("subjectAltName=email:pump@example.org",),
            f"subjectAltName email:pump@example.org is not allowed: {STRICT}.san_types allows DNS",
        ),
        (
            "/CN=NPP2004",
            ("subjectAltName=DNS:evil.example.com",),
            f"subjectAltName DNS:evil.example.com does not match {STRICT}.san_patterns.DNS",
        ),
        (
            "/CN=NPP2005/title=boss",
            (),
            f"subject attribute title is not allowed: {STRICT}.subject_attributes allows CN, O, OU",
        ),
    ],
)
def test_strict_profile_refuses_naming_the_rule(
    scoped: Scoped, tmp_path: Path, subject: str, extensions: tuple[str, ...], message: str
) -> None:
    extra = ["-subj", subject]
    for extension in extensions:
        extra += ["-addext", extension]
    csr, _key = make_csr(tmp_path, "strict", extra=tuple(extra))
    status, _h, body = _enroll(scoped, scoped.iqe, "strict/simpleenroll", csr)
    assert status == 403, body
    assert message.encode() in body, body


def test_strict_profile_issues_a_clean_csr(scoped: Scoped, tmp_path: Path) -> None:
    """Negative control for the refusals above: a CSR inside the policy is issued."""
    csr, _key = make_csr(
        tmp_path,
        "clean",
        extra=(
            "-subj",
            "/CN=NPP2010/OU=ICU",
            "-addext",
            "subjectAltName=DNS:npp2010.pumps.example",
        ),
    )
    status, _h, body = _enroll(scoped, scoped.iqe, "strict/simpleenroll", csr)
    assert status == 200, body
    assert "DNS:npp2010.pumps.example" in _dump(body)


def test_strip_profile_issues_without_what_it_may_not_ask_for(
    scoped: Scoped, tmp_path: Path
) -> None:
    csr, _key = make_csr(
        tmp_path,
        "strip",
        extra=(
            "-subj",
            "/CN=NPP2020/OU=ICU/title=boss",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "1.3.6.1.4.1.99999.1=critical,DER:0500",
            "-addext",
            "subjectAltName=DNS:npp2020.pumps.example,email:pump@example.org",
        ),
    )
    status, _h, body = _enroll(scoped, scoped.iqe, "strip/simpleenroll", csr)
    assert status == 200, body
    dump = _dump(body)
    assert "Subject: CN = NPP2020, OU = ICU" in dump or "Subject: OU = ICU, CN = NPP2020" in dump
    assert "boss" not in dump and "title" not in dump
    assert "CA:FALSE" in dump and "CA:TRUE" not in dump
    assert "1.3.6.1.4.1.99999.1" not in dump
    assert "DNS:npp2020.pumps.example" in dump
    assert "pump@example.org" not in dump
    pem = _certificates(body, "strip/simpleenroll")
    verified = verify_with_ca(pem, scoped.appliance.lab.ca_cert, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "event=csr_stripped" in scoped.appliance.log_text()


def _certificates(body: bytes, path: str) -> str:
    """The default path answers DER (the IQE gateway's format), labels base64; the
    serverkeygen answer is multipart, whose certificate part is a base64 PKCS#7 too."""
    if path.endswith("serverkeygen"):
        part = body.split(b"application/pkcs7-mime; smime-type=certs-only", 1)[1]
        body = part.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
    if "/" in path:
        body = base64.b64decode(body)
    return pkcs7_certificates(body, "DER")


def _dump(body: bytes) -> str:
    pem = _certificates(body, "strict/simpleenroll")
    return openssl("x509", "-noout", "-text", input_bytes=pem.encode()).stdout.decode()
