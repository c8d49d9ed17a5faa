"""Run one command and report its wall time and peak RSS (run as a script by bench.proc.run).

    python bench/launch.py RESULT.json TIMEOUT ARGV...

Why a separate small process: on Linux a child's ru_maxrss starts at the RSS high-water mark of
the process that spawned it (exec records the old address space's peak, and with vfork that is
the parent's own). Launched from the benchmark, which reads large files, every child would
inherit its peak. This launcher stays around 10 MB, below any command it measures, so
os.wait4 reports the command's own peak.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


def main() -> int:
    result_file, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    reaped = threading.Event()
    fired: list[bool] = []

    def _kill() -> None:
        if not reaped.is_set():
            fired.append(True)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    timer = threading.Timer(timeout, _kill)
    timer.daemon = True
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        reaped.set()
        timer.cancel()
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    with open(result_file, "w") as fh:
        json.dump({"seconds": seconds, "returncode": proc.returncode, "maxrss_kib": usage.ru_maxrss,
                   "timed_out": bool(fired)}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
