"""The snapshot engine: one consistent, stand-alone copy of a live SQLite database.

The copy is one step of SQLite's online backup API (`pages=-1`): a single read transaction, so
the copy is one state of the database even while the server commits (a stepwise copy restarts
on every commit from another connection). It is written without a journal or syncs into a
private new file, then switched to rollback journal mode so it never needs a -wal beside it,
and fsynced once (`sync`, which the bundle writer runs beside the integrity check and hashing).

A live server pays for the snapshot's read transaction: its WAL cannot be checkpointed past it.
So the snapshot runs at full priority while the helper threads yield the CPU; the measurements
behind that are in docs/PERFORMANCE.md (finding 4).
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
# sync_file_range(2) flags: SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER
_SYNC_RANGE_WAIT_WRITE_WAIT = 1 | 2 | 4


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


# --- the copy ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _trickle_flush(dst: Path, step: int = 4 << 20):
    """Write the snapshot back to disk while it grows, `step` bytes at a time, from a helper thread.

    A large copy would otherwise pile up dirty pages until the kernel throttles every writer on
    the disk, the live server's WAL appends included, and the final fsync would then queue all of
    them at once. Any fsync the server makes meanwhile (a checkpoint, or the commit that starts
    the WAL over) waits behind whatever of ours is in flight: with the copy sent to the disk one
    step at a time, waiting for each, that is a few MB, not the whole snapshot (a request that
    took 100-200 ms after one backup in eight took at most 41 ms in fourteen; docs/PERFORMANCE.md).
    """
    stop = threading.Event()
    write_back = _range_writer()

    def run() -> None:
        yield_cpu()
        fd, flushed = None, 0
        try:
            while not stop.wait(0.02):
                if fd is None:
                    with contextlib.suppress(OSError):
                        fd = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
                    continue
                size = os.fstat(fd).st_size
                while size - flushed >= step and not stop.is_set():
                    write_back(fd, flushed, step)
                    flushed += step
        except OSError:
            pass  # only an optimization: the final fsync reports real errors
        finally:
            if fd is not None:
                os.close(fd)

    flusher = threading.Thread(target=run, daemon=True)
    flusher.start()
    try:
        yield
    finally:
        stop.set()
        flusher.join()


def _range_writer():
    """fn(fd, offset, length): send that range of the file to the disk and wait for it. Linux's
    sync_file_range(2) does that without a journal commit or a cache flush; where it is missing
    an fdatasync of the whole file stands in (every 8 steps, so the calls stay few)."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
        call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    except (ImportError, OSError, AttributeError):
        calls = 0

        def fdatasync_now_and_then(fd: int, _offset: int, _length: int) -> None:
            nonlocal calls
            calls += 1
            if calls % 8 == 0:
                os.fdatasync(fd)

        return fdatasync_now_and_then

    def sync_range(fd: int, offset: int, length: int) -> None:
        if call(fd, offset, length, _SYNC_RANGE_WAIT_WRITE_WAIT) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return sync_range


class _Cancelled(Exception):
    pass


class _LockTimeout(Exception):
    pass


def _check_header(src: Path) -> None:
    try:
        with open(src, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except IsADirectoryError:
        raise BackupFailed(f"backup failed: {src} is a directory, not a database; check database.path in sparkq.yml") from None
    except OSError as exc:
        raise os_failure(exc, f"reading the database {src}") from None
    if head and head != _SQLITE_MAGIC:
        raise BackupFailed(
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
    except _LockTimeout:
        raise locked(src, timeout) from None
    except sqlite3.Error as exc:
        raise sqlite_failure(exc, src, dst, timeout) from None
    finally:
        source.close()


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
