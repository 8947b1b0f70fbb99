"""The PostgreSQL half of `est-appliance backup` / `restore`: the shared ledger of a cluster,
dumped with pg_dump and loaded with pg_restore (the PostgreSQL client tools, the same major
version as the server or newer).

The dump runs inside one exported snapshot (`pg_export_snapshot`, `pg_dump --snapshot`), so the
certificate count written to the manifest is exactly what the dump holds, while every node
keeps enrolling. The DSN's password never reaches a command line (`ps` shows those): it goes to
the tools in PGPASSWORD, the rest of the DSN as `--dbname`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from appliance.errors import ApplianceError, first_line
from appliance.ledger import _split_sql
from appliance.ledger_postgres import migrations, redact

_TIMEOUT = 3600.0  # seconds; a ledger of millions of certificates dumps in minutes
# The table a migration statement creates, alters or indexes.
_TARGET = re.compile(r"\s*(CREATE TABLE|ALTER TABLE|CREATE (?:UNIQUE )?INDEX \w+ ON) (\w+)")
# The ledger's PostgreSQL migrations, statement by statement, each with the table it creates,
# alters or indexes, in the order they run.
_TABLE_STATEMENTS = tuple(
    (target.group(1), target.group(2), statement)
    for script in migrations()
    for statement in _split_sql(script)
    if (target := _TARGET.match(statement))
)
# What the backup holds: every table the ledger's migrations create (read from them, so a new
# migration's table is never left behind), and its version row; nothing else of the database.
_LEDGER_TABLES = (
    *(table for verb, table, _sql in _TABLE_STATEMENTS if verb == "CREATE TABLE"),
    "ledger_schema",
)
# A database whose ledger tables hold nothing but the schema version (`db upgrade` on a new
# database) is as good as empty.
_DATA_TABLES = tuple(table for table in _LEDGER_TABLES if table != "ledger_schema")


class PostgresBackupError(ApplianceError):
    """pg_dump or pg_restore is missing or failed, or the target database is not empty."""


@dataclass(frozen=True)
class Dumped:
    certificates: int
    schema: int


def dump(dsn: str, target: Path) -> Dumped:
    """Write a pg_dump archive (custom format, mode 0600) of the ledger database to `target`."""
    pg_dump = _tool("pg_dump")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot = str(row[0]) if row else ""
            certificates = _scalar(conn, "SELECT COUNT(*) FROM certificates")
            schema = _scalar(conn, "SELECT version FROM ledger_schema")
            # The snapshot lives as long as this transaction: dump while it is open.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.close(fd)
            _run(
                [
                    pg_dump,
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    f"--snapshot={snapshot}",
                    f"--file={target}",
                    *(f"--table={table}" for table in _LEDGER_TABLES),
                ],
                dsn,
            )
            conn.execute("COMMIT")
    except psycopg.Error as exc:
        raise PostgresBackupError(
            f"{redact(dsn)}: cannot read the ledger database: {first_line(exc)}"
        ) from None
    os.chmod(target, 0o600)
    return Dumped(certificates, schema)


def load(dsn: str, archive: Path, *, force: bool) -> int:
    """Restore `archive` into the database of `dsn`; its certificate count afterwards.

    A database that already holds a ledger is replaced only with `force` (every node stopped);
    one with the ledger's tables but no rows in them (`db upgrade` on a new database) is
    emptied first. The archive's tables are created fresh either way, in one transaction."""
    pg_restore = _tool("pg_restore")
    present = _ledger_tables(dsn)
    if present and not force:
        _drop_empty_ledger(dsn, present)
        present = []
    _run(
        [
            pg_restore,
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            *(["--clean", "--if-exists"] if present else []),
            str(archive),
        ],
        dsn,
    )
    try:
        _create_missing_tables(dsn)
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            return _scalar(conn, "SELECT COUNT(*) FROM certificates")
    except psycopg.Error as exc:
        raise PostgresBackupError(f"{redact(dsn)}: {first_line(exc)}") from None


def _create_missing_tables(dsn: str) -> None:
    """Create, empty, any ledger table the archive did not hold: backups made before every
    table was dumped held four (their schema version row claims the rest exist)."""
    missing = set(_LEDGER_TABLES) - set(_ledger_tables(dsn))
    if not missing:
        return
    with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
        for _verb, table, statement in _TABLE_STATEMENTS:
            if table in missing:
                conn.execute(statement.encode())


def tool_environment(dsn: str) -> tuple[str, dict[str, str]]:
    """`--dbname` for the PostgreSQL tools and their environment: the DSN without its password,
    and the password in PGPASSWORD."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise PostgresBackupError("ledger.dsn: not a PostgreSQL connection string") from None
    password = params.pop("password", None)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


def _ledger_tables(dsn: str) -> list[str]:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name = ANY(%s) "
                "ORDER BY table_name",
                (list(_LEDGER_TABLES),),
            ).fetchall()
    except psycopg.Error as exc:
        raise PostgresBackupError(
            f"{redact(dsn)}: cannot reach the database to restore into: {first_line(exc)}"
        ) from None
    return [str(row[0]) for row in rows]


def _drop_empty_ledger(dsn: str, present: list[str]) -> None:
    """Drop the ledger tables of `present` if none holds a row; else refuse (PostgresBackupError).

    The check and the drop are one transaction holding every table's exclusive lock, so a
    node that writes meanwhile either wrote first (and the database is refused) or finds no
    table (its request fails, and nothing it was told is lost)."""
    tables = ", ".join(present)  # names from _LEDGER_TABLES, never from the database's user
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
            # A node still running holds these tables; say so rather than wait for it.
            conn.execute("SET LOCAL lock_timeout = '10s'")
            conn.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
            held = {
                table: count
                for table in present
                if table in _DATA_TABLES
                and (count := _scalar(conn, f"SELECT COUNT(*) FROM {table}"))  # noqa: S608
            }
            if held:
                rows = ", ".join(f"{table}: {count}" for table, count in held.items())
                raise PostgresBackupError(
                    f"{redact(dsn)} already holds a ledger ({rows} rows); stop every node and "
                    "pass --force to replace it with the backup"
                )
            conn.execute(f"DROP TABLE {tables}")
    except psycopg.Error as exc:
        raise PostgresBackupError(
            f"{redact(dsn)}: cannot empty the ledger tables to restore into: {first_line(exc)}"
        ) from None


def _run(args: list[str], dsn: str) -> None:
    dbname, env = tool_environment(dsn)
    try:
        result = subprocess.run(
            [*args, f"--dbname={dbname}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PostgresBackupError(f"{Path(args[0]).name} took over {_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        said = result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}"
        raise PostgresBackupError(f"{Path(args[0]).name} failed on {redact(dsn)}: {said}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PostgresBackupError(
            f"{name} not found: install the PostgreSQL client tools (Debian: postgresql-client, "
            "the server's major version or newer)"
        )
    return path


def _scalar(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> int:
    row = conn.execute(sql.encode()).fetchone()
    return int(str(row[0])) if row else 0
