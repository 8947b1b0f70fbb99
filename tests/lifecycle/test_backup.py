"""`est-appliance backup` / `restore` keep the ledger and the PKI (CA key 0600), refuse to
overwrite without --force and refuse a tampered backup; `expiring --days N` lists exactly the
certificates ending within N days."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

from tests.lifecycle.conftest import enroll
from tests.support import RunningAppliance, run_cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_backup_and_restore_keep_ledger_pki_and_key_modes(
    appliance: RunningAppliance, work: Path
) -> None:
    lab = appliance.lab
    enroll(appliance, "NPPBACKUP1", work)
    # Online: the appliance keeps serving while the backup is taken.
    target = work / "backup"
    result = run_cli("backup", str(target), "--config", str(lab.config))
    assert "holds the CA key" in result.stdout
    assert mode(target) == 0o700
    assert mode(target / "pki" / "ca-key.pem") == 0o600
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["certificates"] >= 1

    listed = run_cli("list", "--json", "--config", str(lab.config)).stdout
    # Restore into a fresh copy of the configuration (the original keeps serving).
    clone = work / "clone"
    clone.mkdir()
    shutil.copy(lab.config, clone / "config.yaml")
    run_cli("restore", str(target), "--config", str(clone / "config.yaml"))
    assert mode(clone / "certs" / "ca-key.pem") == 0o600
    assert (clone / "certs" / "ca-cert.pem").read_bytes() == lab.ca_cert.read_bytes()
    assert run_cli("list", "--json", "--config", str(clone / "config.yaml")).stdout == listed
    run_cli("check", "--config", str(clone / "config.yaml"))

    # Negative controls: no overwrite without --force; a tampered backup restores nothing.
    again = run_cli("restore", str(target), "--config", str(clone / "config.yaml"), check=False)
    assert again.returncode != 0 and "--force" in again.stderr
    (target / "pki" / "ca-cert.pem").write_text("tampered")
    bad = run_cli("restore", str(target), "--force", "--config", str(clone / "config.yaml"),
                  check=False)  # fmt: skip
    assert bad.returncode != 0 and "changed since the backup" in bad.stderr
    busy = run_cli("backup", str(target), "--config", str(lab.config), check=False)
    assert busy.returncode != 0 and "not empty" in busy.stderr


def test_expiring_lists_only_certificates_ending_within_n_days(
    appliance: RunningAppliance, work: Path
) -> None:
    lab = appliance.lab
    _c, _k, serial = enroll(appliance, "NPPEXPIRE1", work)
    # Pump certificates last 365 days here: within 400 days, not within 300.
    within = run_cli("expiring", "--days", "400", "--json", "--config", str(lab.config)).stdout
    rows = [json.loads(line) for line in within.splitlines()]
    assert serial in {r["serial"] for r in rows}
    assert all(r["days_left"] <= 400 for r in rows)
    outside = run_cli("expiring", "--days", "300", "--config", str(lab.config)).stdout
    assert serial not in outside
    assert "no device certificate expires within 300 days" in outside
