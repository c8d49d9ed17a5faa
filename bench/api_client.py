"""HTTP client process for the API-latency benchmark (run as a script, one per measurement).

    python bench/api_client.py URL DB OUT.json

Sends `PUT URL/api/config/bench/kN` one request at a time over one keep-alive connection (what
a script driving SparkQ does), prints "ready" after its first answer, and goes on until SIGTERM.
Then it writes a summary of per-request latencies to OUT.json. A request that fails or answers
anything but 200 counts as failed. Between requests (outside the timed part) it notes the size
of DB's -wal file, so the summary also says how far the WAL grew.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import time
from urllib.parse import urlsplit

from writer import write_summary  # run as a script: bench/ is on sys.path


def main(url: str, db: str, out: str) -> int:
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    wal = db + "-wal"
    headers = {"Content-Type": "application/json"}

    def put(i: int) -> bool:
        body = json.dumps({"value": f"value {i} " + "x" * 64, "updated_by": "bench"})
        conn.request("PUT", f"/api/config/bench/k{i % 100}", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200

    if not put(0):
        return 1
    print("ready", flush=True)
    latencies: list[float] = []
    failed = 0
    errors: dict[str, int] = {}
    wal_peak = 0
    i = 0
    clock = time.perf_counter
    started = clock()
    while not stop:
        i += 1
        t0 = clock()
        try:
            ok = put(i)
        except (OSError, http.client.HTTPException) as exc:
            ok = False
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.close()  # reconnects on the next request
        latencies.append(clock() - t0)
        failed += not ok
        try:
            wal_peak = max(wal_peak, os.stat(wal).st_size)
        except OSError:
            pass
    elapsed = clock() - started
    conn.close()
    write_summary(out, latencies, failed, errors, elapsed, count_key="requests", wal_peak_bytes=wal_peak)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
