"""The scheduled-backup measures (issue 15), on the size section's database:

- the "unchanged since the newest bundle" check, as the schedule runs it (`sparkq backup
  --trigger scheduled` over an idle database that a bundle already holds), against the bare
  `sqlite3 .backup` it cannot be cheaper than: the check is a snapshot plus two hashes;
- a scheduled backup next to a writer (the writer's changes make it write a bundle): the
  writer's commit latency during it against the writer alone for as long.
"""

from __future__ import annotations

import statistics

from . import dbgen
from .report import Row, fmt_s, size_label

SCHEDULED = ("backup", "--trigger", "scheduled", "--json")


def case_schedule(bench, proj, size_mb: float) -> None:
    label = size_label(size_mb)
    _unchanged_check(bench, proj, label)
    _beside_a_writer(bench, proj, label)


def _unchanged_check(bench, proj, label: str) -> None:
    print(f"-- {label}: scheduled backup over an unchanged database vs sqlite3 .backup", flush=True)
    dbgen.checkpoint(proj.db)
    bench.sparkq(proj, "backup")  # the bundle the check compares with
    dst = proj.data_dir / "baseline.db"
    written: list[str] = []

    def a() -> float:
        r = bench.sparkq(proj, *SCHEDULED)
        if '"unchanged_since": null' in r.stdout:
            written.append(r.stdout)
        return r.seconds

    A, B = bench.alternate("unchanged check", "sqlite3 .backup", a, lambda: bench.sqlite_backup(proj.db, dst))
    note = "nothing written" if not written else f"{len(written)} run(s) wrote a bundle: NOT unchanged"
    bench.report.ratio_row("scheduled backup, unchanged (none written) vs sqlite3 .backup", label, A, B, None,
                           note=note)


def _beside_a_writer(bench, proj, label: str) -> None:
    print(f"-- {label}: writer commit latency during a scheduled backup vs none", flush=True)
    during: list[dict] = []
    alone: list[dict] = []
    took: list[float] = []
    for i in range(bench.pairs):
        x, y, seconds = bench.writer_pair(proj, f"s{i}", *SCHEDULED)
        during.append(x)
        alone.append(y)
        took.append(seconds)
        print(f"  pair {i + 1}/{bench.pairs}: scheduled backup {seconds:.2f} s; writer p99 "
              f"{x['p99_ms']:.2f} ms during vs {y['p99_ms']:.2f} ms alone", flush=True)
    bench.report.add(Row(measure="scheduled backup beside a writer", size=label, a=fmt_s(statistics.median(took)),
                         b="", ratio=None, target="-", verdict="info", data={"seconds": took}))
    failed = sum(r["failed"] for r in during)
    bench.report.ratio_row(
        "writer p99 commit latency, during a scheduled backup vs none", label,
        [r["p99_ms"] for r in during], [r["p99_ms"] for r in alone], 3.0,
        unit_fmt=lambda ms: f"{ms:.2f} ms", note=f"{failed} failed commits during",
        data={"during": during, "none": alone},
    )
