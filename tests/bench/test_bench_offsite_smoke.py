"""Smoke test of the off-site benchmark (bench/offsite.py): a tiny run prints its rows and cleans
up. No sizes or times are asserted; the numbers belong in docs/PERFORMANCE.md."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import REPO, base_env


@pytest.mark.long
@pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic (./sparkq.sh test installs it as root)")
def test_offsite_bench_tiny_run(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.offsite", "--size", "2", "--days", "2", "--pattern", "queue",
         "--out", str(out)],
        cwd=REPO, env=base_env(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "off-site repo after 2 daily bundles (queue" in proc.stdout
    assert "push of an unchanged bundle" in proc.stdout
    assert list(out.iterdir()) == []
