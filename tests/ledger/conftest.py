"""One ledger suite, two backends: every test here runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.config import LedgerConfig
from appliance.ledger import Ledger
from appliance.ledger_factory import open_ledger, upgrade_ledger
from tests.services import PostgresServer

LedgerMaker = Callable[[], LedgerConfig]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_config(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerConfig:
    """A new, migrated, empty ledger of each backend."""
    if request.param == "sqlite":
        config = LedgerConfig(path=tmp_path / "ledger.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        config = LedgerConfig(dsn=server.create_database("ledger"))
    upgrade_ledger(config)
    return config


@pytest.fixture
def ledger(ledger_config: LedgerConfig) -> Iterator[Ledger]:
    opened = open_ledger(ledger_config)
    yield opened
    opened.close()
