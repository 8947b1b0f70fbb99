"""`python -m bench`: enrollment throughput, latency, CPU and memory against the machine's limits.

For each CA key (RSA-2048, EC P-256) it creates a lab (`est-appliance init`), measures the
machine's limits with that lab's keys (CA signatures/s on all cores, openssl handshakes/s),
starts `est-appliance serve` on 127.0.0.1 and drives it in three modes at each concurrency.
Every row prints beside its ratio to the limit; the targets of docs/PERFORMANCE.md are checked
at the end from the same run. `--quick` is the few-second smoke form CI runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.csrs import pump_csrs
from bench.lab import USER, Lab, Server, make_lab
from bench.limits import handshake_limit, signing_limit
from bench.loadgen import MODES, LoadResult, LoadSpec, Mode, Target, run_load
from bench.procstat import (
    cpu_seconds,
    machine_ticks,
    process_tree,
    rss_bytes,
    workers_pinned,
)
from bench.profile import profile_summary

ALGORITHMS = ("rsa-2048", "ec-p256")
# The targets, as ratios measured in one run (never absolute times).
KEEPALIVE_MIN_SIGNING_SHARE = 0.25
NEWCONN_MIN_HANDSHAKE_SHARE = 0.40
P99_MAX_MS = 50.0
RSS_MAX_GROWTH = 0.10
LOADGEN_BUSY = 0.90  # a load process above this share of a core may be the bottleneck


@dataclass
class Row:
    algorithm: str
    mode: Mode
    concurrency: int
    rate: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: dict[str, int]
    server_cpu_ms: float  # per enrollment
    client_cpu_ms: float  # per enrollment
    client_max_core: float
    machine_idle: float  # share of all cores idle during the row
    rss_before: int
    rss_after: int
    limit_name: str
    limit: float

    @property
    def ratio(self) -> float:
        return self.rate / self.limit if self.limit else 0.0


@dataclass
class AlgorithmRun:
    algorithm: str
    signing_limit: float
    handshake_limit: float
    workers: int
    # Every worker (all its threads) on one CPU, each a different one: server.cpu_affinity
    # as the kernel applied it, read back from the workers.
    pinned: bool = False
    rows: list[Row] = field(default_factory=list)


@dataclass
class Soak:
    enrollments: int
    rate: float
    rss_start: int
    rss_warm: int
    rss_end: int
    errors: dict[str, int]

    @property
    def growth(self) -> float:
        return (self.rss_end - self.rss_warm) / self.rss_warm


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.duration = args.duration or 0.4
        args.concurrency = args.concurrency or "1,8"
        args.limit_duration = args.limit_duration or 1.0
    duration = args.duration or 5.0
    concurrency = [int(c) for c in (args.concurrency or "1,8,32").split(",")]
    modes: list[Mode] = [m for m in MODES if m in args.modes.split(",")]

    algorithms = [a for a in ALGORITHMS if a in args.algorithms.split(",")]
    cores = len(os.sched_getaffinity(0))
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="est-bench-"))
    out = sys.stdout
    _print_machine(out, cores, args)
    csrs = pump_csrs(64 if args.quick else 512, keys=4 if args.quick else 16)
    runs: list[AlgorithmRun] = []
    soak: Soak | None = None
    profile_text = ""
    try:
        for algorithm in algorithms if modes else []:
            lab = _lab(folder / algorithm, algorithm, args)
            run = _measure_algorithm(
                lab,
                args=args,
                cores=cores,
                duration=duration,
                concurrency=concurrency,
                modes=modes,
                csrs=csrs,
            )
            runs.append(run)
            _print_run(out, run, duration)
        if args.soak:
            lab = _lab(folder / "soak", ALGORITHMS[0], args)
            soak = _soak(lab, args, csrs)
            _print_soak(out, soak)
        if args.profile:
            lab = _lab(folder / "profile", ALGORITHMS[0], args)
            profile_text = _profile(lab, args, csrs)
            print(profile_text, file=out)
        failures = _print_targets(out, runs, soak)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        _write_json(
            Path(args.json),
            runs=runs,
            soak=soak,
            args=args,
            cores=cores,
            profile_text=profile_text,
        )
    return 1 if failures and args.check_targets else 0


def _lab(folder: Path, algorithm: str, args: argparse.Namespace) -> Lab:
    return make_lab(
        folder,
        algorithm,
        workers=args.workers,
        thread_pool=args.thread_pool,
        cpu_affinity=args.cpu_affinity,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Enrollment benchmark of the EST appliance against this machine's limits.",
    )
    p.add_argument("--quick", action="store_true", help="smoke form: a few seconds (CI)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 5)")
    p.add_argument("--limit-duration", type=float, help="seconds per machine-limit measurement")
    p.add_argument("--concurrency", help="comma-separated gateways at once (default 1,8,32)")
    p.add_argument("--modes", default=",".join(MODES), help="keepalive,newconn,password")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="rsa-2048,ec-p256")
    p.add_argument("--workers", type=int, default=0, help="server.workers (0: one per core)")
    p.add_argument(
        "--cpu-affinity",
        choices=("auto", "off"),
        default="auto",
        help="server.cpu_affinity (auto: each worker on a core of its own)",
    )
    p.add_argument(
        "--thread-pool", type=int, default=0, help="server.thread_pool per worker (0: default)"
    )
    p.add_argument(
        "--client-processes", type=int, default=0, help="load processes (0: one per core)"
    )
    p.add_argument("--soak", type=int, default=0, help="also run N keep-alive enrollments (RSS)")
    p.add_argument("--profile", type=float, default=0, help="also profile N seconds (py-spy)")
    p.add_argument("--json", help="write every number to this JSON file")
    p.add_argument("--keep", help="keep labs and appliance logs in this folder")
    p.add_argument("--check-targets", action="store_true", help="exit 1 when a target is missed")
    return p


def _target(lab: Lab, server: Server) -> Target:
    return Target(
        host=server.host,
        port=server.port,
        ca_cert=lab.path("ca-cert.pem"),
        ra_cert=lab.path("iqe-ra-cert.pem"),
        ra_key=lab.path("iqe-ra-key.pem"),
        user=USER,
        password=lab.password,
    )


def _measure_algorithm(
    lab: Lab,
    *,
    args: argparse.Namespace,
    cores: int,
    duration: float,
    concurrency: list[int],
    modes: list[Mode],
    csrs: list[bytes],
) -> AlgorithmRun:
    # Limits first, while nothing else of ours runs.
    limit_duration = args.limit_duration or 3.0
    signing = signing_limit(lab.path("ca-key.pem"), cores, limit_duration)
    handshakes = max(
        handshake_limit(lab.certs, limit_duration, clients)
        for clients in ((2,) if args.quick else (1, 2))
    )
    client_processes = args.client_processes or cores
    server = Server(lab)
    try:
        pids = process_tree(server.pid)
        run = AlgorithmRun(
            lab.key_algorithm,
            signing,
            handshakes,
            workers=len(pids) - 1 or 1,
            pinned=workers_pinned(pids[1:]),
        )
        target = _target(lab, server)
        for mode in modes:
            for conc in concurrency:
                spec = LoadSpec(mode, conc, client_processes, duration=duration)
                run.rows.append(_measure(target, spec, csrs, pids, run))
    finally:
        server.stop()
    return run


def _measure(
    target: Target, spec: LoadSpec, csrs: list[bytes], pids: list[int], run: AlgorithmRun
) -> Row:
    rss_before = rss_bytes(pids)
    readings: list[tuple[float, tuple[int, int]]] = []

    def window() -> Callable[[], None]:
        # Only while the load runs: not the load processes starting, handshaking (keep-alive
        # rows connect beforehand) or stopping, when the cores idle.
        readings.append((cpu_seconds(pids), machine_ticks()))
        return lambda: readings.append((cpu_seconds(pids), machine_ticks()))

    result = run_load(target, spec, csrs, window=window)
    (cpu_before, (idle_before, ticks_before)), (cpu_after, (idle_after, ticks_after)) = readings
    server_cpu = cpu_after - cpu_before
    limit_name, limit = (
        ("handshakes", run.handshake_limit)
        if spec.mode == "newconn"
        else ("signing", run.signing_limit)
    )
    return _row(
        run.algorithm,
        result,
        server_cpu=server_cpu,
        machine_idle=(idle_after - idle_before) / max(1, ticks_after - ticks_before),
        rss_before=rss_before,
        rss_after=rss_bytes(pids),
        limit_name=limit_name,
        limit=limit,
    )


def _row(
    algorithm: str,
    result: LoadResult,
    *,
    server_cpu: float,
    machine_idle: float,
    rss_before: int,
    rss_after: int,
    limit_name: str,
    limit: float,
) -> Row:
    ok = max(1, result.ok)
    return Row(
        algorithm=algorithm,
        mode=result.spec.mode,
        concurrency=result.spec.concurrency,
        rate=result.rate,
        p50_ms=result.percentile_ms(0.50),
        p99_ms=result.percentile_ms(0.99),
        ok=result.ok,
        errors=dict(result.errors),
        server_cpu_ms=server_cpu / ok * 1000,
        client_cpu_ms=result.client_cpu / ok * 1000,
        client_max_core=result.client_max_core,
        machine_idle=machine_idle,
        rss_before=rss_before,
        rss_after=rss_after,
        limit_name=limit_name,
        limit=limit,
    )


def _soak(lab: Lab, args: argparse.Namespace, csrs: list[bytes]) -> Soak:
    """RSS before and after `args.soak` keep-alive enrollments (after a warm-up)."""
    cores = len(os.sched_getaffinity(0))
    server = Server(lab)
    try:
        pids = process_tree(server.pid)
        target = _target(lab, server)
        rss_start = rss_bytes(pids)
        processes = args.client_processes or cores
        run_load(target, LoadSpec("keepalive", 8, processes, requests=2000), csrs)
        rss_warm = rss_bytes(pids)
        result = run_load(target, LoadSpec("keepalive", 8, processes, requests=args.soak), csrs)
        return Soak(
            enrollments=result.ok,
            rate=result.rate,
            rss_start=rss_start,
            rss_warm=rss_warm,
            rss_end=rss_bytes(pids),
            errors=dict(result.errors),
        )
    finally:
        server.stop()


def _profile(lab: Lab, args: argparse.Namespace, csrs: list[bytes]) -> str:
    """Sample the appliance's workers with py-spy during a keep-alive run at concurrency 32."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    cores = len(os.sched_getaffinity(0))
    server = Server(lab)
    raw = lab.folder / "profile.txt"
    try:
        target = _target(lab, server)
        spec = LoadSpec("keepalive", 32, args.client_processes or cores, duration=args.profile)
        sampler = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(server.pid),
                "--subprocesses",
                # Only the thread holding the GIL: where the Python CPU goes (idle pool
                # threads waiting for work would otherwise dominate every sample).
                "--gil",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                "500",
                "--duration",
                str(round(args.profile)),
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        run_load(target, spec, csrs)
        _out, err = sampler.communicate(timeout=args.profile + 60)
        if sampler.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
    finally:
        server.stop()
    return profile_summary(raw.read_text())


# ---- output --------------------------------------------------------------------------------


def _print_machine(out: Any, cores: int, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(
        f"machine: {cores} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        file=out,
    )
    print(f"command: python -m bench {' '.join(sys.argv[1:])}".rstrip(), file=out)


def _print_run(out: Any, run: AlgorithmRun, duration: float) -> None:
    print(
        f"\n## CA {run.algorithm}: {run.workers} appliance worker(s)"
        f"{', each on a core of its own' if run.pinned else ''}; machine limits: "
        f"CA signing {run.signing_limit:,.0f}/s on all cores (pyca/cryptography), "
        f"openssl s_server {run.handshake_limit:,.0f} full handshakes/s (client cert)\n",
        file=out,
    )
    print(
        "| mode | conc | enroll/s | of limit | p50 ms | p99 ms | server CPU ms/enr "
        "| loadgen CPU ms/enr | loadgen busiest | CPU idle | server RSS MiB before→after "
        "| errors |",
        file=out,
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|", file=out)
    for row in run.rows:
        busy = f"{row.client_max_core:.0%}" + (" (!)" if row.client_max_core > LOADGEN_BUSY else "")
        errors = ", ".join(f"{k}: {v}" for k, v in row.errors.items()) or "0"
        print(
            f"| {row.mode} | {row.concurrency} | {row.rate:,.0f} | "
            f"{row.ratio:.1%} {row.limit_name} | {row.p50_ms:.1f} | {row.p99_ms:.1f} | "
            f"{row.server_cpu_ms:.2f} | {row.client_cpu_ms:.2f} | {busy} | "
            f"{row.machine_idle:.0%} | "
            f"{row.rss_before / 2**20:.0f}→{row.rss_after / 2**20:.0f} | {errors} |",
            file=out,
        )
    print(
        f"\n({duration:g} s per row; 'of limit': keep-alive and password rows against CA "
        "signing, new-connection rows against openssl handshakes; '(!)' marks a load process "
        f"above {LOADGEN_BUSY:.0%} of a core; server CPU and 'CPU idle' (share of all cores "
        "nobody used) while the load ran, its set-up and teardown excluded)",
        file=out,
    )


def _print_soak(out: Any, soak: Soak) -> None:
    print(
        f"\n## soak: {soak.enrollments:,} keep-alive enrollments at concurrency 8, "
        f"{soak.rate:,.0f}/s; server RSS {soak.rss_start / 2**20:.1f} MiB at start, "
        f"{soak.rss_warm / 2**20:.1f} MiB after 2,000 warm-up enrollments, "
        f"{soak.rss_end / 2**20:.1f} MiB after the run: growth {soak.growth:+.1%}; "
        f"errors {sum(soak.errors.values())}",
        file=out,
    )


def _print_targets(out: Any, runs: list[AlgorithmRun], soak: Soak | None) -> list[str]:
    """The issue's targets from this run's ratios; returns the names of the missed ones."""
    print("\n## targets (ratios from this run)\n", file=out)
    failures: list[str] = []

    def verdict(name: str, ok: bool | None, detail: str) -> None:
        label = "not measured" if ok is None else ("PASS" if ok else "FAIL")
        if ok is False:
            failures.append(name)
        print(f"- {label}: {name}: {detail}", file=out)

    rsa = next((run for run in runs if run.algorithm == "rsa-2048"), None)
    keep = [r for r in rsa.rows if r.mode == "keepalive"] if rsa else []
    new = [r for r in rsa.rows if r.mode == "newconn"] if rsa else []
    if keep and rsa:
        best = max(keep, key=lambda r: r.rate)
        verdict(
            "keep-alive enrollments/s >= 25% of CA signing (RSA-2048)",
            best.ratio >= KEEPALIVE_MIN_SIGNING_SHARE,
            f"{best.rate:,.0f}/s at concurrency {best.concurrency} = {best.ratio:.1%} of "
            f"{rsa.signing_limit:,.0f}/s",
        )
    else:
        verdict("keep-alive enrollments/s >= 25% of CA signing (RSA-2048)", None, "no RSA rows")
    if new and rsa:
        best = max(new, key=lambda r: r.rate)
        verdict(
            "new-connection enrollments/s >= 40% of openssl handshakes (RSA-2048)",
            best.ratio >= NEWCONN_MIN_HANDSHAKE_SHARE,
            f"{best.rate:,.0f}/s at concurrency {best.concurrency} = {best.ratio:.1%} of "
            f"{rsa.handshake_limit:,.0f}/s",
        )
    else:
        verdict("new-connection >= 40% of openssl handshakes (RSA-2048)", None, "no RSA rows")
    at32 = [r for run in runs for r in run.rows if r.mode == "keepalive" and r.concurrency == 32]
    if at32:
        worst = max(at32, key=lambda r: r.p99_ms)
        verdict(
            "p99 <= 50 ms at concurrency 32, keep-alive",
            worst.p99_ms <= P99_MAX_MS,
            ", ".join(f"{r.algorithm} {r.p99_ms:.1f} ms" for r in at32),
        )
    else:
        verdict("p99 <= 50 ms at concurrency 32, keep-alive", None, "concurrency 32 not run")
    if soak is not None:
        verdict(
            f"RSS growth <= 10% over {soak.enrollments:,} enrollments",
            soak.growth <= RSS_MAX_GROWTH and soak.enrollments >= 100_000,
            f"{soak.growth:+.1%}",
        )
    else:
        verdict("RSS growth <= 10% over 100,000 enrollments", None, "run with --soak 100000")
    errors = sum(sum(r.errors.values()) for run in runs for r in run.rows)
    verdict(
        "every enrollment answered 200 with the pump's certificate", errors == 0, f"{errors} errors"
    )
    return failures


def _write_json(
    path: Path,
    *,
    runs: list[AlgorithmRun],
    soak: Soak | None,
    args: argparse.Namespace,
    cores: int,
    profile_text: str,
) -> None:
    data = {
        "cores": cores,
        "args": vars(args),
        "runs": [
            {
                "algorithm": run.algorithm,
                "signing_limit": run.signing_limit,
                "handshake_limit": run.handshake_limit,
                "workers": run.workers,
                "workers_pinned": run.pinned,
                "rows": [dataclasses.asdict(row) | {"ratio": row.ratio} for row in run.rows],
            }
            for run in runs
        ],
        "soak": dataclasses.asdict(soak) | {"growth": soak.growth} if soak else None,
        "profile": profile_text or None,
    }
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
