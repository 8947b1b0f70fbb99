"""The est_appliance role's cluster mode, run by real Ansible on localhost: its checks refuse a
node without the shared CA, RA credential or database, and its config.yaml points a node at the
shared PostgreSQL ledger (and still at SQLite outside cluster mode). Also the server settings
the role renders for every node: all cores, the keep-alive linger."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.config import parse_config
from tests.deploy.playbook import render_appliance_config
from tests.support import Lab, make_lab

DSN = "postgresql://est_appliance:vault-secret@db.cluster.internal:5432/est_ledger"


@pytest.fixture(scope="module")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(tmp_path_factory.mktemp("cluster-pki"))


def _cluster_vars(lab: Lab) -> dict[str, object]:
    certs = lab.certs
    return {
        "est_appliance_cluster": True,
        "est_appliance_ledger_dsn": DSN,
        "est_appliance_ca_cert_pem": (certs / "ca-cert.pem").read_text(),
        "est_appliance_ca_key_pem": (certs / "ca-key.pem").read_text(),
        "est_appliance_ra_cert_pem": (certs / "iqe-ra-cert.pem").read_text(),
        "est_appliance_ra_key_pem": (certs / "iqe-ra-key.pem").read_text(),
    }


def test_a_cluster_node_is_configured_for_the_shared_ledger(
    shared_pki: Lab, tmp_path: Path
) -> None:
    result = render_appliance_config(tmp_path, _cluster_vars(shared_pki))
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = (tmp_path / "config.yaml").read_text()
    config = parse_config(yaml.safe_load(rendered), base_dir=tmp_path)
    assert config.ledger.dsn == DSN
    assert "vault-secret" not in result.stdout  # the DSN is not echoed by the play


def test_outside_cluster_mode_the_ledger_stays_sqlite(tmp_path: Path) -> None:
    result = render_appliance_config(tmp_path, {})
    assert result.returncode == 0, result.stdout + result.stderr
    config = parse_config(yaml.safe_load((tmp_path / "config.yaml").read_text()), base_dir=tmp_path)
    assert config.ledger.dsn == "" and config.ledger.path.name == "ledger.db"


def test_a_node_serves_from_every_core_unless_told_otherwise(tmp_path: Path) -> None:
    result = render_appliance_config(tmp_path, {})
    assert result.returncode == 0, result.stdout + result.stderr
    config = parse_config(yaml.safe_load((tmp_path / "config.yaml").read_text()), base_dir=tmp_path)
    assert config.server.workers == 0  # one per core
    assert config.server.keepalive_linger_ms == 20
    assert config.server.keepalive_connections == 1024
    (tmp_path / "config.yaml").unlink()
    server: dict[str, object] = {"est_appliance_workers": 3, "est_appliance_keepalive_linger_ms": 0}
    result = render_appliance_config(tmp_path, server)
    assert result.returncode == 0, result.stdout + result.stderr
    config = parse_config(yaml.safe_load((tmp_path / "config.yaml").read_text()), base_dir=tmp_path)
    assert (config.server.workers, config.server.keepalive_linger_ms) == (3, 0)


@pytest.mark.parametrize(
    ("operators", "complaint"),
    [
        ({"iqe-gateway": "a-long-enough-password"}, "not also a bootstrap user"),
        ({"ward ops": "a-long-enough-password"}, "1-64 letters"),
        ({"ward-ops": "short"}, "at least 12 characters"),
        ({"ward-ops": "iqe-secure-password-2024"}, "published lab password"),
    ],
)
def test_dashboard_operators_are_checked_before_anything_is_written(
    tmp_path: Path, operators: dict[str, str], complaint: str
) -> None:
    result = render_appliance_config(
        tmp_path,
        {
            "est_appliance_users": {"iqe-gateway": "another-long-password"},
            "est_appliance_admin_users": operators,
        },
    )
    assert result.returncode != 0
    assert complaint in result.stdout, result.stdout[-1500:]
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(
    "missing",
    ["est_appliance_ra_cert_pem", "est_appliance_ca_cert_pem", "est_appliance_ledger_dsn"],
)
def test_a_cluster_node_without_shared_material_is_refused(
    shared_pki: Lab, tmp_path: Path, missing: str
) -> None:
    variables = _cluster_vars(shared_pki)
    variables[missing] = ""
    if missing == "est_appliance_ca_cert_pem":
        variables["est_appliance_ca_key_pem"] = ""
    result = render_appliance_config(tmp_path, variables)
    assert result.returncode != 0
    assert "Check that a cluster node gets the shared CA" in result.stdout
    assert "est_appliance_cluster is true: give every node" in result.stdout, result.stdout[-1500:]
    assert not (tmp_path / "config.yaml").exists()
