"""`python -m bench.cluster` in its smoke form: one node against two behind HAProxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_cluster_reports_one_and_two_node_figures(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    command = [sys.executable, "-m", "bench.cluster", "--quick", "--duration", "0.5"]
    result = subprocess.run(
        [*command, "--concurrency", "4", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert [f["nodes"] for f in data["figures"]] == [1, 1, 2]
    for figure in data["figures"]:
        assert figure["errors"] == 0 and figure["enrollments_per_s"] > 0
    assert data["scale"] > 0
    assert "two nodes through HAProxy / one node" in result.stdout
