"""`python -m bench`: parse options, run every measure, print the verdicts and a markdown table."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from .cases import CASES, Bench
from .proc import SPARKQ
from .report import Report, loadavg, machine_info, machine_text, size_label

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "out"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sparkq.sh bench",
        description="Benchmark SparkQ commands against the bare operations they wrap (ratios, same run).",
    )
    p.add_argument("--quick", action="store_true", help="sizes 10 MB and 256 MB only (no 1 GiB database)")
    p.add_argument("--size", type=float, metavar="MB", help="one database size instead of the default set")
    p.add_argument("--pairs", type=int, default=3, metavar="N", help="A/B pairs per measure (default 3)")
    p.add_argument("--only", metavar="CASE[,CASE]",
                   help=f"run only these measures: {', '.join(CASES)} (default: all)")
    p.add_argument("--offsite", action="store_true",
                   help="also measure off-site copies: 14 daily bundles pushed to restic (slow; bench/offsite.py)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the results table as markdown")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="where the temporary databases go (default bench/out/; removed at the end)")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be >= 1")
    if args.size is not None and args.size < 0:
        p.error("--size must be >= 0")
    args.only = {c.strip() for c in args.only.split(",") if c.strip()} if args.only else None
    unknown = (args.only or set()) - set(CASES)
    if unknown:
        p.error(f"unknown --only case(s): {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    return args


def _on_sigterm(signum, frame):  # turn SIGTERM into the same clean-up path as Ctrl-C
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not shutil.which("sqlite3"):
        print("bench: the sqlite3 command is needed for the baselines: apt install sqlite3", file=sys.stderr)
        return 2
    if not os.path.exists(SPARKQ):
        print(f"bench: {SPARKQ} not found; run inside the project's venv (./sparkq.sh bench)", file=sys.stderr)
        return 2
    sizes = [args.size] if args.size is not None else ([10, 256] if args.quick else [10, 256, 1024])
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir()
    machine = machine_info(work)
    print(machine_text(machine), flush=True)
    print(f"sizes: {', '.join(size_label(s) for s in sizes)}; {args.pairs} pairs per measure (A B A B ...)",
          flush=True)
    report = Report(machine, {"sizes": sizes, "pairs": args.pairs, "quick": args.quick,
                              "only": sorted(args.only) if args.only else None})
    bench = Bench(work, args.pairs, report, args.only)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.perf_counter()
    interrupted = False
    try:
        bench.small_section(min(10, min(sizes)))
        for size in sizes:
            bench.size_section(size)
        bench.rss_growth()
        if args.offsite:
            from .offsite import measure

            measure(work, report, size_mb=args.size or 256)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; cleaning up", file=sys.stderr)
    finally:
        bench.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = loadavg()
    machine["seconds"] = round(time.perf_counter() - started, 1)
    table = report.markdown()
    print(f"\nload average at end {machine['loadavg_end']}; took {machine['seconds']} s\n")
    print(machine_text(machine) + "\n")
    print(table)
    if args.json:
        report.write_json(args.json)
    if args.markdown:
        args.markdown.write_text(machine_text(machine) + "\n\n" + table + "\n")
    missed = [r for r in report.rows if r.verdict == "MISS"]
    print(f"\n{sum(r.verdict == 'PASS' for r in report.rows)} PASS, {len(missed)} MISS, "
          f"{len(report.errors)} ERROR")
    if interrupted:
        return 130
    return 1 if report.errors else 0
