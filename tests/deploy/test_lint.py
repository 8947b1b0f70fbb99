"""Static checks of the deployment code, run in CI with the rest of the suite: the playbooks
parse, ansible-lint's production profile is clean, the Vagrantfile validates, and the role's
systemd unit passes systemd-analyze. Each has a negative control that must fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.container import REPO
from tests.deploy.playbook import ANSIBLE_DIR, BIN, ansible_env

PLAYBOOKS = ["site.yml", "lab-check.yml"]


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("playbook", PLAYBOOKS)
@pytest.mark.parametrize("inventory", ["inventories/lab", "inventories/single-host"])
def test_playbooks_pass_syntax_check(playbook: str, inventory: str) -> None:
    result = _run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", inventory, playbook], ANSIBLE_DIR
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_syntax_check_catches_a_broken_playbook(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("- hosts: all\n  tasks:\n    - ansible.builtin.nonexistent_module: {}\n")
    result = _run([str(BIN / "ansible-playbook"), "--syntax-check", str(broken)], ANSIBLE_DIR)
    assert result.returncode != 0


def _lint(*targets: str, cwd: Path = ANSIBLE_DIR) -> subprocess.CompletedProcess[str]:
    return _run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor", *targets],
        cwd,
    )


def test_ansible_lint_production_profile_is_clean() -> None:
    result = _lint(*PLAYBOOKS, "roles")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_ansible_lint_flags_a_sloppy_task(tmp_path: Path) -> None:
    sloppy = tmp_path / "sloppy.yml"
    sloppy.write_text("---\n- hosts: all\n  tasks:\n    - shell: echo hi\n", encoding="utf-8")
    result = _lint(str(sloppy), cwd=tmp_path)
    assert result.returncode != 0
    assert "fqcn" in result.stdout + result.stderr


def test_vagrantfile_validates() -> None:
    vagrant = shutil.which("vagrant")
    assert vagrant, "vagrant is installed by scripts/setup.sh"
    result = _run([vagrant, "validate", "--ignore-provider"], REPO, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_vagrant_validate_rejects_a_broken_vagrantfile(tmp_path: Path) -> None:
    (tmp_path / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n  config.vm.no_such_setting = 1\nend\n'
    )
    vagrant = shutil.which("vagrant")
    assert vagrant
    result = _run([vagrant, "validate", "--ignore-provider"], tmp_path, timeout=180)
    assert result.returncode != 0


def test_vagrant_and_inventories_keep_lab_addresses_out_of_code() -> None:
    """The lab's addresses live only in the Vagrantfile and the lab inventory."""
    allowed = {REPO / "Vagrantfile"}
    allowed |= set((ANSIBLE_DIR / "inventories" / "lab").rglob("*"))
    offenders = []
    for folder in ("ansible", "appliance", "simulator", "scripts"):
        for path in (REPO / folder).rglob("*"):
            if (
                path.is_file()
                and path not in allowed
                and path.suffix != ".pyc"
                and "10.42.56." in path.read_text(encoding="utf-8", errors="replace")
            ):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
