"""Run ansible-playbook the way a user does (ansible/ansible.cfg, site.yml) and read its recap."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.deploy.container import REPO

ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str
    ok: int
    changed: int
    failed: int
    unreachable: int

    def describe(self) -> str:
        return f"ansible-playbook exited {self.returncode}:\n{self.output[-6000:]}"


def write_inventory(path: Path, host: str, groups: list[str], variables: dict[str, object]) -> Path:
    inventory = {
        "all": {"children": {group: {"hosts": {host: variables}} for group in groups}},
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=True), encoding="utf-8")
    return path


def run_playbook(inventory: Path, *extra: str, host: str, timeout: float = 600) -> Run:
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml", *extra],
        cwd=ANSIBLE_DIR,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    counts = {"ok": -1, "changed": -1, "failed": -1, "unreachable": -1}
    for match in _RECAP.finditer(output):
        if match["host"] == host:
            counts = {key: int(match[key]) for key in counts}
    return Run(returncode=result.returncode, output=output, **counts)


def run_on_localhost(
    folder: Path, role: Path, tasks: str, variables: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    """One play on localhost with `role`'s defaults, running `tasks` (YAML items of the play's
    task list) with `variables` as extra vars: a role's checks and templates, no host needed."""
    folder.mkdir(parents=True, exist_ok=True)
    playbook = folder / "localhost.yml"
    vars_files = "".join(
        f"\n    - {path}"
        for path in (role / "defaults" / "main.yml", role / "vars" / "main.yml")
        if path.exists()
    )
    playbook.write_text(
        f"""- name: Run a role's checks and templates on localhost
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:{vars_files}
  tasks:
{tasks}""",
        encoding="utf-8",
    )
    extra = folder / "extra.json"
    extra.write_text(json.dumps(variables), encoding="utf-8")
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", f"@{extra}"],
        cwd=ANSIBLE_DIR,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


APPLIANCE_ROLE = ANSIBLE_DIR / "roles" / "est_appliance"


def render_appliance_config(
    folder: Path, variables: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    """The est_appliance role's variable checks, then its config.yaml template with the role's
    own validation (`est-appliance check --config-only`), into folder/config.yaml."""
    tasks = f"""    - name: Run the role's variable checks
      ansible.builtin.import_tasks: {APPLIANCE_ROLE / "tasks" / "assert.yml"}
    - name: Render config.yaml
      ansible.builtin.template:
        src: {APPLIANCE_ROLE / "templates" / "config.yaml.j2"}
        dest: {folder / "config.yaml"}
        mode: "0600"
        validate: "{BIN / "est-appliance"} check --config-only --config %s"
"""
    return run_on_localhost(folder, APPLIANCE_ROLE, tasks, variables)
