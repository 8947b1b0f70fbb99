"""The est_appliance role's config.yaml, rendered by real Ansible on localhost: its own variables
and `est_appliance_config_overrides` for every setting no variable covers, checked first by the
role (no override of a key a variable sets) and then by the appliance's own parser
(`est-appliance check --config-only`, the template's `validate`) before anything is written."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from appliance.auth import hash_password
from appliance.config import parse_config
from tests.deploy.playbook import render_appliance_config

RA_SUBJECT = "CN=IQE Gateway RA,O=Hospital Clinical Network"  # the role's default RA names
SCOPES = {
    "iqe-ra": {
        "subject": RA_SUBJECT,
        "common_name_pattern": "NPP[0-9]{4}",
    },
    "iqe-password": {"user": "iqe-gateway", "operations": ["simpleenroll"]},
}


def _rendered(folder: Path) -> dict[str, object]:
    loaded = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_overrides_reach_config_yaml_beside_the_roles_own_keys(tmp_path: Path) -> None:
    overrides = {
        "auth": {"ra_scopes": SCOPES, "lockout": {"max_failures_per_user": 3}},
        "enrollment": {"duplicate_subject": "reject", "manual_approval": True},
        "server": {"request_timeout": 7},
        "profiles": {"infusion": {"enrollment": {"validity_days": 90}}},
    }
    users = json.dumps({"iqe-gateway": hash_password("a-long-enough-password")}).encode()
    result = render_appliance_config(
        tmp_path,
        {
            # What the role's tasks slurp on a host: users.json with the hashes.
            "est_appliance_user_hashes": {"content": base64.b64encode(users).decode()},
            "est_appliance_port": 9443,
            "est_appliance_config_overrides": overrides,
        },
    )
    assert result.returncode == 0, result.stdout[-3000:]
    config = parse_config(_rendered(tmp_path), base_dir=tmp_path)
    scopes = config.auth.ra_scopes
    assert scopes["iqe-ra"].subject == RA_SUBJECT
    assert scopes["iqe-ra"].common_name_pattern == "NPP[0-9]{4}"
    assert scopes["iqe-password"].user == "iqe-gateway"
    assert scopes["iqe-password"].operations == ("simpleenroll",)
    assert config.auth.lockout.max_failures_per_user == 3
    assert config.enrollment.duplicate_subject == "reject"
    assert config.enrollment.manual_approval is True
    assert config.profiles["infusion"].enrollment is not None
    assert config.profiles["infusion"].enrollment.validity_days == 90
    # The merge keeps what the role's variables set in the same sections.
    assert config.server.request_timeout == 7 and config.server.port == 9443
    assert config.enrollment.validity_days == 365
    assert config.auth.realm == "EST appliance"
    assert config.ledger.path == Path("/var/lib/est-appliance/ledger/ledger.db")


def test_without_overrides_the_file_has_only_the_roles_keys(tmp_path: Path) -> None:
    result = render_appliance_config(tmp_path, {"est_appliance_organization": "2024"})
    assert result.returncode == 0, result.stdout[-3000:]
    rendered = _rendered(tmp_path)
    assert list(rendered) == [
        "server", "pki", "enrollment", "gateway", "auth", "ledger",
        "logging", "audit", "crl", "admin", "metrics",
    ]  # fmt: skip
    config = parse_config(rendered, base_dir=tmp_path)
    # A name that looks like a number stays a name; numbers stay numbers.
    assert config.pki.organization == "2024"
    assert config.server.port == 8445
    assert config.auth.ra_scopes == {} and config.auth.users == {}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"server": {"port": 1}}, "it sets server.port"),
        ({"auth": {"users": {"x": "y"}, "ra_scopes": {}}}, "it sets auth.users"),
        ({"ledger": {"path": "/tmp/elsewhere.db"}}, "it sets ledger.path"),
        ({"audit": "off"}, "it sets audit"),
        (["server"], "it is not a mapping"),
    ],
)
def test_an_override_of_a_roles_own_key_is_refused_before_anything_is_written(
    tmp_path: Path, overrides: object, named: str
) -> None:
    result = render_appliance_config(tmp_path, {"est_appliance_config_overrides": overrides})
    assert result.returncode != 0
    assert "Check that est_appliance_config_overrides adds only" in result.stdout
    assert named in " ".join(result.stdout.split()), result.stdout[-1500:]
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"enrollment": {"duplicate_subjects": "reject"}}, "duplicate_subjects: unknown key"),
        ({"enrollment": {"duplicate_subject": "refuse"}}, "must be one of allow, reject"),
        (
            {"auth": {"ra_scopes": {"ward": {"user": "nobody", "common_name_pattern": "NPP.*"}}}},
            "auth.ra_scopes.ward.user: no user 'nobody' in auth.users",
        ),
    ],
)
def test_a_wrong_override_stops_at_the_appliances_own_parser(
    tmp_path: Path, overrides: dict[str, object], complaint: str
) -> None:
    result = render_appliance_config(tmp_path, {"est_appliance_config_overrides": overrides})
    assert result.returncode != 0
    assert "failed to validate" in result.stdout
    assert complaint in result.stdout, result.stdout[-1500:]
    assert not (tmp_path / "config.yaml").exists()
