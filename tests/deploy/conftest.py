"""Fixtures for the deployment test: a booted systemd container and a deployed playbook."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.container import REPO, Container, ensure_rootfs, free_port
from tests.deploy.playbook import Run, run_playbook, write_inventory

HOST = "est-host"  # the inventory name of the container
GROUPS = ["est_gateways", "radius_servers", "iqe_simulators"]
PASSWORD = "deploy-test-password-7f3a"  # not the lab password: this host is "staging"
OPERATOR = "ward-ops"
OPERATOR_PASSWORD = "deploy-test-operator-9c1e"
RADIUS_SECRET = "deploy-test-radius-secret"
# The pump names this deployment's gateway may enroll: an RA scope from the inventory's
# est_appliance_config_overrides, as a hospital limits its gateway (est-lab-check's PUMP<n> too).
PUMP_NAMES = "(NPP|PUMP)[0-9A-Z]+"
RA_SCOPES = {
    "iqe-ra": {
        "subject": "CN=IQE Gateway RA,O=Hospital Clinical Network",
        "common_name_pattern": PUMP_NAMES,
    },
    "iqe-password": {"user": "iqe-gateway", "common_name_pattern": PUMP_NAMES},
}


@dataclass
class Deployment:
    container: Container
    inventory: Path
    folder: Path
    est_port: int
    radius_port: int
    first_run: Run

    @property
    def export(self) -> Path:
        return self.folder / "export"

    @property
    def radius_export(self) -> Path:
        return self.folder / "radius-export"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.est_port}"

    def run(self, *extra: str) -> Run:
        return run_playbook(self.inventory, *extra, host=HOST)


def _snapshot_source(target: Path) -> Path:
    """A copy of the checkout's package sources: the wheel the role builds from it is then the
    same on every run of this test, however the working tree changes meanwhile."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("appliance", "simulator"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="package")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("deploy")
    source = _snapshot_source(folder / "source")
    wheelhouse = folder / "wheelhouse"
    # Every dependency as a wheel on the controller: the container installs offline
    # (est_appliance_wheelhouse), as on an air-gapped hospital network.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--disable-pip-version-check",
            "-w",
            str(wheelhouse),
            str(source),
        ],
        check=True,
        timeout=600,
    )
    container = Container(root=ensure_rootfs(), folder=folder / "container")
    est_port, radius_port = free_port(), free_port()
    common = {
        "ansible_host": "127.0.0.1",
        "ansible_port": container.ssh_port,
        "ansible_user": "deploy",
        "ansible_ssh_private_key_file": str(container.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "est_environment": "staging",
    }
    variables: dict[str, object] = {
        **common,
        "est_appliance_listen_host": "127.0.0.1",
        "est_appliance_port": est_port,
        "est_appliance_users": {"iqe-gateway": PASSWORD},
        "est_appliance_admin_users": {OPERATOR: OPERATOR_PASSWORD},
        "est_appliance_config_overrides": {"auth": {"ra_scopes": RA_SCOPES}},
        "est_appliance_source_dir": str(source),
        "est_appliance_build_dir": str(folder / "wheels"),
        "est_appliance_wheelhouse": str(wheelhouse),
        "est_appliance_export_dir": str(folder / "export"),
        # The image's package lists are enough: no apt traffic unless a package is missing.
        "est_appliance_apt_cache_valid_time": 10**9,
        "radius_apt_cache_valid_time": 10**9,
        "iqe_simulator_apt_cache_valid_time": 10**9,
        "radius_ca_cert_src": str(folder / "export" / "ca-cert.pem"),
        "radius_listen_address": "127.0.0.1",
        "radius_port": radius_port,
        "radius_clients": [{"name": "loopback", "address": "127.0.0.1", "secret": RADIUS_SECRET}],
        "radius_reject_delay": 0,
        "radius_crl_url": f"https://127.0.0.1:{est_port}/crl",
        "radius_export_dir": str(folder / "radius-export"),
        "iqe_simulator_source_dir": str(source),
        "iqe_simulator_build_dir": str(folder / "wheels"),
        "iqe_simulator_wheelhouse": str(wheelhouse),
        "iqe_simulator_est_url": f"https://127.0.0.1:{est_port}",
        "iqe_simulator_ca_cert_src": str(folder / "export" / "ca-cert.pem"),
        "iqe_simulator_ra_cert_src": str(folder / "export" / "iqe-ra-cert.pem"),
        "iqe_simulator_ra_key_src": str(folder / "export" / "iqe-ra-key.pem"),
        "iqe_simulator_bootstrap_user": "iqe-gateway",
        "iqe_simulator_bootstrap_password": PASSWORD,
        "iqe_simulator_radius_host": "127.0.0.1",
        "iqe_simulator_radius_port": radius_port,
        "iqe_simulator_radius_secret": RADIUS_SECRET,
        "iqe_simulator_radius_server_cert_src": str(
            folder / "radius-export" / "radius-server-cert.pem"
        ),
    }
    inventory = write_inventory(folder / "inventory.yml", HOST, GROUPS, variables)
    container.start()
    try:
        first = run_playbook(inventory, host=HOST)
        yield Deployment(container, inventory, folder, est_port, radius_port, first)
    finally:
        container.stop()
