"""`est-appliance backup` / `restore` with the cluster's PostgreSQL ledger: pg_dump from one
snapshot while the node serves, pg_restore into another database, every certificate, status,
request and the CRL counter back, and the same refusals as the SQLite backup."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from appliance import backup_postgres
from appliance.backup_postgres import tool_environment
from appliance.config import LedgerConfig
from appliance.ledger import PendingRequest
from appliance.ledger_factory import open_ledger
from tests.lifecycle.conftest import enroll
from tests.services import PostgresServer
from tests.support import Lab, curl, make_lab, run_cli, running_appliance


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


def _pg_lab(folder: Path, dsn: str) -> Lab:
    lab = make_lab(folder, {"ledger": {"dsn": dsn}})
    run_cli("db", "upgrade", "--config", str(lab.config))
    return lab


def _clone_config(lab: Lab, folder: Path, dsn: str) -> Path:
    """The same config.yaml in a new folder (no PKI yet), pointed at database `dsn`."""
    folder.mkdir()
    text = lab.config.read_text(encoding="utf-8")
    config = folder / "config.yaml"
    config.write_text(text.replace(_dsn_in(text), dsn), encoding="utf-8")
    return config


def _dsn_in(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.strip().startswith("dsn:")]
    return line.split("dsn:", 1)[1].strip().strip("'\"")


def _listed(config: Path) -> list[dict[str, object]]:
    out = run_cli("list", "--json", "--config", str(config)).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_postgresql_ledger_is_backed_up_online_and_restored_whole(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    lab = _pg_lab(tmp_path / "node", postgres.create_database("live"))
    with running_appliance(lab) as appliance:
        for cn in ("NPPPG1", "NPPPG2", "NPPPG3"):
            enroll(appliance, cn, tmp_path)
        run_cli("revoke", "--subject", "NPPPG2", "--config", str(lab.config))
        live = open_ledger(LedgerConfig(dsn=_dsn_in(lab.config.read_text())))
        live.add_pending(
            PendingRequest("fp-pg", "", "simpleenroll", "CN=NPPPG9", "iqe-ra", b"\x30\x00",
                           dt.datetime.now(dt.UTC))
        )  # fmt: skip
        crl_number = live.last_crl_number()
        listed = _listed(lab.config)

        backup = tmp_path / "backup"
        result = run_cli("backup", str(backup), "--config", str(lab.config))
        assert "backed up the ledger (3 certificates)" in result.stdout
        enroll(appliance, "NPPPG4", tmp_path)  # after the backup: not in it
        live.close()

    manifest = json.loads((backup / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"ledger.pgdump", "pki/ca-key.pem"}
    assert "ledger.db" not in manifest["files"]
    assert manifest["certificates"] == 3
    assert stat.S_IMODE((backup / "ledger.pgdump").stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700

    # Restore into a new, empty database with the same configuration otherwise.
    target_dsn = postgres.create_database("restored")
    config = _clone_config(lab, tmp_path / "restored", target_dsn)
    result = run_cli("restore", str(backup), "--config", str(config))
    assert "restored the ledger (3 certificates)" in result.stdout
    assert _listed(config) == listed  # statuses too: NPPPG2 stays revoked
    restored = open_ledger(LedgerConfig(dsn=target_dsn))
    try:
        assert restored.last_crl_number() == crl_number
        assert [a.subject for a in restored.approvals(None)] == ["CN=NPPPG9"]
        # The approvals' id sequence came back too: the next request gets a new id.
        added = restored.add_pending(
            PendingRequest("fp-pg2", "", "simpleenroll", "CN=NPPPG8", "iqe-ra", b"\x30\x00",
                           dt.datetime.now(dt.UTC))
        )  # fmt: skip
        assert added.id > restored.approvals(None)[0].id
    finally:
        restored.close()
    assert (tmp_path / "restored" / "certs" / "ca-key.pem").read_bytes() == (
        lab.certs / "ca-key.pem"
    ).read_bytes()
    # Every table of the ledger, not only those holding certificates: the node below writes
    # its password-guessing count into one of them.
    assert _tables(target_dsn) == _tables(_dsn_in(lab.config.read_text()))
    run_cli("check", "--config", str(config))
    with running_appliance(Lab(config.parent, config)) as node:
        node.assert_alive()
        status, headers, _body = curl(
            ["--cacert", str(node.lab.ca_cert), "-u", "nobody:wrong-password",
             "-H", "Content-Type: application/pkcs10", "--data-binary", "x",
             node.url("bootstrap")]
        )  # fmt: skip
        assert status == 401 and "www-authenticate" in headers
        with psycopg.connect(target_dsn) as conn:
            assert conn.execute("SELECT COUNT(*) FROM login_throttle").fetchone() != (0,)


def test_a_postgresql_restore_refuses_what_it_would_overwrite(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    lab = _pg_lab(tmp_path / "node", postgres.create_database("src"))
    backup = tmp_path / "backup"
    run_cli("backup", str(backup), "--config", str(lab.config))

    # A database with the ledger's tables but nothing in them (`db upgrade` on a new database,
    # a natural first step) takes the backup without --force.
    upgraded = postgres.create_database("upgraded")
    config = _clone_config(lab, tmp_path / "upgraded", upgraded)
    run_cli("db", "upgrade", "--config", str(config))
    restored = run_cli("restore", str(backup), "--config", str(config))
    assert "restored the ledger (0 certificates)" in restored.stdout
    assert _tables(upgraded) == _tables(_dsn_in(lab.config.read_text()))

    # A database that holds a ledger: refused without --force, and no PKI file written.
    occupied = postgres.create_database("occupied")
    config = _clone_config(lab, tmp_path / "occupied", occupied)
    run_cli("db", "upgrade", "--config", str(config))
    held = open_ledger(LedgerConfig(dsn=occupied))
    held.add_pending(
        PendingRequest("fp-held", "", "simpleenroll", "CN=NPPHELD", "iqe-ra", b"\x30\x00",
                       dt.datetime.now(dt.UTC))
    )  # fmt: skip
    held.close()
    refused = run_cli("restore", str(backup), "--config", str(config), check=False)
    assert refused.returncode != 0
    assert "already holds a ledger (approvals: 1 rows)" in refused.stderr
    assert "--force" in refused.stderr
    assert not (tmp_path / "occupied" / "certs").exists()
    forced = run_cli("restore", str(backup), "--force", "--config", str(config))
    assert "restored the ledger (0 certificates)" in forced.stdout
    assert open_ledger(LedgerConfig(dsn=occupied)).approvals(None) == []

    # A PostgreSQL backup is not restored into a SQLite configuration (nor the reverse).
    sqlite_lab = make_lab(tmp_path / "sqlite")
    shutil.rmtree(sqlite_lab.certs)
    mismatch = run_cli(
        "restore", str(backup), "--force", "--config", str(sqlite_lab.config), check=False
    )
    assert mismatch.returncode != 0
    assert "holds a PostgreSQL ledger and config.yaml's ledger is SQLite" in mismatch.stderr


def test_a_backup_of_the_first_four_tables_restores_a_whole_ledger(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backups made before every table was dumped held certificates, approvals, crl_counter and
    ledger_schema; restored, the other tables are created empty."""
    source = postgres.create_database("four")
    _pg_lab(tmp_path / "node", source)
    four = ("certificates", "approvals", "crl_counter", "ledger_schema")
    monkeypatch.setattr(backup_postgres, "_LEDGER_TABLES", four)
    backup_postgres.dump(source, tmp_path / "four.pgdump")
    monkeypatch.undo()
    target = postgres.create_database("from-four")
    assert backup_postgres.load(target, tmp_path / "four.pgdump", force=False) == 0
    assert _tables(target) == _tables(source)
    ledger = open_ledger(LedgerConfig(dsn=target))
    try:
        assert ledger.login_throttle("address", "192.0.2.1") is None  # the table is there
    finally:
        ledger.close()


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_the_password_reaches_pg_dump_in_its_environment_not_its_command_line() -> None:
    dbname, env = tool_environment(
        "postgresql://est:s3cret-pw@db.example:5433/ledger?sslmode=verify-full"
    )
    assert "s3cret-pw" not in dbname
    assert env["PGPASSWORD"] == "s3cret-pw"
    for part in ("host=db.example", "port=5433", "user=est", "dbname=ledger", "sslmode"):
        assert part in dbname
