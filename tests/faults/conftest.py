"""Fault-injection settings: quick by default, `--long` for more iterations; one seeded RNG per run.

The seed comes from SPARKQ_FAULT_SEED when set (to replay a failure), else from the OS; it is
printed at the end of the run and in every failing kill test, so a failure can be repeated.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import wait_until

_PHASES = pytest.StashKey[dict]()
SEED = int(os.environ.get("SPARKQ_FAULT_SEED") or random.SystemRandom().randrange(1, 2**31))

# Kill points per kill -9 test: quick (CI) and --long (local).
KILL_POINTS = {"quick": 8, "long": 36}


def is_long(config) -> bool:
    return bool(config.getoption("--long"))


@pytest.fixture
def long(request) -> bool:
    """True when the run asked for the long fault suite (`--long`)."""
    return is_long(request.config)


@pytest.fixture
def rng(request) -> random.Random:
    """A random source seeded from the run's seed and the test's name (stable across -k choices)."""
    print(f"fault seed {SEED} (replay: SPARKQ_FAULT_SEED={SEED})")
    return random.Random(f"{SEED}:{request.node.name}")


def pytest_generate_tests(metafunc):
    """`kill_at`: stratified random fractions of a measured run, one per kill point. Each point
    falls in its own slice of [0, 1), so the kills cover the whole run (snapshot, verify, publish)."""
    if "kill_at" not in metafunc.fixturenames:
        return
    n = KILL_POINTS["long" if is_long(metafunc.config) else "quick"]
    r = random.Random(f"{SEED}:{metafunc.definition.name}")
    points = [(i + r.random()) / n for i in range(n)]
    metafunc.parametrize("kill_at", points, ids=[f"kill{i:02d}@{p:.3f}" for i, p in enumerate(points)])


def pytest_terminal_summary(terminalreporter, config):
    mode = "long" if is_long(config) else "quick"
    terminalreporter.write_line(f"faults: {mode} mode, seed {SEED} (replay: SPARKQ_FAULT_SEED={SEED})")
    for group, counts in sorted(config.stash.get(_PHASES, {}).items()):
        shown = ", ".join(f"{phase} {n}" for phase, n in sorted(counts.items()))
        terminalreporter.write_line(f"faults: {group}: {shown}")


@pytest.fixture
def phases(request):
    """Record where each kill landed (`phases(test_group, phase)`); the counts are printed at the end."""
    store = request.config.stash.setdefault(_PHASES, {})

    def record(group: str, phase: str) -> None:
        counts = store.setdefault(group, {})
        counts[phase] = counts.get(phase, 0) + 1

    return record


# --- a client that writes through the HTTP API as fast as it can -------------------------------


class ApiWriter(threading.Thread):
    """PUT /api/config/<namespace>/kNNNNNNN with value N = 1, 2, 3, ... one request at a time.

    `acked` holds every N the server answered 200 to (so it is committed); `failures` every
    request that did not get a 200, with why. With `stop_on_error` the writer ends at the first
    failure (the server was killed); otherwise it reconnects and goes on.
    """

    def __init__(self, port: int, namespace: str = "load", *, stop_on_error: bool = False):
        super().__init__(daemon=True)
        self.port = port
        self.namespace = namespace
        self.stop_on_error = stop_on_error
        self.acked: list[int] = []
        self.failures: list[tuple[int, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while not self._halt.is_set():
            n += 1
            body = json.dumps({"value": n})
            try:
                conn.request("PUT", f"/api/config/{self.namespace}/k{n:07d}", body,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200:
                    self.acked.append(n)
                    continue
                self.failures.append((n, f"HTTP {resp.status}: {data[:200]!r}"))
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append((n, repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            if self.stop_on_error:
                break
        conn.close()

    def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        """Wait until `n` writes are acknowledged; fail early on the first failed request."""

        def enough() -> bool:
            assert not self.failures, self.failures[:3]
            return len(self.acked) >= n

        wait_until(enough, timeout=timeout, interval=0.01, what=f"{n} acknowledged API writes")

    def stop(self) -> None:
        self._halt.set()
        self.join(60)
        assert not self.is_alive(), "the API writer did not stop"


@pytest.fixture
def api_writer():
    writers: list[ApiWriter] = []

    def make(port: int, namespace: str = "load", *, stop_on_error: bool = False) -> ApiWriter:
        w = ApiWriter(port, namespace, stop_on_error=stop_on_error)
        writers.append(w)
        w.start()
        return w

    yield make
    for w in writers:
        w._halt.set()
        w.join(60)


def counter_range(db: Path, namespace: str = "load") -> tuple[int, int, int]:
    """(count, min, max) of the writer's counter in a DB file, read without changing it."""
    conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro&immutable=1", uri=True)
    try:
        count, low, high = conn.execute(
            "SELECT count(*), coalesce(min(CAST(value AS INTEGER)), 0), coalesce(max(CAST(value AS INTEGER)), 0) "
            "FROM config WHERE namespace = ?", (namespace,)).fetchone()
    finally:
        conn.close()
    return count, low, high


@pytest.fixture
def counter():
    """`counter(db, namespace)` -> (count, min, max) of an ApiWriter's rows in a (bundle's) DB."""
    return counter_range


# --- kill -9 at a moment measured from an anchor ----------------------------------------------
#
# Python's start-up alone varies by tens of milliseconds between runs, as much as a whole backup
# of 20 MB takes. So moments are measured from an anchor the test can see (the backup's temp dir
# appearing, the restore taking the supervisor lock) rather than from the spawn.


def _wait_anchor(proc: subprocess.Popen, anchor, timeout: float = 60.0) -> float | None:
    """Poll (1 ms) until `anchor(proc)` is true; its time, or None when the process exited first."""
    deadline = time.monotonic() + timeout
    while not anchor(proc):
        if proc.poll() is not None:
            return None
        assert time.monotonic() < deadline, "the anchor was never reached"
        time.sleep(0.001)
    return time.monotonic()


def measure_after_anchor(argv: list[str], cwd: Path, env: dict, anchor) -> float:
    """Seconds from the anchor to the exit of one complete run of `argv` (which must succeed)."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            at = _wait_anchor(proc, anchor)
            proc.wait(120)
            ended = time.monotonic()
        finally:
            proc.kill()
            proc.wait()
        err.seek(0)
        said = err.read().decode(errors="replace")
    assert proc.returncode == 0 and at is not None, f"{' '.join(argv[1:])} failed: {said}"
    return ended - at


class Durations:
    """How long a command runs after its anchor: calibrated before the kill tests, then updated
    from every complete run they make, so the kill moments follow the machine's current pace
    (other tests or programs on the same cores slow it down or speed it up)."""

    def __init__(self, samples: list[float], share: float):
        self.samples = list(samples)
        self.share = share  # the part of the run worth interrupting (the rest is interpreter exit)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    @property
    def current(self) -> float:
        recent = sorted(self.samples[-5:])
        return self.share * recent[len(recent) // 2]


def kill_after_anchor(proc: subprocess.Popen, anchor, delay: float) -> bool:
    """SIGKILL `proc` `delay` seconds after its anchor; False when it exited before the anchor."""
    at = _wait_anchor(proc, anchor)
    if at is not None:
        time.sleep(max(0.0, at + delay - time.monotonic()))  # the kill timing itself
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return at is not None


def holds_flock(path: Path):
    """Anchor: the process holds an flock on `path` (read from /proc/locks)."""

    def anchor(proc: subprocess.Popen) -> bool:
        try:
            with open("/proc/locks") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return True  # no way to see locks here: anchor on the spawn
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            return False  # not even created yet
        for line in lines:
            parts = line.split()
            if "->" not in parts and "FLOCK" in parts and str(proc.pid) in parts \
                    and any(p.endswith(f":{ino}") for p in parts):
                return True
        return False

    return anchor


def new_temp_dir_in(folder: Path):
    """Anchor: a `.tmp-*` entry appeared in `folder` (a bundle is being written)."""

    def anchor(_proc: subprocess.Popen) -> bool:
        try:
            return any(name.startswith(".tmp-") for name in os.listdir(folder))
        except OSError:
            return False

    return anchor


@pytest.fixture(scope="session")
def killing():
    """The kill -9 tools above, for tests and their module fixtures."""
    return SimpleNamespace(measure=measure_after_anchor, kill=kill_after_anchor, holds_flock=holds_flock,
                           new_temp_dir_in=new_temp_dir_in, Durations=Durations)
