"""Two appliance nodes on one PostgreSQL ledger behind HAProxy (TCP mode, health checks):
a fleet enrolls through the balancer while one node is killed (-9) and restarted, and a
revocation made through one node is refused for reenroll on the other at once."""

from __future__ import annotations

import base64
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.config import LedgerConfig
from appliance.ledger import REVOKED, SUPERSEDED, VALID
from appliance.ledger_factory import open_ledger
from simulator.fleet import PumpOutcome, enroll_pumps, make_pumps
from simulator.gateway import Enrollment, Gateway
from simulator.pki import KeyType
from simulator.pump import Pump, pump_serial
from simulator.renewal import reenroll_csr
from tests.services import HAProxy, PostgresServer, free_port
from tests.support import (
    Lab,
    RunningAppliance,
    curl,
    make_csr,
    make_lab,
    pkcs7_certificates,
    run_cli,
    start_appliance,
)

PUMPS = 48
# A node's log line for an enrollment it issued.
_ISSUED = re.compile(r"endpoint=simpleenroll .* status=200 serial=[0-9a-f]+ kind=enroll ")


@dataclass
class Cluster:
    lab: Lab
    dsn: str
    ports: list[int]
    nodes: list[RunningAppliance]
    balancer: HAProxy

    def start_node(self, index: int) -> RunningAppliance:
        node = start_appliance(self.lab, "--port", str(self.ports[index]))
        self.nodes[index] = node
        return node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    postgres = PostgresServer().start()
    try:
        dsn = postgres.create_database("ha")
        folder = tmp_path_factory.mktemp("ha")
        # One config, one CA for both nodes: what the Ansible cluster mode deploys.
        manual = {"manual": {"enrollment": {"manual_approval": True, "retry_after_seconds": 5}}}
        lab = make_lab(
            folder, {"ledger": {"dsn": dsn}, "server": {"workers": 1}, "profiles": manual}
        )
        run_cli("db", "upgrade", "--config", str(lab.config))
        ports = [free_port(), free_port()]
        nodes = [start_appliance(lab, "--port", str(port)) for port in ports]
        balancer = HAProxy(folder, [("127.0.0.1", p) for p in ports]).start()
        try:
            yield Cluster(lab, dsn, ports, nodes, balancer)
        finally:
            balancer.stop()
            for node in nodes:
                node.stop()
    finally:
        postgres.stop()


def _gateway(lab: Lab, url: str, retries: int, cls: type[Gateway] = Gateway) -> Gateway:
    return cls(
        url,
        ca_file=lab.ca_cert,
        approach="ra",
        ra_cert=lab.ra_cert,
        ra_key=lab.ra_key,
        timeout=20,
        retries=retries,
    )


def test_both_nodes_serve_through_the_balancer(cluster: Cluster) -> None:
    for node in cluster.nodes:
        node.assert_alive()
    status, _h, body = curl(
        ["--cacert", str(cluster.lab.ca_cert), f"{cluster.balancer.url}/.well-known/est/cacerts"]
    )
    assert status == 200 and body
    # Negative control: nothing else answers on a fresh port.
    status, headers, _b = curl(
        ["--cacert", str(cluster.lab.ca_cert), f"https://127.0.0.1:{free_port()}/"], timeout=5
    )
    assert status == 0 and "curl-error" in headers


def test_a_fleet_enrolls_while_a_node_is_killed_and_restarted(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = cluster.lab
    victim = cluster.nodes[0]
    pumps = make_pumps(
        [pump_serial("HA", i) for i in range(1, PUMPS + 1)], tmp_path, KeyType.EC_P256
    )
    kill_at = threading.Event()
    restarted = threading.Event()
    events: dict[str, int] = {}
    # The last quarter of the fleet waits for the restart, so the run is still going when the
    # node comes back (on an idle machine 48 pumps would otherwise be done within a second).
    last_quarter = {p.serial for p in pumps[-(PUMPS // 4) :]}

    class PacedGateway(Gateway):
        def enroll_pump(self, pump: Pump, ca_chain: Sequence[x509.Certificate]) -> Enrollment:
            if pump.serial in last_quarter:
                restarted.wait(60)
            return super().enroll_pump(pump, ca_chain)

    def progress(phase: str, done: int, _total: int) -> None:
        if phase == "enroll" and done == PUMPS // 4:
            kill_at.set()

    outcomes: list[PumpOutcome] = []

    def run_fleet() -> None:
        with _gateway(lab, cluster.balancer.url, retries=5, cls=PacedGateway) as gateway:
            ca_chain = gateway.fetch_cacerts()
            outcomes.extend(
                enroll_pumps(gateway, pumps, ca_chain, concurrency=4, progress=progress)
            )

    fleet = threading.Thread(target=run_fleet)
    fleet.start()
    # Kill and restart from this thread: a node dies with the thread that started it
    # (simulator.process sets the parent-death signal).
    assert kill_at.wait(60)
    events["killed_after"] = sum(p.certificate is not None for p in pumps)
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    time.sleep(1.0)  # the balancer's health check takes it out; clients go on with node B
    cluster.start_node(0)
    events["restarted_after"] = sum(p.certificate is not None for p in pumps)
    restarted.set()
    fleet.join(120)
    assert not fleet.is_alive()

    assert victim.process.returncode == -signal.SIGKILL
    assert 0 < events["killed_after"] < PUMPS  # the kill happened mid-run,
    assert events["restarted_after"] <= PUMPS - PUMPS // 4  # and so did the restart
    failures = [(o.serial, o.error) for o in outcomes if not o.enrolled]
    assert not failures, failures

    received = [p.certificate for p in pumps]
    assert all(c is not None for c in received)
    serials = [format(c.serial_number, "x") for c in received if c is not None]
    assert len(set(serials)) == PUMPS  # no serial repeats

    ledger = open_ledger(LedgerConfig(dsn=cluster.dsn))
    try:
        for cert in received:
            assert cert is not None
            found = ledger.find(format(cert.serial_number, "x"))
            assert found is not None, "a certificate a client received is not in the ledger"
            assert found.der == cert.public_bytes(Encoding.DER)
        recorded = ledger.certificates(limit=100_000)
        all_serials = [r.serial for r in recorded]
        assert len(all_serials) == len(set(all_serials))  # each recorded once
        # Every pump's subject is in the ledger; a request cut off by the kill may have been
        # recorded once more before the retry, never a received certificate twice.
        assert {f"CN={p.serial}" for p in pumps} <= {r.subject for r in recorded}
    finally:
        ledger.close()

    # Both nodes issued, and the restarted node serves again.
    assert _ISSUED.search(cluster.nodes[1].log_text())
    assert _ISSUED.search(victim.log_text())
    cluster.nodes[0].assert_alive()
    with _gateway(lab, cluster.nodes[0].base, retries=0) as direct:
        one = make_pumps([pump_serial("HA-AFTER", 1)], tmp_path, KeyType.EC_P256)[0]
        direct.enroll_pump(one, direct.fetch_cacerts())
    assert one.certificate is not None
    assert _ISSUED.search(cluster.nodes[0].log_text())


def _reenroll_on(node: RunningAppliance, lab: Lab, pump: Pump, out: Path) -> tuple[int, bytes]:
    """simplereenroll with the pump's own certificate as TLS client certificate (curl)."""
    assert pump.certificate is not None
    cert = pump.certificate
    csr = reenroll_csr(cert, pump.key)
    key_file = pump.key_file
    csr_file = out / "reenroll.der"
    csr_file.write_bytes(csr)
    cert_file = out / "current.pem"
    cert_file.write_bytes(cert.public_bytes(Encoding.PEM))
    status, _headers, body = curl(
        [
            "--cacert", str(lab.ca_cert), "--cert", str(cert_file), "--key", str(key_file),
            "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr_file}",
            node.url("simplereenroll"),
        ]
    )  # fmt: skip
    return status, body


def test_a_revocation_on_node_a_is_refused_for_reenroll_on_node_b(
    cluster: Cluster, tmp_path: Path
) -> None:
    lab = cluster.lab
    node_a, node_b = cluster.nodes
    revoked_pump, kept_pump = make_pumps(
        [pump_serial("REV", 1), pump_serial("REV", 2)], tmp_path, KeyType.EC_P256
    )
    with _gateway(lab, node_a.base, retries=0) as on_a:
        chain = on_a.fetch_cacerts()
        on_a.enroll_pump(revoked_pump, chain)
        on_a.enroll_pump(kept_pump, chain)
    assert revoked_pump.certificate is not None and kept_pump.certificate is not None

    # Revoked on node A's side of the cluster (its config, its ledger connection).
    serial = format(revoked_pump.certificate.serial_number, "x")
    ledger = open_ledger(LedgerConfig(dsn=cluster.dsn))
    try:
        assert ledger.set_status(serial, REVOKED, revoked_pump.certificate.not_valid_before_utc)
    finally:
        ledger.close()

    status, body = _reenroll_on(node_b, lab, revoked_pump, tmp_path)
    assert status == 403, body
    assert b"revoked" in body

    # Negative control: the certificate nobody revoked renews on node B, and node A sees it.
    status, body = _reenroll_on(node_b, lab, kept_pump, tmp_path)
    assert status == 200, body
    ledger = open_ledger(LedgerConfig(dsn=cluster.dsn))
    try:
        old = ledger.find(format(kept_pump.certificate.serial_number, "x"))
        assert old is not None and old.status == SUPERSEDED
        renewed = list(ledger.valid_for_subject(f"CN={kept_pump.serial}", old.issued_at))
        assert renewed and renewed[0].status == VALID and renewed[0].replaces == old.serial
    finally:
        ledger.close()


def test_a_request_held_on_one_node_is_approved_and_collected_on_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    """RFC 7030 §4.2.3 across nodes: the pending request lives in the shared ledger."""
    lab = cluster.lab
    node_a, node_b = cluster.nodes
    csr, _key = make_csr(tmp_path, "held-pump")
    args = ["--cacert", str(lab.ca_cert), "--cert", str(lab.ra_cert), "--key", str(lab.ra_key)]
    args += ["-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}"]
    status, _h, body = curl([*args, node_a.url("manual/simpleenroll")])
    assert status == 202, body
    request_id = int(body.split()[1])
    status, _h, body = curl([*args, node_b.url("manual/simpleenroll")])
    assert status == 202 and int(body.split()[1]) == request_id  # the same request, not a new one
    run_cli("approve", str(request_id), "--config", str(lab.config))
    status, _h, from_b = curl([*args, node_b.url("manual/simpleenroll")])
    assert status == 200, from_b
    # A CA label answers in base64 (RFC 7030 §4.1.3).
    assert "subject=CN = held-pump" in pkcs7_certificates(base64.b64decode(from_b))
    # Sent again to node A: the certificate already issued on B, not a second one.
    status, _h, from_a = curl([*args, node_a.url("manual/simpleenroll")])
    assert status == 200 and from_a == from_b
