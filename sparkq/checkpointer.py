"""Background WAL checkpoints, so that no request pays for one.

With SQLite's default `wal_autocheckpoint`, the commit that pushes the WAL past 1000 pages copies
the whole WAL back into the database file before it returns. After a backup's snapshot has held
the WAL open for a few seconds that is everything written meanwhile: an API call that hangs for
half a second at 1 GiB. The server turns autocheckpoint off on its request connection and this
thread does the work on a connection of its own:

- PASSIVE whenever another connection has committed since the last look (`PRAGMA data_version`).
  It copies frames while requests keep writing and never waits for a lock.
- When the WAL has grown past `cap_frames` and PASSIVE has caught up with it, a writer that keeps
  committing may still never find the WAL fully copied at the start of its next transaction, which
  is the only moment SQLite starts the WAL over from its beginning. So the thread holds the
  request lock for one more PASSIVE pass over the few frames written since; the next request then
  starts the WAL over. Requests wait at most for that short pass - when the disk is quick. That
  pass fsyncs the WAL and the database, and the request that starts the WAL over fsyncs its new
  header: while a backup writes its copy, each fsync took 60-180 ms and requests waited for them.
  So the locked pass runs only right after an unlocked pass that took at most `quick_s` (a disk
  that syncs quickly now), or once the WAL holds `hard_cap_frames`; meanwhile the WAL grows, and
  appending to it costs a request nothing. The gate times the whole pass, copying included: on a
  disk where every pass takes longer, a busy server's WAL grows to the hard cap (about 64 MB)
  before it starts over, and the file keeps that size until the server is idle (TRUNCATE).
- TRUNCATE once writes have stopped for `idle_after` seconds, under the request lock, so an idle
  server leaves an empty WAL file behind.

A backup's snapshot is a read transaction: while it lasts, frames written after it began cannot be
copied, and the WAL grows by whatever the clients write. The thread just keeps trying; the frames
are folded in within one tick of the snapshot's end. The checkpoint at shutdown stays where it
was (`storage.checkpoint_and_close`), after this thread has stopped.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import storage


@dataclass
class CheckpointStats:
    """What the thread has done; tests and the benchmark read it to see the work happen here."""

    passive: int = 0      # PASSIVE checkpoints run
    last: tuple[int, int] = (0, 0)  # (frames in the WAL, frames copied) after the latest one
    locked: int = 0       # passes run under the request lock to let the WAL start over
    truncated: int = 0    # TRUNCATE checkpoints that succeeded
    errors: list[str] = field(default_factory=list)


class Checkpointer:
    """A daemon thread folding the WAL of `path` back into the database file."""

    def __init__(self, path: Path, request_lock: Callable[[], AbstractContextManager], *,
                 interval: float = 0.05, idle_after: float = 1.0, cap_frames: int = 1000,
                 quick_s: float = 0.015, hard_cap_frames: int = 16000) -> None:
        self.path = path
        self.request_lock = request_lock  # held by every request while it uses its connection
        self.interval = interval
        self.idle_after = idle_after
        self.cap_frames = cap_frames
        self.quick_s = quick_s
        self.hard_cap_frames = hard_cap_frames
        self.stats = CheckpointStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._version = -1
        self._last_change = time.monotonic()
        self._dirty = False  # the WAL file may hold frames (or bytes) a TRUNCATE would remove

    def start(self) -> None:
        if self._thread is not None:
            return
        # busy_timeout 0: a checkpoint that cannot get a lock gives up at once and retries next tick
        self._conn = storage.connect(self.path, timeout=0.0)
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._version = self._data_version()
        self._thread = threading.Thread(target=self._run, name="sparkq-checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close its connection; the caller then checkpoints and closes its own."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except sqlite3.Error as exc:  # a locked or busy file: try again next tick
                if len(self.stats.errors) < 20:
                    self.stats.errors.append(str(exc))

    def tick(self) -> None:
        """One look at the WAL: copy what was committed, let it start over, or truncate when idle."""
        version = self._data_version()
        now = time.monotonic()
        if version != self._version:
            self._version, self._last_change, self._dirty = version, now, True
            busy, log, copied = self._checkpoint("PASSIVE")
            quick = time.monotonic() - now <= self.quick_s
            if not busy and log >= self.cap_frames and copied == log and (quick or log >= self.hard_cap_frames):
                with self.request_lock():
                    self._checkpoint("PASSIVE")
                    self.stats.locked += 1
        elif self._dirty and now - self._last_change >= self.idle_after:
            with self.request_lock():
                busy, _log, _copied = self._checkpoint("TRUNCATE")
            if not busy:
                self._dirty = False
                self.stats.truncated += 1
            self._version = self._data_version()

    def _checkpoint(self, mode: str) -> tuple[int, int, int]:
        busy, log, copied = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        if mode == "PASSIVE":
            self.stats.passive += 1
            self.stats.last = (log, copied)
        return busy, log, copied

    def _data_version(self) -> int:
        return self._conn.execute("PRAGMA data_version").fetchone()[0]
