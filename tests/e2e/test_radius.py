"""The access point side through the public API: RadiusServer trusts only the EST CA, ties the
identity to the certificate's CN, keeps its port across restarts, and checks CRLs when given
(the hook the revocation work builds on) — both as `freeradius -X` (one thread, full trace) and
threaded with errors-only logging (fleet runs), where the log must still explain rejections."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from simulator.eapol import authenticate
from simulator.gateway import Approach, Gateway
from simulator.pki import CaFiles, create_ca, issue_client_certificate
from simulator.pump import Pump
from simulator.radius import MIN_CRL_RELOAD_SECONDS, RadiusServer
from tests.support import RunningAppliance

pytestmark = pytest.mark.e2e


def enrolled_pump(appliance: RunningAppliance, serial: str, folder: Path) -> Pump:
    lab = appliance.lab
    pump = Pump.create(serial, folder / serial)
    with Gateway(
        appliance.base,
        ca_file=lab.ca_cert,
        approach=Approach.RA,
        ra_cert=lab.ra_cert,
        ra_key=lab.ra_key,
    ) as gateway:
        gateway.enroll_pump(pump, gateway.fetch_cacerts())
    return pump


def write_crl(ca: CaFiles, revoked: list[x509.Certificate], path: Path) -> Path:
    ca_cert, ca_key = ca.load()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def server_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


@pytest.mark.parametrize("debug", [True, False], ids=["debug-X", "threaded"])
def test_radius_server_accepts_ours_rejects_strangers_and_checks_crls(
    appliance: RunningAppliance, out: Path, debug: bool
) -> None:
    lab = appliance.lab
    tag = "X" if debug else "T"
    good = enrolled_pump(appliance, f"NPPRAD{tag}1", out)
    revoked = enrolled_pump(appliance, f"NPPRAD{tag}2", out)
    foreign_ca = create_ca(out / "foreign", "Foreign CA")
    stranger = Pump.create(f"NPPRAD{tag}3", out / "stranger")
    stranger.install(
        [issue_client_certificate(foreign_ca, x509.load_der_x509_csr(stranger.csr_der))],
        [x509.load_pem_x509_certificate(foreign_ca.cert.read_bytes())],
    )
    # No server certificate given: the server makes its own identity; pumps trust that CA.
    with RadiusServer(lab.ca_cert, out / "radius", debug=debug, threads=6) as radius:
        assert radius.pid is not None
        if debug:  # -X implies -s: no thread pool
            assert server_threads(radius.pid) == 1
        else:  # the pool as configured, and no per-request trace in the log
            assert server_threads(radius.pid) >= 6
        assert radius.server_ca_file != lab.ca_cert
        assert authenticate(good, radius).accepted
        assert authenticate(revoked, radius).accepted
        assert ("Received Access-Request" in radius.log_text()) is debug
        foreign = authenticate(stranger, radius, explain=True)
        assert not foreign.accepted
        assert foreign.exit_code != 0
        assert "unable to get local issuer certificate" in foreign.reason
        impostor = authenticate(good, radius, identity=revoked.serial, explain=True)
        assert not impostor.accepted
        assert impostor.exit_code != 0
        assert "does not match" in impostor.reason

        port = radius.port
        ca = CaFiles(lab.ca_cert, lab.certs / "ca-key.pem")
        assert revoked.certificate is not None
        radius.set_crl_files([write_crl(ca, [revoked.certificate], out / "ca.crl")])
        radius.restart()
        assert radius.port == port
        assert authenticate(good, radius).accepted
        verdict = authenticate(revoked, radius, explain=True)
        assert not verdict.accepted
        assert "revoked" in verdict.reason
    assert not radius.running


def _freeradius_at_100x(folder: Path) -> str:
    """FreeRADIUS under libfaketime, its clock 100x fast: its 300 s CRL re-read interval (the
    floor FreeRADIUS allows) passes in 3 s. eapol_test, the appliance and the CRLs keep real
    time."""
    assert shutil.which("faketime"), "faketime (Debian package) is missing: scripts/setup.sh"
    wrapper = folder / "freeradius-100x"
    wrapper.write_text('#!/bin/sh\nexec faketime -f "+0 x100" freeradius "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("debug", [True, False], ids=["debug-X", "threaded"])
def test_a_new_crl_takes_effect_without_a_restart(
    appliance: RunningAppliance, out: Path, debug: bool
) -> None:
    """crl_reload_seconds (FreeRADIUS's ca_path_reload_interval): the same server process
    rejects a pump once the file it trusts carries a CRL that revokes it, and not before the
    interval has passed."""
    lab = appliance.lab
    tag = "X" if debug else "T"
    good = enrolled_pump(appliance, f"NPPRLD{tag}1", out)
    revoked = enrolled_pump(appliance, f"NPPRLD{tag}2", out)
    ca = CaFiles(lab.ca_cert, lab.certs / "ca-key.pem")
    assert revoked.certificate is not None
    nobody_revoked = write_crl(ca, [], out / f"empty-{tag}.crl")
    with RadiusServer(
        lab.ca_cert,
        out / f"radius-reload-{tag}",
        debug=debug,
        crl_files=[nobody_revoked],
        crl_reload_seconds=MIN_CRL_RELOAD_SECONDS,
        executable=_freeradius_at_100x(out),
    ) as radius:
        pid = radius.pid
        assert authenticate(revoked, radius).accepted
        radius.reload_crl_files([write_crl(ca, [revoked.certificate], out / f"rev-{tag}.crl")])
        # Within the interval the server still uses what it read at start.
        assert authenticate(revoked, radius).accepted
        time.sleep(MIN_CRL_RELOAD_SECONDS / 100 + 0.5)  # 350 s on FreeRADIUS's clock
        verdict = authenticate(revoked, radius, explain=True)
        assert not verdict.accepted
        assert "revoked" in verdict.reason
        assert authenticate(good, radius).accepted
        assert radius.pid == pid  # the same process: no restart


def test_a_crl_reload_interval_below_freeradius_floor_is_refused(out: Path) -> None:
    with pytest.raises(ValueError, match="at least 300"):
        RadiusServer(Path("ca.pem"), out, crl_reload_seconds=60)
