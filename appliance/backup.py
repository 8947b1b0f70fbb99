"""`est-appliance backup DIR` / `restore DIR`: the ledger and the PKI, consistent and with
their permissions.

A SQLite ledger is copied with SQLite's online backup API, so a backup taken while the
appliance serves is a consistent snapshot (a plain file copy of a WAL database may not be); a
PostgreSQL ledger is dumped with pg_dump from one snapshot (backup_postgres.py). PKI files keep
their modes — private keys stay 0600 — and a manifest records each file's SHA-256, which
`restore` checks before it touches anything. Restore is for a stopped appliance (for
PostgreSQL: every node stopped).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.pem_files import check_private_key_mode

MANIFEST = "manifest.json"
LEDGER_FILE = "ledger.db"
LEDGER_DUMP = "ledger.pgdump"  # a PostgreSQL ledger, pg_dump's custom format
PKI_DIR = "pki"
CRL_DIR = "crl"
_KEY_SUFFIX = "-key.pem"


class BackupError(ApplianceError):
    """A backup cannot be written or restored; the message says why."""


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    files: tuple[str, ...]
    certificates: int


def backup(config: Config, folder: Path, now: dt.datetime) -> BackupSummary:
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder}: not empty; back up into a new folder")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)  # the backup holds the CA key
    files: dict[str, dict[str, object]] = {}

    if config.ledger.dsn:
        from appliance.backup_postgres import PostgresBackupError, dump  # noqa: PLC0415 - psycopg only when used

        try:
            dumped = dump(config.ledger.dsn, folder / LEDGER_DUMP)
        except PostgresBackupError as exc:
            raise BackupError(str(exc)) from None
        certificates, schema = dumped.certificates, dumped.schema
        files[LEDGER_DUMP] = _describe(folder / LEDGER_DUMP)
    else:
        certificates, schema = _copy_sqlite(config.ledger.path, folder / LEDGER_FILE)
        files[LEDGER_FILE] = _describe(folder / LEDGER_FILE)

    for src in sorted(config.pki.dir.iterdir()):
        if src.is_file():
            files[f"{PKI_DIR}/{src.name}"] = _copy(src, folder / PKI_DIR / src.name)
    for src in (config.crl.path, config.crl.der_path):
        if src.is_file():
            files[f"{CRL_DIR}/{src.name}"] = _copy(src, folder / CRL_DIR / src.name)

    manifest = {
        "appliance_version": __version__,
        "created": now.isoformat(),
        "ledger_schema": int(schema),
        "certificates": int(certificates),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return BackupSummary(folder, tuple(files), int(certificates))


def restore(config: Config, folder: Path, *, force: bool) -> BackupSummary:
    manifest = _read_manifest(folder)
    files: dict[str, dict[str, object]] = manifest["files"]
    for name, meta in files.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != meta.get("sha256"):
            raise BackupError(f"{path}: missing or changed since the backup; nothing restored")
    certificates = int(str(manifest.get("certificates", 0)))
    _check_target(config, folder, files, force=force)
    if config.ledger.dsn:
        # Before any PKI file changes: a database that already holds a ledger is refused
        # there without --force, and then nothing else is touched either.
        _restore_postgres(config.ledger.dsn, folder / LEDGER_DUMP, certificates, force=force)
    # PKI first (modes as recorded), then the SQLite ledger.
    config.pki.dir.mkdir(parents=True, exist_ok=True)
    for name, meta in files.items():
        if name.startswith(f"{PKI_DIR}/"):
            _copy(folder / name, config.pki.dir / name.split("/", 1)[1], int(str(meta["mode"])))
        elif name.startswith(f"{CRL_DIR}/"):
            _copy(folder / name, config.crl.path.parent / name.split("/", 1)[1])
    for key in sorted(config.pki.dir.glob(f"*{_KEY_SUFFIX}")):
        check_private_key_mode(key)
    if not config.ledger.dsn:
        _restore_sqlite(folder / LEDGER_FILE, config.ledger.path)
    return BackupSummary(folder, tuple(files), certificates)


def _check_target(
    config: Config, folder: Path, files: dict[str, dict[str, object]], *, force: bool
) -> None:
    """The backup's ledger kind must be the configured one; existing files need --force."""
    if (LEDGER_DUMP in files) != bool(config.ledger.dsn):
        held, configured = (
            ("PostgreSQL", "SQLite") if LEDGER_DUMP in files else ("SQLite", "PostgreSQL")
        )
        raise BackupError(
            f"{folder} holds a {held} ledger and config.yaml's ledger is {configured}; restore "
            "with the configuration it was taken with, then move the ledger with "
            "`est-appliance db export` / `db import`"
        )
    existing = [config.pki.ca_key] if config.pki.ca_key.exists() else []
    if not config.ledger.dsn and config.ledger.path.exists():
        existing.insert(0, config.ledger.path)
    if existing and not force:
        raise BackupError(
            f"{existing[0]} exists; stop the appliance and pass --force to replace the ledger "
            "and PKI with the backup"
        )


def _restore_postgres(dsn: str, archive: Path, expected: int, *, force: bool) -> None:
    from appliance.backup_postgres import PostgresBackupError, load  # noqa: PLC0415 - psycopg only when used

    try:
        certificates = load(dsn, archive, force=force)
    except PostgresBackupError as exc:
        raise BackupError(str(exc)) from None
    if certificates != expected:
        raise BackupError(
            f"the restored ledger holds {certificates} certificates, the backup {expected}"
        )


def _copy_sqlite(ledger_path: Path, target: Path) -> tuple[int, int]:
    """Copy the live SQLite ledger to `target`; its certificate count and schema version."""
    source = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        dest = sqlite3.connect(target)
        try:
            source.backup(dest)  # online, consistent snapshot
            (certificates,) = dest.execute("SELECT COUNT(*) FROM certificates").fetchone()
            (schema,) = dest.execute("PRAGMA user_version").fetchone()
        finally:
            dest.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{ledger_path}: cannot back up the ledger: {exc}") from None
    finally:
        source.close()
    target.chmod(0o600)
    return int(certificates), int(schema)


def _restore_sqlite(copy: Path, ledger_path: Path) -> None:
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ledger_path.with_name(f".{ledger_path.name}.restore")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        dest = sqlite3.connect(tmp)
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
    tmp.chmod(0o600)
    os.replace(tmp, ledger_path)


def _copy(src: Path, dest: Path, mode: int | None = None) -> dict[str, object]:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    src_mode = stat.S_IMODE(src.stat().st_mode)
    if src.name.endswith(_KEY_SUFFIX):
        src_mode &= 0o600  # a private key is never readable by others, in a backup either
    final_mode = mode if mode is not None else src_mode
    tmp = dest.with_name(f".{dest.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
        shutil.copyfileobj(inp, out)
        out.flush()
        os.fchmod(out.fileno(), final_mode)
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    return _describe(dest)


def _describe(path: Path) -> dict[str, object]:
    return {"sha256": _sha256(path), "mode": stat.S_IMODE(path.stat().st_mode)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(folder: Path) -> dict[str, dict[str, dict[str, object]]]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{folder}: no {MANIFEST}; not a backup made by est-appliance") from None
    except ValueError:
        raise BackupError(f"{folder / MANIFEST}: not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BackupError(f"{folder / MANIFEST}: has no file list")
    if LEDGER_FILE not in manifest["files"] and LEDGER_DUMP not in manifest["files"]:
        raise BackupError(f"{folder}: the backup has no ledger")
    return manifest
