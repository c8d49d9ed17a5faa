"""Smoke test of the benchmark harness: its smallest mode runs end to end and prints ratios.

No timing is asserted: CI machines vary and the numbers belong in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, base_env


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command (apt install sqlite3)")
def test_bench_quick_smallest_mode_prints_ratios_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    result_file = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--size", "5", "--pairs", "1",
         "--out", str(out), "--json", str(result_file)],
        cwd=REPO,
        env=base_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ratio_lines = [line for line in proc.stdout.splitlines() if "ratio" in line]
    assert len(ratio_lines) >= 6, proc.stdout
    assert "| Measure |" in proc.stdout  # the markdown table
    doc = json.loads(result_file.read_text())
    assert {row["verdict"] for row in doc["rows"]} <= {"PASS", "MISS", "info"}
    rows = {row["measure"]: row for row in doc["rows"]}
    api = rows["API p99 latency (PUT /api/config), during backup vs none"]["data"]
    assert api["during"][0]["requests"] > 0 and api["none"][0]["requests"] > 0
    assert "worst API request during backup" in rows
    phases = rows["backup-restore --db-only vs sqlite3 .backup"]["data"]["phases"][0]
    assert {"verify", "pre_restore", "place"} <= set(phases)  # printed by `sparkq -v backup-restore`
    assert "Linux " in proc.stdout.split("| Measure |")[0]  # the machine line comes with the table
    assert list(out.iterdir()) == []  # temp databases and projects removed
