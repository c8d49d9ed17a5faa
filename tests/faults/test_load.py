"""12 backups (60 with --long) while a client commits through the HTTP API as fast as it can.

A real server (`sparkq start`) and one client thread PUTting config entries with an increasing
counter. Every bundle is whole (checksums, integrity_check), holds a gap-free prefix 1..N of the
counter that includes every write acknowledged before the backup began, and no API request
fails while the backups (and their retention passes) run.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import bundle_problems


def test_backups_under_a_fast_api_writer(project, api_writer, counter, long):
    assert project.cli("start").returncode == 0
    writer = api_writer(project.port, "load")
    writer.wait_acked(20)
    highs = []
    try:
        for _ in range(60 if long else 12):
            acked_before = len(writer.acked)
            made = project.cli("backup", "--json")
            assert made.returncode == 0, made.stderr
            result = json.loads(made.stdout)
            bundle = Path(result["path"])
            assert result["integrity_check"] == "ok"
            assert bundle_problems(bundle) == [], bundle.name
            count, low, high = counter(bundle / "sparkq.db", "load")
            assert count == high and low == 1, f"{bundle.name}: counter not gap-free: {(count, low, high)}"
            assert high >= acked_before, f"{bundle.name} misses writes acknowledged before it began"
            assert not writer.failures, writer.failures[:3]
            highs.append(high)
    finally:
        writer.stop()
    assert writer.failures == [], writer.failures[:5]
    assert highs == sorted(highs) and highs[-1] > highs[0], "the writer made no progress during the backups"
    print(f"{len(highs)} backups; counter in bundles {highs[0]}..{highs[-1]}; {len(writer.acked)} writes")
    stopped = project.cli("stop")
    assert stopped.returncode == 0
    verify = project.cli("backup-verify", "--all")
    assert verify.returncode == 0, verify.stdout
