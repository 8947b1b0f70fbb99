"""Deploy with ansible/site.yml onto a real systemd host and check what a PKI engineer would.

One container, one first run (the package fixture); the tests then look at the host, talk to
the deployed services over loopback, and run the playbook again in the order written here:
idempotence, check mode, one changed variable, and the lab-password guard.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from simulator import Gateway, Pump, RadiusServer, authenticate
from simulator.troubleshooting import EnrollmentError
from tests.deploy.conftest import (
    HOST,
    OPERATOR,
    OPERATOR_PASSWORD,
    PASSWORD,
    RA_SCOPES,
    RADIUS_SECRET,
    Deployment,
)
from tests.support import curl, openssl

# The first test also boots the container and runs the first deployment (and, on a fresh
# machine, debootstraps the root, about a minute): far beyond the suite's 300 s default.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1500)]

SERVICE = "est-appliance.service"
PKI = "/var/lib/est-appliance/pki"


def _show(deployment: Deployment, *properties: str) -> dict[str, str]:
    out = deployment.container.ssh(
        f"systemctl show --property={','.join(properties)} {SERVICE}"
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _foreign_ca(folder: Path) -> tuple[Path, Path]:
    """A CA the deployment never heard of, for the negative controls."""
    key, cert = folder / "foreign-ca-key.pem", folder / "foreign-ca.pem"
    if not cert.exists():
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Foreign CA",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        )
    return cert, key


def test_first_run_deploys_everything(deployment: Deployment) -> None:
    run = deployment.first_run
    assert run.returncode == 0, run.describe()
    assert run.failed == 0 and run.unreachable == 0, run.describe()
    assert run.changed > 0, run.describe()  # a fresh host: the recap must show real work


def test_service_is_active_under_systemd_as_the_unprivileged_user(
    deployment: Deployment,
) -> None:
    box = deployment.container
    assert box.ssh("readlink /proc/1/exe").stdout.strip().endswith("systemd")
    state = _show(deployment, "ActiveState", "SubState", "User", "MainPID", "UnitFileState")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["UnitFileState"] == "enabled", state
    owner = box.ssh(f"ps -o user= -p {state['MainPID']}").stdout.strip()
    assert owner == "est-appliance" == state["User"]
    # The account is a system account that cannot log in, and not root (negative control).
    passwd = box.ssh("getent passwd est-appliance").stdout.strip().split(":")
    assert int(passwd[2]) < 1000 and int(passwd[2]) != 0
    assert passwd[6] == "/usr/sbin/nologin"


def test_private_keys_are_0600_and_owned_by_the_service_user(deployment: Deployment) -> None:
    box = deployment.container
    listing = box.ssh(f"stat -c '%n %a %U' {PKI}/*.pem").stdout.splitlines()
    modes = {Path(name).name: (mode, user) for name, mode, user in (x.split() for x in listing)}
    for key in ("ca-key.pem", "server-key.pem", "iqe-ra-key.pem"):
        assert modes[key] == ("600", "est-appliance"), modes
    assert modes["ca-cert.pem"] == ("644", "est-appliance"), modes
    # Password hashes: root only; config.yaml: readable by the service group, not by others.
    etc = box.ssh(
        "stat -c '%n %a %U %G' /etc/est-appliance/users.json /etc/est-appliance/config.yaml"
    ).stdout.split("\n")
    assert etc[0].split()[1:] == ["600", "root", "root"], etc
    assert etc[1].split()[1:] == ["640", "root", "est-appliance"], etc
    config = box.ssh("cat /etc/est-appliance/config.yaml").stdout
    assert PASSWORD not in config and "$argon2id$" in config
    # The exported RA key on the controller is private too.
    assert (deployment.export / "iqe-ra-key.pem").stat().st_mode & 0o777 == 0o600


def test_an_operator_from_the_inventory_uses_the_device_api(deployment: Deployment) -> None:
    """est_appliance_admin_users reaches admin.users as a hash; a bootstrap user is no operator."""
    url = f"{deployment.url}/api/devices"
    ca = ["--cacert", str(deployment.export / "ca-cert.pem")]
    status, _headers, body = curl([*ca, "-u", f"{OPERATOR}:{OPERATOR_PASSWORD}", url])
    assert status == 200, body
    assert isinstance(json.loads(body), dict | list)
    status, headers, _body = curl([*ca, "-u", f"iqe-gateway:{PASSWORD}", url])
    assert status == 401 and "www-authenticate" in headers
    box = deployment.container
    mode = box.ssh("stat -c '%a %U %G' /etc/est-appliance/admins.json").stdout.split()
    assert mode == ["600", "root", "root"], mode
    config = box.ssh("cat /etc/est-appliance/config.yaml").stdout
    assert OPERATOR_PASSWORD not in config and f"{OPERATOR}" in config


def test_unit_is_hardened(deployment: Deployment) -> None:
    box = deployment.container
    unit = f"/etc/systemd/system/{SERVICE}"
    verify = box.ssh(f"systemd-analyze verify {unit}", check=False)
    assert verify.returncode == 0, verify.stderr
    props = _show(
        deployment,
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateTmp",
        "ProtectHome",
        "ReadWritePaths",
        "CapabilityBoundingSet",
        "MemoryDenyWriteExecute",
        "User",
    )
    assert props["NoNewPrivileges"] == "yes"
    assert props["MemoryDenyWriteExecute"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["ProtectHome"] == "yes"
    assert set(props["ReadWritePaths"].split()) == {
        "/var/lib/est-appliance/ledger",
        PKI,
    }, props
    assert props["CapabilityBoundingSet"] == "", props
    # What the service really sees: /etc read-only, the PKI folder writable.
    pid = _show(deployment, "MainPID")["MainPID"]
    mounts = box.ssh(f"cat /proc/{pid}/mountinfo").stdout
    ro = {line.split()[4] for line in mounts.splitlines() if " ro," in line or " ro " in line}
    assert "/etc" in ro or "/" in ro, mounts
    exposure = box.ssh(f"systemd-analyze security --no-pager {SERVICE}", check=False).stdout
    score = float(exposure.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert score <= 3.0, exposure[-400:]


def test_cacerts_answers_over_tls_with_the_exported_ca(deployment: Deployment) -> None:
    url = f"{deployment.url}/.well-known/est/cacerts"
    ca = deployment.export / "ca-cert.pem"
    status, headers, body = curl(["--cacert", str(ca), url])
    assert status == 200 and headers["content-type"].startswith("application/pkcs7-mime")
    certs = openssl("pkcs7", "-inform", "DER", "-print_certs", input_bytes=body).stdout
    assert b"EST Appliance Device CA" in certs
    # Negative control: a client trusting another CA refuses the handshake (curl exit 60).
    foreign, _ = _foreign_ca(deployment.folder)
    refused = subprocess.run(
        ["curl", "-sS", "--cacert", str(foreign), url],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 60, refused.stderr


def test_a_pump_enrolls_through_the_deployed_appliance_and_passes_eap_tls(
    deployment: Deployment,
) -> None:
    """The simulator on this machine plays the IQE gateway and the pump; FreeRADIUS here
    trusts only the CA the role exported."""
    export = deployment.export
    ca = export / "ca-cert.pem"
    pumps = deployment.folder / "pumps"
    with _ra_gateway(deployment) as gateway:
        pump = Pump.create("NPPDEPLOY1", pumps / "NPPDEPLOY1")
        gateway.enroll_pump(pump, gateway.fetch_cacerts())
    assert (pump.key_file.stat().st_mode & 0o777) == 0o600
    with RadiusServer(ca, deployment.folder / "radius-host") as radius:
        assert authenticate(pump, radius).accepted
        # Negative control: the same certificate under another pump's identity.
        assert not authenticate(pump, radius, identity="NPPOTHER").accepted

    # The password approach with the inventory's password, and a wrong one refused.
    with Gateway(
        deployment.url, ca_file=ca, approach="password", username="iqe-gateway", password=PASSWORD
    ) as by_password:
        second = Pump.create("NPPDEPLOY2", pumps / "NPPDEPLOY2")
        by_password.enroll_pump(second, by_password.fetch_cacerts())
    with Gateway(
        deployment.url,
        ca_file=ca,
        approach="password",
        username="iqe-gateway",
        password="not-the-password-123",
    ) as wrong:
        with pytest.raises(EnrollmentError) as refused:
            wrong.enroll_pump(
                Pump.create("NPPDEPLOY3", pumps / "NPPDEPLOY3"), wrong.fetch_cacerts()
            )
        assert refused.value.status == 401


def test_ra_scopes_from_the_inventory_limit_what_the_gateway_may_enroll(
    deployment: Deployment,
) -> None:
    """est_appliance_config_overrides reaches the running service: the inventory's scopes keep
    both of the gateway's credentials to pump names (the pumps above were inside them)."""
    ca = deployment.export / "ca-cert.pem"
    laptops = deployment.folder / "laptops"
    password = Gateway(
        deployment.url, ca_file=ca, approach="password", username="iqe-gateway", password=PASSWORD
    )
    for gateway, scope in ((_ra_gateway(deployment), "iqe-ra"), (password, "iqe-password")):
        with gateway, pytest.raises(EnrollmentError) as refused:
            gateway.enroll_pump(Pump.create("laptop-9", laptops / scope), gateway.fetch_cacerts())
        assert refused.value.status == 403
        assert f"auth.ra_scopes.{scope}.common_name_pattern" in (
            refused.value.server_message or ""
        ), refused.value


def _ra_gateway(deployment: Deployment) -> Gateway:
    """The IQE gateway's RA approach with the credentials the est_appliance role exported."""
    export = deployment.export
    return Gateway(
        deployment.url,
        ca_file=export / "ca-cert.pem",
        approach="ra",
        ra_cert=export / "iqe-ra-cert.pem",
        ra_key=export / "iqe-ra-key.pem",
    )


def _revoke_device(deployment: Deployment, name: str, reason: str) -> None:
    """What an operator does on the device API: revoke the device's certificate."""
    status, _headers, body = curl(
        [
            "--cacert",
            str(deployment.export / "ca-cert.pem"),
            "-u",
            f"{OPERATOR}:{OPERATOR_PASSWORD}",
            "-H",
            "Content-Type: application/json",
            "--data",
            json.dumps({"reason": reason}),
            f"{deployment.url}/api/devices/{name}/revoke",
        ]
    )
    assert status == 200, body


def _eapol(deployment: Deployment, identity: str, cert: Path, key: Path) -> int:
    conf = deployment.folder / f"eapol-{identity}.conf"
    server_ca = deployment.radius_export / "radius-server-cert.pem"
    conf.write_text(
        "network={\n key_mgmt=WPA-EAP\n eap=TLS\n"
        f' identity="{identity}"\n ca_cert="{server_ca}"\n client_cert="{cert}"\n'
        f' private_key="{key}"\n eapol_flags=0\n}}\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [
            "eapol_test",
            "-c",
            str(conf),
            "-a",
            "127.0.0.1",
            "-p",
            str(deployment.radius_port),
            "-s",
            RADIUS_SECRET,
            "-t",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode


def test_radius_role_accepts_only_pumps_of_the_est_ca(deployment: Deployment) -> None:
    """FreeRADIUS deployed by the radius role, in the container, asked from this machine."""
    pump = Pump.create("NPPRADIUS1", deployment.folder / "pumps" / "NPPRADIUS1")
    with _ra_gateway(deployment) as gw:
        gw.enroll_pump(pump, gw.fetch_cacerts())
    assert _eapol(deployment, "NPPRADIUS1", pump.cert_file, pump.key_file) == 0
    # Negative controls: another identity; a certificate from a CA the server does not trust.
    assert _eapol(deployment, "NPPRADIUS2", pump.cert_file, pump.key_file) != 0
    foreign_cert, foreign_key = _foreign_ca(deployment.folder)
    rogue_key, rogue_csr = deployment.folder / "rogue-key.pem", deployment.folder / "rogue.csr"
    rogue_cert = deployment.folder / "rogue-cert.pem"
    openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=NPPROGUE",
        "-keyout",
        str(rogue_key),
        "-out",
        str(rogue_csr),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(rogue_csr),
        "-CA",
        str(foreign_cert),
        "-CAkey",
        str(foreign_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        str(rogue_cert),
    )
    assert _eapol(deployment, "NPPROGUE", rogue_cert, rogue_key) != 0


def test_est_lab_check_passes_on_the_iqe_host(deployment: Deployment) -> None:
    """What the Vagrantfile's last provisioner runs on the iqe VM, both approaches."""
    box = deployment.container
    for approach in ("ra", "password"):
        result = box.ssh(f"est-lab-check {approach}", check=False, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "est-lab-check: OK" in result.stdout


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    before = _show(deployment, "InvocationID")["InvocationID"]
    run = deployment.run()
    assert run.returncode == 0, run.describe()
    assert run.changed == 0, run.describe()
    assert _show(deployment, "InvocationID")["InvocationID"] == before


def test_check_mode_on_a_deployed_host_reports_no_change(deployment: Deployment) -> None:
    run = deployment.run("--check")
    assert run.returncode == 0, run.describe()
    assert run.changed == 0, run.describe()


def test_a_changed_variable_restarts_the_service_exactly_once(deployment: Deployment) -> None:
    box = deployment.container
    before = _show(deployment, "InvocationID")["InvocationID"]
    cursor = box.ssh("journalctl --show-cursor -n 0 -q | sed -n 's/^-- cursor: //p'").stdout
    run = deployment.run("-e", "est_appliance_log_level=DEBUG")
    assert run.returncode == 0, run.describe()
    assert run.changed > 0, run.describe()
    after = _show(deployment, "InvocationID", "ActiveState")
    assert after["ActiveState"] == "active" and after["InvocationID"] != before
    # Every invocation that logged since the cursor, besides the one that was stopped: exactly
    # one, the running one. Two would mean a restart per notifying task.
    entries = [
        json.loads(line)
        for line in box.ssh(
            f"journalctl -u {SERVICE} -o json --after-cursor='{cursor.strip()}'"
        ).stdout.splitlines()
    ]
    started = {e.get("_SYSTEMD_INVOCATION_ID") or e.get("INVOCATION_ID") for e in entries}
    assert started - {None, before} == {after["InvocationID"]}, started
    # systemd's own "Started" record (SD_MESSAGE_UNIT_STARTED), once.
    unit_started = "39f53479d3a045ac8e11786248231fbf"
    assert sum(1 for e in entries if e.get("MESSAGE_ID") == unit_started) == 1, entries[-5:]
    config = yaml.safe_load(box.ssh("cat /etc/est-appliance/config.yaml").stdout)
    assert config["logging"]["level"] == "DEBUG"
    # Overrides survive a change of the role's own variables.
    assert config["auth"]["ra_scopes"] == RA_SCOPES


def test_lab_password_is_refused_on_a_host_not_marked_lab(deployment: Deployment) -> None:
    before = _show(deployment, "InvocationID")["InvocationID"]
    users = json.dumps({"est_appliance_users": {"iqe-gateway": "iqe-secure-password-2024"}})
    run = deployment.run("-e", users)
    assert run.returncode != 0 and run.failed == 1, run.describe()
    assert "not marked as a lab" in run.output
    assert "iqe-secure-password-2024" not in run.output
    # Nothing reached the host: the guard runs before any change.
    assert _show(deployment, "InvocationID")["InvocationID"] == before
    assert HOST in run.output


def test_radius_rejects_a_pump_once_the_appliance_revokes_it(deployment: Deployment) -> None:
    """radius_crl_url: the radius host fetches the appliance's CRL (est-radius-crl.timer), and
    FreeRADIUS checks every pump against it."""
    box = deployment.container
    assert box.ssh("systemctl is-enabled est-radius-crl.timer").stdout.strip() == "enabled"
    assert box.ssh("systemctl is-active est-radius-crl.timer").stdout.strip() == "active"
    eap = box.ssh("cat /etc/freeradius/3.0/mods-available/eap").stdout
    assert "check_crl = yes" in eap and "ca-crl.pem" in eap
    # radius_crl_reload_seconds (default 300): FreeRADIUS re-reads the bundle by itself; its
    # ca_path exists only for that and must hold nothing it could trust.
    assert "ca_path_reload_interval = 300" in eap
    assert box.ssh("ls -A /etc/freeradius/3.0/certs/est/reload-only").stdout.strip() == ""
    pumps = {
        name: Pump.create(name, deployment.folder / "pumps" / name)
        for name in ("NPPKEPT", "NPPSTOLEN")
    }
    with _ra_gateway(deployment) as gw:
        cacerts = gw.fetch_cacerts()
        for pump in pumps.values():
            gw.enroll_pump(pump, cacerts)
    for name, pump in pumps.items():
        assert _eapol(deployment, name, pump.cert_file, pump.key_file) == 0, name

    _revoke_device(deployment, "NPPSTOLEN", "keyCompromise")
    radius_pid = box.ssh("systemctl show -p MainPID --value freeradius").stdout.strip()
    # What the timer runs every radius_crl_refresh_minutes, run now.
    box.ssh("systemctl start est-radius-crl.service")
    log = box.ssh("journalctl -u est-radius-crl.service -o cat --no-pager").stdout
    assert "est-radius-crl: updated" in log and "re-reads it within 300 s" in log, log
    # No restart: authentications in flight on the Wi-Fi are not cut off by a new CRL.
    assert box.ssh("systemctl show -p MainPID --value freeradius").stdout.strip() == radius_pid
    # The re-read itself comes 300 s later; tests/e2e/test_radius.py proves it on the same
    # FreeRADIUS under a 100x clock. Here a restart shows that the bundle the refresher wrote
    # revokes the stolen pump on this host, and only it.
    box.ssh("systemctl restart freeradius")
    stolen, kept = pumps["NPPSTOLEN"], pumps["NPPKEPT"]
    assert _eapol(deployment, "NPPSTOLEN", stolen.cert_file, stolen.key_file) != 0
    assert _eapol(deployment, "NPPKEPT", kept.cert_file, kept.key_file) == 0


def test_radius_keeps_its_crl_while_the_appliance_is_down(deployment: Deployment) -> None:
    """A failed fetch leaves the CRL in place and says why; pumps keep getting on meanwhile."""
    box = deployment.container
    bundle = "/etc/freeradius/3.0/certs/est/ca-crl.pem"
    before = box.ssh(f"sha256sum {bundle}").stdout
    box.ssh(f"systemctl stop {SERVICE}")
    try:
        assert box.ssh("systemctl start est-radius-crl.service", check=False).returncode != 0
        log = box.ssh("journalctl -u est-radius-crl.service -o cat --no-pager -n 20").stdout
        assert "est-radius-crl: cannot fetch the CRL" in log, log
        assert box.ssh(f"sha256sum {bundle}").stdout == before
        kept = deployment.folder / "pumps" / "NPPKEPT"
        assert _eapol(deployment, "NPPKEPT", kept / "cert.pem", kept / "key.pem") == 0
    finally:
        box.ssh(f"systemctl start {SERVICE}")
    # Serving again (Type=simple: started is not yet listening), and the next fetch succeeds.
    deadline = time.monotonic() + 60
    while box.ssh("systemctl start est-radius-crl.service", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the CRL could not be fetched after the restart"
        time.sleep(1)


def test_a_play_that_fetches_a_new_crl_leaves_radius_running(deployment: Deployment) -> None:
    """With radius_crl_reload_seconds (default 300) FreeRADIUS re-reads the CRL by itself, so
    a play run that brings a new one restarts nothing, as the timer's fetch restarts nothing."""
    box = deployment.container
    bundle = "/etc/freeradius/3.0/certs/est/ca-crl.pem"
    # Only the play may fetch the new CRL here (the timer's first run comes a minute after
    # boot); the play starts the timer again.
    box.ssh("systemctl stop est-radius-crl.timer")
    spare = Pump.create("NPPSPARE", deployment.folder / "pumps" / "NPPSPARE")
    with _ra_gateway(deployment) as gw:
        gw.enroll_pump(spare, gw.fetch_cacerts())
    _revoke_device(deployment, "NPPSPARE", "cessationOfOperation")
    crl_before = box.ssh(f"sha256sum {bundle}").stdout
    radius_pid = box.ssh("systemctl show -p MainPID --value freeradius").stdout.strip()
    run = deployment.run()
    assert run.returncode == 0, run.describe()
    assert box.ssh(f"sha256sum {bundle}").stdout != crl_before  # the play's fetch brought it
    # ... and FreeRADIUS kept running: no authentication in flight was cut off.
    assert box.ssh("systemctl show -p MainPID --value freeradius").stdout.strip() == radius_pid
    assert box.ssh("systemctl is-active est-radius-crl.timer").stdout.strip() == "active"
