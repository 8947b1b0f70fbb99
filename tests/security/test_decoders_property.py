"""Property-based tests (hypothesis) for the decoders that read client or operator input
besides the CSR decoder (tests/unit/test_codec.py): the HTTP Basic header, the CSR policy, and
config.yaml. Each either returns a value or raises its one documented error, never anything
else (which the web layer would turn into a 500, or the CLI into a traceback)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.auth import PasswordAuth
from appliance.config import Config, CsrPolicyConfig, parse_config
from appliance.csr_policy import vet
from appliance.errors import BadRequest, ConfigError, Forbidden, Unauthorized

# --- HTTP Basic (RFC 7617) ---------------------------------------------------------------------

_AUTH = PasswordAuth({}, "EST appliance", 0)


def _parse(header: str) -> tuple[str, str] | Unauthorized:
    try:
        return _AUTH._parse(header)
    except Unauthorized as error:
        return error


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_any_authorization_text_parses_or_is_a_401(header: str) -> None:
    result = _parse(header)
    if isinstance(result, Unauthorized):
        assert result.status == 401
        assert result.headers()["WWW-Authenticate"].startswith('Basic realm="EST appliance"')
    else:
        user, _password = result
        assert user and ":" not in user


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["Basic ", "basic ", "BASIC  ", "Basic\t"]))
def test_any_basic_token_bytes_parse_or_are_a_401(token: bytes, scheme: str) -> None:
    result = _parse(scheme + base64.b64encode(token).decode())
    assert isinstance(result, Unauthorized | tuple)


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=1, max_size=40).filter(lambda u: ":" not in u),
    st.text(max_size=60),
)
def test_well_formed_credentials_round_trip(user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert _parse(f"Basic {token}") == (user, password)


# --- CSR policy over arbitrary names -----------------------------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())
_OIDS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.TITLE,
    NameOID.SERIAL_NUMBER,
    NameOID.PSEUDONYM,
]
# GeneralName values are A-labels (ASCII), as cryptography requires.
_ascii = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)
_names = st.one_of(
    _ascii.map(x509.DNSName),
    st.emails().map(x509.RFC822Name),
    _ascii.map(x509.UniformResourceIdentifier),
    st.ip_addresses().map(x509.IPAddress),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(_OIDS), st.text(min_size=1, max_size=20)),
        min_size=1,
        max_size=4,
    ),
    st.lists(_names, max_size=4),
    st.booleans(),
    st.sampled_from(["refuse", "strip"]),
)
def test_csr_policy_vets_or_refuses(
    attributes: list[tuple[x509.ObjectIdentifier, str]],
    sans: list[x509.GeneralName],
    ca: bool,
    action: str,
) -> None:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    try:
        csr = builder.sign(_KEY, hashes.SHA256())
    except ValueError:
        return  # cryptography refuses to build it (e.g. a non-ASCII DNS name)
    policy = CsrPolicyConfig(
        ca_request=action,  # type: ignore[arg-type]
        names=action,  # type: ignore[arg-type]
        san_types=("DNS", "IP"),
        subject_attributes=("CN", "OU"),
    )
    try:
        vetted = vet(csr, policy, rule="enrollment.csr_policy")
    except (BadRequest, Forbidden) as error:
        assert action == "refuse"
        assert "enrollment.csr_policy." in error.message
        return
    allowed = {NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME}
    assert all(a.oid in allowed for a in vetted.subject)
    for extension in vetted.extensions:
        assert isinstance(extension.value, x509.SubjectAlternativeName)
        assert all(isinstance(n, x509.DNSName | x509.IPAddress) for n in extension.value)


# --- config.yaml -------------------------------------------------------------------------------

_SECTIONS = ["server", "pki", "enrollment", "gateway", "auth", "ledger", "logging", "audit"]
_KEYS = [
    "port",
    "host",
    "workers",
    "max_body_bytes",
    "dir",
    "key_algorithm",
    "validity_days",
    "csr_policy",
    "san_types",
    "san_patterns",
    "names",
    "response_format",
    "users",
    "lockout",
    "ra_scopes",
    "fingerprint",
    "labels",
    "common_name_pattern",
    "max_failures_per_address",
    "path",
    "level",
    "ca_key_passphrase_file",
    "csr_attributes",
    "duplicate_subject",
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["der", "rsa-2048", "refuse", "strip", "DNS", "(", "default", "INFO"]),
)
_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(_KEYS), st.text(max_size=8)), children, max_size=4
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.dictionaries(st.sampled_from(_SECTIONS), _values, max_size=4),
        _values,
    )
)
def test_any_yaml_value_is_a_config_or_a_config_error(raw: object) -> None:
    try:
        config = parse_config(raw, base_dir=Path("/nonexistent/base"))
    except ConfigError as error:
        assert str(error), "a ConfigError names the key"
        return
    assert isinstance(config, Config)
