"""The snapshot engine: one consistent, stand-alone copy of a live SQLite database.

The copy is one step of SQLite's online backup API (`pages=-1`): a single read transaction, so
the copy is one state of the database even while the server commits (a stepwise copy restarts
on every commit from another connection). It is written without a journal or syncs into a
private new file, synced to the disk as it grows (`_trickle_flush`), then switched to rollback
journal mode so it never needs a -wal beside it, and fsynced whole (`sync`, which the bundle
writer runs beside the integrity check and hashing).

A live server pays for the snapshot's read transaction: its WAL cannot be checkpointed past it.
So the snapshot runs at full priority, and only the helper threads may yield the CPU; the
measurements behind that are in docs/PERFORMANCE.md (finding 4). Beside a server the backup also
keeps to one CPU (`one_cpu`), which costs it no time and leaves the server the other.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import BackupFailed
from ..fmt import human_size
from ..fsutil import fsync_file
from .failures import locked, os_failure, sqlite_failure
from .layout import WAL, open_readonly, sidecar

_SQLITE_MAGIC = b"SQLite format 3\x00"


def take(src: Path, dst: Path, *, timeout: float, progress: bool = False) -> None:
    """Snapshot the live DB `src` into the new file `dst` (mode 0600), not yet fsynced.

    Waits at most `timeout` seconds for a lock; `progress` shows `snapshot NN%` on stderr.
    """
    _check_header(src)
    cancel = threading.Event()
    with _trickle_flush(dst):
        if not progress:
            _copy_db(src, dst, timeout, cancel)
        else:
            _with_progress(lambda: _copy_db(src, dst, timeout, cancel), src, dst, cancel)


def sync(dst: Path) -> None:
    """fsync a snapshot `take` wrote."""
    try:
        fsync_file(dst)
    except OSError as exc:
        raise os_failure(exc, f"writing the snapshot {dst}") from None


def link_quiescent(live: Path, target: Path) -> bool:
    """Hard-link a quiescent live DB to `target` instead of snapshotting it; False means: take a
    snapshot instead. Only for a caller that holds the supervisor lock exclusively, the server down."""
    # Link the file itself: link(2) does not follow a symlinked database.path, and a bundle
    # holding the symlink would fail every check (and hold no data).
    live = Path(os.path.realpath(live))
    wal = sidecar(live, WAL)
    if wal.exists() and wal.stat().st_size > 0:
        return False
    try:
        os.link(live, target)
    except OSError:
        return False  # another filesystem, or links not allowed: fall back to a snapshot
    os.chmod(target, 0o600)  # same inode as the live DB, which restore is about to replace
    return True


def integrity(db: Path) -> str:
    """PRAGMA integrity_check of a snapshot: "ok", or what it found (never raises for SQLite)."""
    try:
        conn = open_readonly(db)
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"integrity_check could not run: {exc}"
    return "ok" if rows == ["ok"] else "; ".join(rows)


# --- helper threads ----------------------------------------------------------------------------


def into(box: dict, key: str, fn, *args, polite: bool) -> None:
    """Thread body: `box[key]` = fn(*args), or the exception it raised; at a lower priority when
    `polite` (a server is running beside us)."""
    if polite:
        yield_cpu()
    try:
        box[key] = fn(*args)
    except BaseException as exc:  # handed back to the main thread
        box[key] = exc


def yield_cpu() -> None:
    """Run the calling thread at a lower priority: on two cores, hashing and the integrity check
    would otherwise take the CPU from the server's writers and stretch their commit latency.
    Linux applies it to this thread only; elsewhere it is skipped. The snapshot never yields,
    whether it runs on the caller's thread or (with `progress`) in a thread of its own: a slower
    snapshot holds its read transaction longer, which costs the server more.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


@contextlib.contextmanager
def one_cpu(enabled: bool):
    """While the block runs, keep this thread and the threads it starts on one CPU, when `enabled`
    (a server is running beside us) and more than one CPU is ours; the caller's CPUs come back
    after it. Linux only; elsewhere, and when the kernel refuses, nothing changes.

    Why: on two cores the scheduler moves a busy backup from one CPU to the other, so the
    server's threads can wake up on the CPU it holds and wait there. Kept on one CPU, it leaves
    the other to the server and its clients: the p99 of requests during a backup fell by a
    quarter to a third, and the backup took as long. A lower priority cannot do this, as the
    server runs in a session of its own (docs/PERFORMANCE.md, "One CPU for a backup beside a
    server").
    """
    try:
        ours = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        ours = set()
    pinned = enabled and len(ours) > 1 and _set_cpus({max(ours)})  # which one matters less than that it stays one
    try:
        yield
    finally:
        if pinned:
            _set_cpus(ours)


def _set_cpus(cpus: set[int]) -> bool:
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        return False
    return True


# --- the copy ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _trickle_flush(dst: Path, step: int = 8 << 20):
    """Write the snapshot back to disk while it grows, from a helper thread: an fdatasync each time
    `step` more bytes have come, and once more when the copy is done, before the caller goes on.

    Any fsync the server makes meanwhile (a checkpoint, or the commit that starts the WAL over)
    waits for everything written before it to be on the disk, ours included; on a virtual disk
    that is also whatever the host still holds in its cache. So what we leave unsynced is kept
    small at every moment. One fsync of hundreds of MB at the end held a request for a second;
    sending the copy to the disk without syncing it (sync_file_range) did the same, since the
    host's cache was still flushed by the server's fsync (docs/PERFORMANCE.md). The snapshot's
    read transaction has ended by the last fdatasync, so it never keeps the server's WAL pinned.
    """
    stop = threading.Event()
    drain = False  # set once the copy is complete: sync what is left before returning

    def run() -> None:
        yield_cpu()
        fd, synced = None, 0
        try:
            while fd is None and not stop.wait(0.02):
                with contextlib.suppress(OSError):
                    fd = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
            while fd is not None:
                done = stop.wait(0.02)
                if done and not drain:
                    return
                size = os.fstat(fd).st_size
                if size - synced >= step or (done and size > synced):
                    os.fdatasync(fd)
                    synced = size
                if done:
                    return
        except OSError:
            pass  # only an optimization: the final fsync reports real errors
        finally:
            if fd is not None:
                os.close(fd)

    flusher = threading.Thread(target=run, daemon=True)
    flusher.start()
    try:
        yield
        drain = True
    finally:
        stop.set()
        flusher.join()


class _Cancelled(Exception):
    pass


class _LockTimeout(Exception):
    pass


class NotADatabase(BackupFailed):
    """The live database file does not start like an SQLite database."""


def _check_header(src: Path) -> None:
    try:
        with open(src, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except IsADirectoryError:
        raise BackupFailed(f"backup failed: {src} is a directory, not a database; check database.path in sparkq.yml") from None
    except OSError as exc:
        raise os_failure(exc, f"reading the database {src}") from None
    if head and head != _SQLITE_MAGIC:
        raise NotADatabase(
            f"backup failed: {src} is not a SQLite database; check database.path in sparkq.yml "
            "or restore a backup (./sparkq.sh backup-list)"
        )


def _copy_db(src: Path, dst: Path, timeout: float, cancel: threading.Event) -> None:
    try:
        # Create it ourselves: SQLite would use 0644 minus the umask.
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.chmod(dst, 0o600)
    except OSError as exc:
        raise os_failure(exc, f"creating the snapshot {dst}") from None
    try:
        source = sqlite3.connect(str(src), timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise sqlite_failure(exc, src, dst, timeout) from None
    try:
        target = sqlite3.connect(str(dst), isolation_level=None, check_same_thread=False)
        try:
            # No journal and no syncs while copying into a private new file: we fsync it once after.
            target.execute("PRAGMA journal_mode=OFF")
            target.execute("PRAGMA synchronous=OFF")
            deadline = time.monotonic() + timeout

            def step(status: int, _remaining: int, _total: int) -> None:
                if cancel.is_set():
                    raise _Cancelled
                # The busy handler already waited `timeout`; the backup loop would retry forever.
                if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() >= deadline:
                    raise _LockTimeout

            source.backup(target, pages=-1, progress=step, sleep=0.05)
            # The copied header keeps the source's WAL flag; a rollback-mode file stands alone.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
        _fix_change_counter(dst)
    except _LockTimeout:
        raise locked(src, timeout) from None
    except sqlite3.Error as exc:
        raise sqlite_failure(exc, src, dst, timeout) from None
    finally:
        source.close()


# The header's file change counter and the "version valid for" number beside it (offsets 24 and
# 92) say how often the file was written, not what it holds: a database restored and served again
# unchanged snapshots with another count, so "unchanged since the newest bundle" (history.py)
# missed it and every restore cost two bundles of history. Set both to 1 in the private, closed
# copy: equal, they keep the header's page count valid, and equal content gives equal bytes.
_COUNTERS = (24, 92)


def _fix_change_counter(dst: Path) -> None:
    try:
        with open(dst, "r+b") as fh:
            head = fh.read(100)
            if len(head) < 100 or head[24:28] != head[92:96]:
                return  # an empty database, or a header SQLite itself would not trust: as it is
            for offset in _COUNTERS:
                fh.seek(offset)
                fh.write((1).to_bytes(4, "big"))
    except OSError as exc:
        raise os_failure(exc, f"writing the snapshot {dst}") from None


def _with_progress(work, src: Path, dst: Path, cancel: threading.Event) -> None:
    """Run `work` in a thread; show `snapshot NN%` on stderr from the size of the growing copy."""
    total = 0
    for p in (src, sidecar(src, WAL)):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    box: dict[str, Any] = {}
    worker = threading.Thread(target=into, args=(box, "done", work), kwargs={"polite": False}, daemon=True)
    worker.start()

    def show(done: int) -> None:
        pct = min(100, done * 100 // total) if total else 100
        sys.stderr.write(f"\rbackup: snapshot {pct:3d}% ({human_size(done)} of {human_size(total)})\033[K")
        sys.stderr.flush()

    try:
        while worker.is_alive():
            worker.join(0.2)
            with contextlib.suppress(OSError):
                show(dst.stat().st_size)
    except BaseException:
        cancel.set()
        worker.join()
        raise
    finally:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    if isinstance(box.get("done"), BaseException):
        raise box["done"]
