"""Which ledger backend a config names: `ledger.dsn` is PostgreSQL, otherwise `ledger.path` is
SQLite. The only place that knows both; everything else sees the `Ledger` protocol."""

from __future__ import annotations

from appliance.config import LedgerConfig
from appliance.ledger import _MIGRATIONS, Ledger, SqliteLedger


def open_ledger(config: LedgerConfig) -> Ledger:
    """The configured ledger, ready to use; LedgerError when it cannot be opened.

    SQLite migrates itself when opened (one file, one host); PostgreSQL is shared by several
    nodes and is migrated once, explicitly, by `est-appliance db upgrade`."""
    if config.dsn:
        from appliance.ledger_postgres import PostgresLedger  # noqa: PLC0415 - psycopg only when used

        return PostgresLedger(config.dsn)
    return SqliteLedger(config.path)


def upgrade_ledger(config: LedgerConfig) -> tuple[int, int]:
    """Apply missing schema migrations; returns (version before, version after)."""
    if config.dsn:
        from appliance.ledger_postgres import upgrade  # noqa: PLC0415

        return upgrade(config.dsn)
    # SQLite keeps PRAGMA user_version; opening the file applies what is missing.
    before = SqliteLedger.stored_version(config.path)
    ledger = SqliteLedger(config.path)
    try:
        return before, ledger.schema_version()
    finally:
        ledger.close()


def target_version() -> int:
    """The schema version this code expects (both backends mirror the same list)."""
    return len(_MIGRATIONS)


def describe(config: LedgerConfig) -> str:
    """Where the ledger is, for logs: the path, or the database URI without its password."""
    if config.dsn:
        from appliance.ledger_postgres import redact  # noqa: PLC0415

        return redact(config.dsn)
    return str(config.path)
