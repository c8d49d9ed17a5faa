"""Build benchmark databases and bundles fast: seeded SparkQ schema plus bulk `tasks` rows."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

MIB = 1024 * 1024
_STATUSES = ("queued", "running", "succeeded", "failed")
_TOOLS = (("llm-sonnet", "LLM_HEAVY"), ("run-tests", "FAST_SCRIPT"), ("lint", "FAST_SCRIPT"))


def build_db(db: Path, size_mb: float, *, seed: int = 7) -> dict:
    """Create `db` with the real schema and defaults, then add tasks until the file is `size_mb`.

    Payloads are 1-4 KB slices of a random hex pool: not compressible to nothing and not all
    zeros, so copies and checksums do real work. Rows go in with executemany in large
    transactions with the journal off (a throwaway file); the result is left in WAL mode, as the
    server keeps it.
    """
    from sparkq import storage

    db.parent.mkdir(parents=True, exist_ok=True)
    storage.setup_database(db)
    target = int(size_mb * MIB)
    rows = 0
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        now = storage.utc_now()
        session_id, queue_id = "ses_bench0000000000", "que_bench0000000000"
        conn.execute("INSERT OR IGNORE INTO sessions (id, name, created_at, updated_at) VALUES (?, 'bench', ?, ?)",
                     (session_id, now, now))
        conn.execute("INSERT OR IGNORE INTO queues (id, session_id, name, created_at, updated_at)"
                     " VALUES (?, ?, 'bench', ?, ?)", (queue_id, session_id, now, now))
        rng = random.Random(seed)
        pool = rng.randbytes(3 * MIB).hex()
        batch = max(50, min(5_000, target // (2560 * 100) or 50))
        sql = ("INSERT INTO tasks (id, queue_id, tool_name, task_class, payload, status, created_at, updated_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        while conn.execute("PRAGMA page_count").fetchone()[0] * page_size < target:
            chunk = []
            for _ in range(batch):
                n = rng.randint(1024, 4096)
                off = rng.randrange(0, len(pool) - n)
                tool, cls = _TOOLS[rows % len(_TOOLS)]
                payload = '{"prompt": "%s"}' % pool[off:off + n - 14]
                chunk.append((f"tsk_{rows:016x}", queue_id, tool, cls, payload, _STATUSES[rows % 4], now, now))
                rows += 1
            conn.execute("BEGIN")
            conn.executemany(sql, chunk)
            conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return {"rows": rows, "bytes": db.stat().st_size}


def warm(*paths: Path) -> None:
    """Read files once so both sides of a pair start from a warm page cache."""
    for path in paths:
        if not path.is_file():
            continue
        with open(path, "rb", buffering=0) as fh:
            while fh.read(8 * MIB):
                pass


def checkpoint(db: Path) -> None:
    """Fold and truncate the WAL (between runs, untimed) so each run starts from the same state."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def bundles(backup_dir: Path) -> list[Path]:
    """Bundle dirs and legacy .db files, oldest first by mtime; hidden temp dirs are skipped."""
    if not backup_dir.is_dir():
        return []
    found = [p for p in backup_dir.iterdir() if p.name.startswith("sparkq_")]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def prune(backup_dir: Path, keep_newest: int = 1) -> None:
    """Untimed housekeeping between runs: drop pre-restore bundles and all but the newest regular."""
    regular = [p for p in bundles(backup_dir) if not p.name.startswith("sparkq_preRestore")]
    doomed = [p for p in bundles(backup_dir) if p.name.startswith("sparkq_preRestore")]
    doomed += regular[: max(0, len(regular) - keep_newest)]
    for path in doomed:
        remove(path)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clone_bundles(src: Path, backup_dir: Path, count: int) -> int:
    """Make `count` copies of one real bundle, cheaply: hard links plus a fresh manifest each.

    Names are distinct `sparkq_2025MMDD_HHMMSS` and the manifest's created_at/timestamp agree with
    the name, so listing orders them as it would real bundles. The manifest is written as a new
    file (never through the hard link), so the source bundle stays untouched.
    """
    manifest = json.loads((src / "manifest.json").read_text())
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    made = 0
    for i in range(count):
        when = base + timedelta(minutes=37 * i, seconds=i % 60)
        dst = backup_dir / f"sparkq_{when:%Y%m%d_%H%M%S}"
        if dst.exists():
            continue
        shutil.copytree(src, dst, copy_function=os.link)
        (dst / "manifest.json").unlink()
        manifest.update(created_at=when.isoformat(), timestamp=f"{when:%Y%m%d_%H%M%S}")
        (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
        os.utime(dst, (when.timestamp(), when.timestamp()))
        made += 1
    return made
