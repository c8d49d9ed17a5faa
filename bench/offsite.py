"""Off-site cost: repository growth over 14 daily bundles, and the time to push an unchanged one.

Not part of the default run (it writes 14 full bundles and pushes each): `./sparkq.sh bench
--offsite`, or alone: `python -m bench.offsite [--size MB] [--days N]`. Needs restic.

Each "day" about 1% of the task rows change, then a manual backup writes a bundle and
`backup-push` sends it to a local restic repository. Two change patterns, since restic's chunks
(about 1 MB) decide what is new: `queue` (a task queue's day: new tasks appended, recent tasks
change status) and `scattered` (1% of rows anywhere in the file rewritten: the worst case).
Reported: the repository's size against one bundle (target <= 1.5x for the queue pattern) and
the local disk the same 14 bundles take.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

from . import dbgen
from .proc import SPARKQ, run
from .report import Report, Row, fmt_s, machine_info, machine_text, size_label

PATTERNS = ("queue", "scattered")
TARGET = 1.5


def disk_usage(path: Path) -> int:
    """Bytes the tree takes on disk (allocated blocks, each hard-linked file once)."""
    seen, total = set(), 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def change_a_day(db: Path, pattern: str, rng: random.Random, fraction: float = 0.01) -> int:
    """Change about `fraction` of the task rows the way `pattern` says; returns rows touched."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        last = conn.execute("SELECT max(rowid) FROM tasks").fetchone()[0]
        n = max(1, int(last * fraction))
        conn.execute("BEGIN")
        if pattern == "queue":
            recent = range(max(1, int(last * 0.95)), last + 1)
            for rowid in rng.sample(recent, min(n // 2, len(recent))):
                conn.execute("UPDATE tasks SET status='succeeded', updated_at=? WHERE rowid=?",
                             (time.strftime("%Y-%m-%dT%H:%M:%S"), rowid))
            conn.execute("""INSERT INTO tasks (id, queue_id, tool_name, task_class, payload, status, created_at,
                            updated_at) SELECT 'tsk_new_' || hex(randomblob(8)), queue_id, tool_name, task_class,
                            '{"prompt": "' || hex(randomblob(1200)) || '"}', 'queued', created_at, updated_at
                            FROM tasks WHERE rowid IN (SELECT rowid FROM tasks ORDER BY rowid DESC LIMIT ?)""",
                         (n - n // 2,))
        else:
            for rowid in rng.sample(range(1, last + 1), n):
                conn.execute("UPDATE tasks SET payload='{\"prompt\": \"' || hex(randomblob(1200)) || '\"}' "
                             "WHERE rowid=?", (rowid,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n
    finally:
        conn.close()


def measure(work: Path, report: Report, *, size_mb: float = 256, days: int = 14,
            patterns=PATTERNS, unchanged_runs: int = 3) -> None:
    if not shutil.which("restic"):
        report.error("off-site", size_label(size_mb), "restic is not installed (apt-get install restic)")
        return
    for pattern in patterns:
        try:
            _one_pattern(work / f"offsite-{pattern}", report, size_mb, days, pattern, unchanged_runs)
        finally:
            shutil.rmtree(work / f"offsite-{pattern}", ignore_errors=True)


def _one_pattern(root: Path, report: Report, size_mb: float, days: int, pattern: str, unchanged_runs: int):
    size = size_label(size_mb)
    root.mkdir(parents=True)
    (root / "pw").write_text("bench-password\n")
    os.chmod(root / "pw", 0o600)
    (root / "sparkq.yml").write_text("server:\n  port: 1\nbackup:\n  keep: %d\n" % (days + 5))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARKQ_", "RESTIC_"))}
    env.update(SPARKQ_ROOT=str(root), RESTIC_CACHE_DIR=str(root / "cache"))
    # Backups run without off-site (no push inside them); pushes get the repository by environment.
    pushing = {**env, "RESTIC_REPOSITORY": str(root / "repo"), "RESTIC_PASSWORD_FILE": str(root / "pw")}
    backup_dir = root / "sparkq" / "data" / "backups"
    db = root / "sparkq" / "data" / "sparkq.db"
    dbgen.build_db(db, size_mb)
    rng = random.Random(11)
    pushes: list[float] = []
    for day in range(days):
        if day:
            change_a_day(db, pattern, rng)
        run([SPARKQ, "backup"], env=env, cwd=root).check()
        pushes.append(run([SPARKQ, "backup-push"], env=pushing, cwd=root).check().seconds)
        if not day:
            first = disk_usage(root / "repo")
    bundles = [p for p in dbgen.bundles(backup_dir) if not p.name.startswith("sparkq_preRestore")]
    one = disk_usage(bundles[-1])
    local = sum(disk_usage(b) for b in bundles)  # each a full copy: no links between bundles
    repo = disk_usage(root / "repo")
    mb = 1 << 20
    ratio = repo / one
    limit = TARGET if pattern == "queue" else None
    report.add(Row(
        measure=f"off-site repo after {days} daily bundles ({pattern}, 1%/day)", size=size,
        a=f"{repo / mb:.0f} MB", b=f"{one / mb:.0f} MB (one bundle)", ratio=ratio,
        target=f"<= {TARGET:g}x" if limit else "-",
        verdict="info" if limit is None else ("PASS" if ratio <= limit else "MISS"),
        note=(f"first push {first / mb:.0f} MB, then +{(repo - first) / max(1, days - 1) / mb:.1f} MB a day; "
              f"local disk for the same {days} bundles: {local / mb:.0f} MB ({local / one:.1f}x)"),
        data={"repo_bytes": repo, "first_push_bytes": first, "bundle_bytes": one, "local_bytes": local,
              "push_s": pushes}))
    report.add(Row(measure=f"push of a new bundle ({pattern}, median)", size=size,
                   a=fmt_s(statistics.median(pushes[1:] or pushes)), b="", ratio=None, target="-",
                   verdict="info", data={"push_s": pushes}))
    if pattern == PATTERNS[0]:
        again = [run([SPARKQ, "backup-push", "1"], env=pushing, cwd=root).check().seconds
                 for _ in range(unchanged_runs)]
        report.add(Row(measure="push of an unchanged bundle (backup-push 1, median)", size=size,
                       a=fmt_s(statistics.median(again)), b="", ratio=None, target="-", verdict="info",
                       data={"push_s": again}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.offsite", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=float, default=256, metavar="MB")
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--pattern", choices=PATTERNS, action="append", help="default: both")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = p.parse_args(argv)
    work = args.out / f"offsite-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir(parents=True)
    machine = machine_info(work)
    print(machine_text(machine), flush=True)
    report = Report(machine, vars(args))
    try:
        measure(work, report, size_mb=args.size, days=args.days, patterns=args.pattern or PATTERNS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + report.markdown())
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
