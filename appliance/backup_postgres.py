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
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from appliance.errors import ApplianceError
from appliance.ledger_postgres import redact

_TIMEOUT = 3600.0  # seconds; a ledger of millions of certificates dumps in minutes
# What the backup restores into: the ledger's own tables, nothing else of the database.
_LEDGER_TABLES = ("certificates", "approvals", "crl_counter", "ledger_schema")


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
            f"{redact(dsn)}: cannot read the ledger database: {_first_line(exc)}"
        ) from None
    os.chmod(target, 0o600)
    return Dumped(certificates, schema)


def load(dsn: str, archive: Path, *, force: bool) -> int:
    """Restore `archive` into the database of `dsn`; its certificate count afterwards.

    A database that already holds a ledger is replaced only with `force` (every node stopped);
    the archive's tables are created fresh either way, in one transaction."""
    pg_restore = _tool("pg_restore")
    present = _ledger_tables(dsn)
    if present and not force:
        raise PostgresBackupError(
            f"{redact(dsn)} already holds a ledger ({', '.join(present)}); stop every node and "
            "pass --force to replace it with the backup"
        )
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
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            return _scalar(conn, "SELECT COUNT(*) FROM certificates")
    except psycopg.Error as exc:
        raise PostgresBackupError(f"{redact(dsn)}: {_first_line(exc)}") from None


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
            f"{redact(dsn)}: cannot reach the database to restore into: {_first_line(exc)}"
        ) from None
    return [str(row[0]) for row in rows]


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


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
