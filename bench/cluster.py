"""`python -m bench.cluster`: enrollments/s of one appliance node against two, both on a
shared PostgreSQL ledger, the two behind HAProxy in TCP mode (README "High availability").

Everything runs on this machine on 127.0.0.1: a throwaway PostgreSQL cluster, the nodes
(same config and CA, `server.workers` each), HAProxy, and the keep-alive RA load generator of
`python -m bench`. Three figures: one node direct, one node through HAProxy (the balancer's
own cost), two nodes through HAProxy (the scale-out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.csrs import pump_csrs
from bench.lab import APPLIANCE, USER, Lab, Server, make_lab
from bench.loadgen import LoadSpec, Target, run_load
from tests.services import HAProxy, PostgresServer


@dataclass(frozen=True)
class Figure:
    name: str
    nodes: int
    enrollments_per_s: float
    p99_ms: float
    errors: int


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    duration = args.duration or (1.0 if args.quick else 5.0)
    cores = os.cpu_count() or 1
    csrs = pump_csrs(64 if args.quick else 512, keys=4)
    postgres = PostgresServer().start()
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        lab = _cluster_lab(folder, postgres.create_database("bench"), args.workers)
        figures = _measure(lab, folder, args, duration=duration, cores=cores, csrs=csrs)
    finally:
        postgres.stop()
    one, two = figures[0], figures[2]
    print(f"PostgreSQL ledger, {args.concurrency} keep-alive RA gateways, {duration:.0f} s each,")
    print(f"server.workers={args.workers} per node, {cores} cores shared by everything")
    print(f"{'setup':<28} {'nodes':>5} {'enroll/s':>9} {'p99 ms':>8} {'errors':>6}")
    for f in figures:
        print(
            f"{f.name:<28} {f.nodes:>5} {f.enrollments_per_s:>9.0f} {f.p99_ms:>8.1f} {f.errors:>6}"
        )
    scale = two.enrollments_per_s / one.enrollments_per_s if one.enrollments_per_s else 0.0
    print(f"two nodes through HAProxy / one node: {scale:.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"figures": [f.__dict__ for f in figures], "scale": scale}, indent=2)
        )
    return 0 if all(f.errors == 0 and f.enrollments_per_s > 0 for f in figures) else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke form: a second per figure")
    p.add_argument("--duration", type=float, help="seconds per figure (default 5)")
    p.add_argument("--concurrency", type=int, default=16, help="gateways at once (default 16)")
    p.add_argument("--workers", type=int, default=1, help="server.workers per node (default 1)")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def _cluster_lab(folder: Path, dsn: str, workers: int) -> Lab:
    lab = make_lab(folder / "lab", "rsa-2048", workers=workers, thread_pool=0)
    config = yaml.safe_load(lab.config.read_text())
    config["ledger"] = {"dsn": dsn}
    lab.config.write_text(yaml.safe_dump(config))
    subprocess.run(
        [*APPLIANCE, "db", "upgrade", "--config", str(lab.config)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return lab


def _measure(
    lab: Lab,
    folder: Path,
    args: argparse.Namespace,
    *,
    duration: float,
    cores: int,
    csrs: list[bytes],
) -> list[Figure]:
    nodes = [Server(lab), Server(lab)]
    balancers: list[HAProxy] = []
    try:
        one_lb = HAProxy(_subfolder(folder, "lb1"), [(nodes[0].host, nodes[0].port)]).start()
        two_lb = HAProxy(_subfolder(folder, "lb2"), [(n.host, n.port) for n in nodes]).start()
        balancers += [one_lb, two_lb]
        setups = [
            ("one node, direct", 1, nodes[0].port),
            ("one node through HAProxy", 1, one_lb.port),
            ("two nodes through HAProxy", 2, two_lb.port),
        ]
        figures = []
        for name, count, port in setups:
            spec = LoadSpec("keepalive", args.concurrency, cores, duration=duration)
            result = run_load(_target(lab, nodes[0].host, port), spec, csrs)
            latencies = sorted(result.latencies_ns)
            p99 = latencies[int(len(latencies) * 0.99) - 1] / 1e6 if latencies else 0.0
            figures.append(
                Figure(name, count, result.ok / result.elapsed, p99, sum(result.errors.values()))
            )
        return figures
    finally:
        for balancer in balancers:
            balancer.stop()
        for node in nodes:
            node.stop()


def _subfolder(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _target(lab: Lab, host: str, port: int) -> Target:
    return Target(
        host=host,
        port=port,
        ca_cert=lab.path("ca-cert.pem"),
        ra_cert=lab.path("iqe-ra-cert.pem"),
        ra_key=lab.path("iqe-ra-key.pem"),
        user=USER,
        password=lab.password,
    )


if __name__ == "__main__":
    sys.exit(main())
