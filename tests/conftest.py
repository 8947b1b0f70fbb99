from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Lab, RunningAppliance, make_lab, start_appliance


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def appliance(lab: Lab) -> Iterator[RunningAppliance]:
    running = start_appliance(lab)
    yield running
    running.stop()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path
