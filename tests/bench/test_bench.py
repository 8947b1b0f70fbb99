"""The benchmark's smoke form runs and prints sane numbers (never a timing assertion)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.csrs import pump_csrs
from bench.lab import USER, Server, make_lab
from bench.loadgen import LoadSpec, Target, run_load

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs_and_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "## targets" in result.stdout
    assert "every enrollment answered 200" in result.stdout
    data = json.loads(out.read_text())
    assert [run["algorithm"] for run in data["runs"]] == ["rsa-2048", "ec-p256"]
    for run in data["runs"]:
        assert run["signing_limit"] > 0
        assert run["handshake_limit"] > 0
        assert run["workers"] == 2 or data["cores"] == 1
        assert run["workers_pinned"] == (data["cores"] >= 2)  # server.cpu_affinity: auto
        modes = {(row["mode"], row["concurrency"]) for row in run["rows"]}
        assert modes == {(m, c) for m in ("keepalive", "newconn", "password") for c in (1, 8)}
        for row in run["rows"]:
            assert row["ok"] > 0, row
            assert row["errors"] == {}, row
            assert 0 < row["p50_ms"] <= row["p99_ms"], row
            assert row["server_cpu_ms"] > 0, row
            assert row["client_cpu_ms"] > 0, row
            assert row["rss_before"] > 0 and row["rss_after"] > 0, row
            assert row["ratio"] > 0, row


def test_load_generator_counts_refusals_instead_of_enrollments(tmp_path: Path) -> None:
    """Negative control: with a wrong password every request is a 401 and none counts as done."""
    lab = make_lab(tmp_path / "lab", "ec-p256", workers=1, thread_pool=8)
    server = Server(lab)
    try:
        csrs = pump_csrs(4, keys=1)
        good = Target(
            host=server.host,
            port=server.port,
            ca_cert=lab.path("ca-cert.pem"),
            ra_cert=lab.path("iqe-ra-cert.pem"),
            ra_key=lab.path("iqe-ra-key.pem"),
            user=USER,
            password=lab.password,
        )
        ok = run_load(good, LoadSpec("keepalive", 2, 1, requests=20), csrs)
        assert ok.ok == 20 and not ok.errors
        wrong = Target(**{**good.__dict__, "password": lab.password + "x"})
        try:
            run_load(wrong, LoadSpec("password", 2, 1, requests=10), csrs)
        except RuntimeError as exc:
            # The warm-up enrollment of each connection is checked in full and fails loudly.
            assert "HTTP 401" in str(exc)
        else:
            raise AssertionError("a wrong password must not produce enrollments")
    finally:
        server.stop()


def test_in_process_cpu_tool_enrolls_for_real_and_cleans_up(tmp_path: Path) -> None:
    """`python -m bench.inproc` drives real enrollments through the WSGI app; it fails loudly
    when one is not a 200 with a DER body, and leaves no lab (with its CA key) behind."""
    before = set(Path(tempfile.gettempdir()).glob("est-inproc-*"))
    result = subprocess.run(
        [sys.executable, "-m", "bench.inproc", "--enrollments", "10", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("in-process: ") and "ms CPU per RA simpleenroll" in line
    assert float(line.split()[1]) > 0
    leftovers = set(Path(tempfile.gettempdir()).glob("est-inproc-*")) - before
    assert not leftovers, leftovers
