"""SQLite files at rest: reading a backup's database, folding a WAL in, finding who has a DB open.

Nothing here writes a backup: a bundle's database is read `immutable` (layout.open_readonly) or
through private copies. The live database is only touched by `checkpoint`, which a restore runs
on the stopped server's DB right before replacing it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sparkq import storage

from ..errors import InUse
from ..fsutil import fsync_file
from .layout import DB_NAME, SHM, WAL, WAL_NAME, open_readonly, sidecar

# SQLite's lock bytes in the main database file (see sqlite's os_unix.c): a process with the
# database open holds a lock in this range (WAL mode: a shared lock for as long as it is open).
_LOCK_START = 0x40000000
_LOCK_LEN = 512


@contextmanager
def open_backup_db(db: Path, wal: Path | None = None) -> Iterator:
    """A read-only connection to a backup's database, with its `-wal` folded in when given.

    Without a WAL the file is opened `immutable`, which writes nothing beside it. With one, both
    files are copied to a private temp dir first, because SQLite would otherwise create `-shm`
    files in the backup (and a read-only open cannot replay a WAL without them).
    """
    if wal is None:
        conn = open_readonly(db)
        try:
            yield conn
        finally:
            conn.close()
        return
    with tempfile.TemporaryDirectory(prefix="sparkq-fold-") as tmp:
        copy = Path(tmp) / DB_NAME
        shutil.copyfile(db, copy)
        shutil.copyfile(wal, Path(tmp) / WAL_NAME)
        conn = sqlite3.connect(str(copy))
        try:
            yield conn
        finally:
            conn.close()


def fold_copy(db: Path, wal: Path, work: Path) -> Path:
    """Copy `db` and its `wal` into `work`, checkpoint them into one stand-alone file, fsync it."""
    out = work / DB_NAME
    shutil.copyfile(db, out)
    shutil.copyfile(wal, sidecar(out, WAL))
    conn = sqlite3.connect(out, timeout=0, isolation_level=None)
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            raise sqlite3.OperationalError("could not fold the -wal into the database")
    finally:
        conn.close()
    for suffix in (WAL, SHM):
        sidecar(out, suffix).unlink(missing_ok=True)
    fsync_file(out)
    return out


def db_holder(db: Path) -> int | None:
    """The PID of a process that has `db` open (0 when unknown), or None; changes nothing.

    First ask the kernel whether anyone holds SQLite's lock bytes (this also sees an idle
    connection to a WAL database, which keeps a shared lock while open). Then, as SQLite itself
    would, try `BEGIN EXCLUSIVE` without waiting. That probe is skipped when a non-empty -wal
    lies beside the DB: closing our connection would fold it in and change the file.
    """
    if not db.exists():
        return None
    try:
        fd = os.open(db, os.O_RDONLY)
    except OSError:
        return None
    try:
        req = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, _LOCK_START, _LOCK_LEN, 0)
        kind, _whence, _start, _len, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, req))
        if kind != fcntl.F_UNLCK:
            return pid
    except OSError:
        pass  # no POSIX locks here (some network filesystems): rely on the probe below
    finally:
        os.close(fd)
    wal = sidecar(db, WAL)
    if wal.exists() and wal.stat().st_size > 0:
        return None
    try:
        conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if storage.is_busy(exc):
            return 0
    except sqlite3.DatabaseError:
        pass  # not a database (corrupt): nobody can be using it; the restore may replace it
    finally:
        conn.close()
    return None


def checkpoint(db: Path) -> str | None:
    """Fold the WAL of the (unused) live DB into it and close; returns a problem or None."""
    busy_msg = f"another process is using {db}; close the program that has it open, then retry"
    try:
        conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("PRAGMA busy_timeout=0")
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if storage.is_busy(exc):
            raise InUse(busy_msg) from None
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    if busy:
        raise InUse(busy_msg)
    return None
