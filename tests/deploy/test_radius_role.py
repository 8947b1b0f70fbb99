"""The radius role's revocation check, without a container: its variable checks and templates
rendered by real Ansible on localhost, and the rendered CRL refresher run against a real
appliance on 127.0.0.1 (the deploy test runs it inside the systemd host)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.deploy.container import free_port
from tests.deploy.playbook import ANSIBLE_DIR, run_on_localhost
from tests.support import Lab, RunningAppliance, curl_ra_enroll, make_lab, run_cli, start_appliance

ROLE = ANSIBLE_DIR / "roles" / "radius"
REFRESHER = "est-radius-crl"


def _render(
    folder: Path, extra: dict[str, object], *, checks: bool = True
) -> subprocess.CompletedProcess[str]:
    """The role's checks (unless `checks` is off), then eap and the refresher into `folder`."""
    tasks = f"""    - name: Run the role's variable checks
      ansible.builtin.import_tasks: {ROLE / "tasks" / "assert.yml"}
      when: {str(checks).lower()}
    - name: Render a template
      ansible.builtin.template:
        src: "{ROLE / "templates"}/{{{{ item }}}}.j2"
        dest: "{folder}/{{{{ item }}}}"
        mode: "0755"
      loop: [eap, {REFRESHER}]
"""
    variables = {
        "radius_ca_cert_src": "/controller/ca-cert.pem",
        "radius_clients": [{"name": "ap", "address": "127.0.0.1", "secret": "s3cret-for-tests"}],
        **extra,
    }
    return run_on_localhost(folder, ROLE, tasks, variables)


def test_without_a_crl_url_freeradius_checks_no_crl(tmp_path: Path) -> None:
    run = _render(tmp_path, {})
    assert run.returncode == 0, run.stdout + run.stderr
    eap = (tmp_path / "eap").read_text()
    assert "check_crl = no" in eap and "ca_file = ${certdir}/est/ca.pem" in eap
    assert "allow_expired_crl" not in eap


def test_with_a_crl_url_freeradius_checks_the_ca_and_crl_bundle(tmp_path: Path) -> None:
    run = _render(tmp_path, {"radius_crl_url": "https://est.example:8445/crl"})
    assert run.returncode == 0, run.stdout + run.stderr
    eap = (tmp_path / "eap").read_text()
    assert "check_crl = yes" in eap and "ca_file = ${certdir}/est/ca-crl.pem" in eap
    assert "allow_expired_crl = no" in eap
    relaxed = _render(
        tmp_path / "relaxed",
        {"radius_crl_url": "https://est.example:8445/crl", "radius_crl_allow_expired": True},
    )
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "allow_expired_crl = yes" in (tmp_path / "relaxed" / "eap").read_text()


def test_a_new_crl_is_reread_without_a_restart_unless_told_to_restart(tmp_path: Path) -> None:
    """The default: FreeRADIUS re-reads ca_file every 300 s (which needs a ca_path, kept
    empty) and the refresher never restarts it. radius_crl_reload_seconds: 0 restores the
    restart. tests/e2e/test_radius.py proves the re-read on the same FreeRADIUS."""
    url: dict[str, object] = {"radius_crl_url": "https://est.example:8445/crl"}
    run = _render(tmp_path / "reload", url)
    assert run.returncode == 0, run.stdout + run.stderr
    eap = (tmp_path / "reload" / "eap").read_text()
    assert "ca_path = ${certdir}/est/reload-only" in eap
    assert "ca_path_reload_interval = 300" in eap
    assert "systemctl try-restart" not in (tmp_path / "reload" / REFRESHER).read_text()
    run = _render(tmp_path / "restart", {**url, "radius_crl_reload_seconds": 0})
    assert run.returncode == 0, run.stdout + run.stderr
    eap = (tmp_path / "restart" / "eap").read_text()
    assert "ca_path =" not in eap and "ca_path_reload_interval" not in eap
    assert 'systemctl try-restart "$service"' in (tmp_path / "restart" / REFRESHER).read_text()


@pytest.mark.parametrize(
    "extra",
    [
        {"radius_crl_url": "http://est.example:8445/crl"},
        {"radius_crl_url": "https://est.example:8445/crl", "radius_crl_refresh_minutes": 0},
        {"radius_crl_url": "https://est.example:8445/crl", "radius_crl_reload_seconds": 60},
    ],
)
def test_the_role_refuses_a_plain_http_crl_url_or_no_refresh(
    tmp_path: Path, extra: dict[str, object]
) -> None:
    run = _render(tmp_path, extra)
    assert run.returncode != 0
    said = " ".join(run.stdout.split())  # Ansible wraps long messages
    assert "radius_crl_url, when set, is the appliance's https:// CRL address" in said, said


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    running = start_appliance(make_lab(tmp_path_factory.mktemp("crl-appliance")))
    yield running
    running.stop()


def _refresher(folder: Path, url: str, ca: Path) -> Path:
    """The rendered script, with FreeRADIUS's certs/est folder under `folder`."""
    run = _render(
        folder,
        checks=url.startswith("https://"),
        extra={
            "radius_crl_url": url,
            "radius_config_dir": str(folder / "raddb"),
            "radius_group": subprocess.run(
                ["id", "-gn"], capture_output=True, text=True, check=True
            ).stdout.strip(),
        },
    )
    assert run.returncode == 0, run.stdout + run.stderr
    est = folder / "raddb" / "certs" / "est"
    est.mkdir(parents=True)
    (est / "ca.pem").write_bytes(ca.read_bytes())
    return folder / REFRESHER


def _run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), "--no-restart"], capture_output=True, text=True, timeout=60, check=False
    )


def _revoke_one(lab: Lab, appliance: RunningAppliance, folder: Path) -> int:
    """Enroll one pump and revoke it with the CLI; its serial."""
    key, csr = folder / "pump-key.pem", folder / "pump.der"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=NPPCRL1",
            "-keyout",
            str(key),
            "-outform",
            "DER",
            "-out",
            str(csr),
        ],
        capture_output=True,
        check=True,
    )
    status, _h, body = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr)
    assert status == 200, body
    result = run_cli("revoke", "--subject", "NPPCRL1", "--config", str(lab.config))
    # "revoked <serial hex> CN=NPPCRL1 (unspecified)"
    return int(result.stdout.split()[1], 16)


def test_the_refresher_installs_a_crl_only_when_the_est_ca_signed_it(
    appliance: RunningAppliance, tmp_path: Path
) -> None:
    lab = appliance.lab
    script = _refresher(tmp_path / "host", f"{appliance.base}/crl", lab.ca_cert)
    bundle = tmp_path / "host" / "raddb" / "certs" / "est" / "ca-crl.pem"

    first = _run(script)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("est-radius-crl: updated")
    text = bundle.read_text()
    assert text.startswith(lab.ca_cert.read_text()) and "BEGIN X509 CRL" in text
    again = _run(script)
    assert again.returncode == 0 and again.stdout.startswith("est-radius-crl: unchanged")

    serial = _revoke_one(lab, appliance, tmp_path)
    after = _run(script)
    assert after.stdout.startswith("est-radius-crl: updated"), after.stdout + after.stderr
    crl_pem = bundle.read_bytes().split(b"-----BEGIN X509 CRL-----", 1)[1]
    crl = x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + crl_pem)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_the_refresher_keeps_the_crl_it_has_when_the_new_one_is_not_acceptable(
    appliance: RunningAppliance, tmp_path: Path
) -> None:
    lab = appliance.lab
    good = _refresher(tmp_path / "good", f"{appliance.base}/crl", lab.ca_cert)
    assert _run(good).returncode == 0
    installed = (tmp_path / "good" / "raddb" / "certs" / "est" / "ca-crl.pem").read_bytes()

    # A CRL signed by another CA (read from a file, as TLS to this appliance would already
    # fail with that CA): refused, not installed.
    other = make_lab(tmp_path / "other")
    run_cli("crl", "--config", str(other.config))
    other_crl = next((tmp_path / "other").rglob("ca-crl.der"))
    foreign = _refresher(tmp_path / "foreign", other_crl.as_uri(), lab.ca_cert)
    result = _run(foreign)
    assert result.returncode != 0
    assert "is not signed by the EST CA" in result.stderr, result.stderr
    assert not (tmp_path / "foreign" / "raddb" / "certs" / "est" / "ca-crl.pem").exists()

    # Nobody listening.
    closed = _refresher(tmp_path / "closed", f"https://127.0.0.1:{free_port()}/crl", lab.ca_cert)
    result = _run(closed)
    assert result.returncode != 0 and "cannot fetch the CRL" in result.stderr

    # Not a CRL at all (the /cacerts answer).
    wrong = _refresher(tmp_path / "wrong", appliance.url("cacerts"), lab.ca_cert)
    result = _run(wrong)
    assert result.returncode != 0 and "did not answer a CRL" in result.stderr
    assert not (tmp_path / "wrong" / "raddb" / "certs" / "est" / "ca-crl.pem").exists()

    assert (tmp_path / "good" / "raddb" / "certs" / "est" / "ca-crl.pem").read_bytes() == installed
