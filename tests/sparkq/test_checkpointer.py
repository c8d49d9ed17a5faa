"""The WAL is folded back by the server's checkpointer thread, never by a request (issue 17).

What a checkpoint did is read from SQLite's own shared memory (the `-shm` file): `mxFrame` is the
number of frames in the WAL, `nBackfill` how many of them have been copied into the database file.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from pathlib import Path

import httpx

from helpers import Project, wait_until
from sparkq import storage
from sparkq.checkpointer import Checkpointer
from sparkq.database import Database

PAGE = 4096  # SQLite's default page size, which SparkQ keeps
VALUE = "v" * 20_000  # a config value of about five pages: the WAL grows fast


class WalIndex:
    """Reads `<db>-shm` through one descriptor kept open until every connection of ours is closed.

    SQLite's WAL locks are fcntl locks on that file, and closing any descriptor of a file drops
    all of the process's fcntl locks on it: opening and closing it per read would silently end
    the read transactions of this process's own connections.
    """

    def __init__(self, db: Path) -> None:
        self.fd = os.open(f"{db}-shm", os.O_RDONLY)

    def frames(self) -> tuple[int, int]:
        """(frames in the WAL, frames copied back into the database file)."""
        raw = os.pread(self.fd, 100, 0)
        max_frame = struct.unpack_from("=I", raw, 16)[0]  # WalIndexHdr.mxFrame
        backfilled = struct.unpack_from("=I", raw, 96)[0]  # WalCkptInfo.nBackfill, after two headers
        return max_frame, backfilled

    def close(self) -> None:
        os.close(self.fd)


def wal_bytes(db: Path) -> int:
    try:
        return Path(f"{db}-wal").stat().st_size
    except FileNotFoundError:
        return 0


def put(conn: sqlite3.Connection, i: int) -> None:
    """The statements of PUT /api/config/bench/kI, as the request path runs them."""
    conn.execute(
        "INSERT INTO config (namespace, key, value, updated_at, updated_by) VALUES ('bench', ?, ?, ?, 'test') "
        "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
        (f"k{i % 50}", storage.encode_config_value(VALUE + str(i)), storage.utc_now()),
    )


def test_request_commits_never_checkpoint_and_the_thread_folds_their_frames(tmp_path: Path):
    path = tmp_path / "q.db"
    storage.setup_database(path)
    db = Database(path)
    db.checkpointer.interval = 3600  # the thread waits; only our explicit tick() may checkpoint
    db.open()
    shm = WalIndex(path)
    try:
        with db.read() as conn:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(600):  # far past the 1000 frames at which SQLite's own autocheckpoint runs
            with db.write() as conn:
                put(conn, i)
        frames, copied = shm.frames()
        assert frames > 1500 and copied == 0, (frames, copied)

        db.checkpointer.tick()
        frames_after, copied = shm.frames()
        assert copied == frames_after >= frames
        assert db.checkpointer.stats.passive >= 1
        with db.write() as conn:  # the next commit starts the WAL over instead of growing it
            put(conn, 0)
        assert shm.frames()[0] < 50
    finally:
        db.close()
        shm.close()
    assert wal_bytes(path) == 0 and not Path(f"{path}-wal").exists()


def test_the_locked_pass_waits_for_a_quick_disk_or_the_hard_cap(tmp_path: Path):
    """The pass under the request lock fsyncs the WAL and the database, and the request after it
    starts the WAL over with an fsync of its own. On a disk busy with a backup's writes each took
    60-180 ms, and requests waited that long. So it runs only right after a quick unlocked pass,
    or once the WAL reaches the hard cap; until then the WAL grows, which costs requests nothing."""
    path = tmp_path / "q.db"
    storage.setup_database(path)
    db = Database(path)
    ck = db.checkpointer
    ck.interval = 3600  # only our explicit tick() checkpoints
    db.open()

    def writes(start: int) -> None:
        for i in range(start, start + 600):  # about 1500 frames: past cap_frames (1000)
            with db.write() as conn:
                put(conn, i)

    try:
        ck.quick_s = 0.0  # every pass counts as slow, as on a busy disk
        writes(0)
        ck.tick()
        log, copied = ck.stats.last
        assert copied == log >= 1500 and ck.stats.locked == 0, ck.stats
        ck.hard_cap_frames = 1000  # ... until the WAL is past the hard cap
        writes(600)
        ck.tick()
        assert ck.stats.locked == 1, ck.stats
        ck.quick_s, ck.hard_cap_frames = 60.0, 10**9  # every pass quick: the locked pass runs
        ck.cap_frames = 300
        writes(1200)
        ck.tick()
        assert ck.stats.locked == 2, ck.stats
    finally:
        db.close()


class Writer(threading.Thread):
    """One HTTP client writing config values one request at a time, timing each request."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, timeout=30)
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            t0 = time.perf_counter()
            r = self.client.put(f"/api/config/bench/k{i % 50}", json={"value": VALUE + str(i)})
            self.latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                self.failures.append(r.text)
        self.client.close()


def test_under_a_writer_the_wal_stays_bounded_grows_only_while_pinned_and_shutdown_removes_it(
        project: Project):
    started = project.cli("start")  # the real server, as users run it
    assert started.returncode == 0, started.stderr
    shm = WalIndex(project.db)
    writer = Writer(project.url)
    writer.start()
    try:
        # 1. No snapshot: the WAL starts over however much is written through it, so the file
        # stays bounded. By design (checkpointer.py) it starts over as soon as a quick pass lets it,
        # but on a slow or loaded disk only once it holds the hard cap: only that is certain, with a
        # margin for what requests append between two of the thread's looks. So the writer goes on
        # until the WAL has started over at least once (its frame count fell): a WAL that never did
        # would grow past the bound instead.
        bound = int(Checkpointer(project.db, None).hard_cap_frames * 1.25) * (PAGE + 24)  # + frame headers
        deadline = time.monotonic() + 300
        # (counted from a few requests in: not the idle server's TRUNCATE just before the first one)
        wait_until(lambda: len(writer.latencies) >= 5, timeout=30, what="the writer's first requests")
        peak, restarts, last = 0, 0, shm.frames()[0]
        while len(writer.latencies) * len(VALUE) < 24 * 2**20 or not restarts:
            assert time.monotonic() < deadline, \
                f"only {len(writer.latencies)} requests, {restarts} WAL restarts in 300 s (WAL at {peak} bytes)"
            peak = max(peak, wal_bytes(project.db))
            assert peak < bound, f"WAL reached {peak} bytes with no reader pinning it"
            frames = shm.frames()[0]
            restarts, last = restarts + (frames < last), frames
            time.sleep(0.01)

        # 2. A read transaction (what a backup's snapshot is) pins the WAL: it grows meanwhile ...
        reader = sqlite3.connect(str(project.db), isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM config").fetchone()
        pinned_at = shm.frames()[0]
        wait_until(lambda: shm.frames()[0] > pinned_at + 3000, timeout=60,
                   what="the WAL to grow behind the open read transaction")
        # ... and once it ends, the thread folds it back while the writer keeps going.
        reader.execute("COMMIT")
        reader.close()
        wait_until(lambda: shm.frames()[0] < 3000, timeout=30,
                   what="the WAL to start over after the reader ended")
    finally:
        writer.stop.set()
        writer.join(30)
        shm.close()
    assert not writer.failures, writer.failures[:3]

    # 3. Idle: the WAL file is truncated without any request; shutdown leaves no -wal at all.
    wait_until(lambda: wal_bytes(project.db) == 0, timeout=30, what="the idle WAL to be truncated")
    stopped = project.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(f"{project.db}-wal").exists()
    with sqlite3.connect(str(project.db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM config WHERE namespace = 'bench'").fetchone()[0] == 50
