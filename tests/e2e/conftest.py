"""Fixtures for the end-to-end tests: real appliances, a real FreeRADIUS, real eapol_test.

CI installs freeradius and eapoltest (scripts/setup.sh); these tests never skip. Missing tools
are a failure that names the install command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.radius import INSTALL_HINT
from tests.support import Lab, RunningAppliance, make_lab, start_appliance

IQE_SIM = [sys.executable, "-m", "simulator.cli"]


@pytest.fixture(scope="session", autouse=True)
def _eap_tools() -> None:
    for tool in ("freeradius", "eapol_test"):
        assert shutil.which(tool), f"{tool} is missing: {INSTALL_HINT} (scripts/setup.sh does it)"


def iqe_sim(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IQE_SIM, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def b64_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """An appliance answering base64 (the RFC 7030 default), for the format-mismatch branch."""
    return make_lab(tmp_path_factory.mktemp("lab-b64"), {"gateway": {"response_format": "base64"}})


@pytest.fixture(scope="module")
def b64_appliance(b64_lab: Lab) -> Iterator[RunningAppliance]:
    running = start_appliance(b64_lab)
    yield running
    running.stop()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path
