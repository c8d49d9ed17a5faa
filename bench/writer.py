"""Writer process for the commit-latency benchmark (run as a script, one per measurement).

    python bench/writer.py DB OUT.json

Opens DB the way the server does (sparkq.storage.connect: WAL, busy_timeout 5 s, synchronous
NORMAL, autocommit), prints "ready" after its first commit, then commits one small row at a time
as fast as it can until SIGTERM, and writes a summary of per-commit latencies to OUT.json.
A failed commit (busy past the timeout, locked, I/O error) is counted and the loop goes on.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time

_SQL = "INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) VALUES (?, 'bench', 'write', 'bench', ?, ?)"
_DETAIL = "x" * 96


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def write_summary(out: str, latencies: list[float], failed: int, errors: dict[str, int], elapsed: float, *,
                  count_key: str, **extra) -> None:
    """Write the latency summary (milliseconds) the benchmark reads back from OUT.json."""
    ms = sorted(v * 1000 for v in latencies)
    summary = {
        count_key: len(ms),
        "failed": failed,
        "errors": errors,
        "seconds": elapsed,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        **extra,
    }
    with open(out, "w") as fh:
        json.dump(summary, fh)


def main(db: str, out: str) -> int:
    from sparkq.storage import connect

    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    conn = connect(db, timeout=5.0)
    conn.execute(_SQL, (repr(time.time()), 0, _DETAIL))
    print("ready", flush=True)
    latencies: list[float] = []
    failed = 0
    errors: dict[str, int] = {}
    i = 0
    started = time.perf_counter()
    clock = time.perf_counter
    while not stop:
        i += 1
        t0 = clock()
        try:
            conn.execute(_SQL, (repr(time.time()), i, _DETAIL))
        except sqlite3.Error as exc:
            failed += 1
            errors[str(exc)] = errors.get(str(exc), 0) + 1
            continue
        latencies.append(clock() - t0)
    elapsed = time.perf_counter() - started
    conn.close()
    write_summary(out, latencies, failed, errors, elapsed, count_key="commits")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
