"""Writing back a database file that was deleted while the server had it open.

Deleting `sparkq.db` under a running server (an `rm`, a cleanup script, a mistaken restore by
hand) does not stop it: SQLite keeps reading and writing the unlinked file through its open
descriptor, and every row lives there alone. The last close would free it for good. So `close`
checks first whether the file it opened has no name left; if so it copies the data out through
the open connection (SQLite's backup API, which sees the WAL too) and, once that connection is
closed, puts the copy back at the database's path, or beside it when something new took it.

The copy is written under a hidden name outside the temp-name scheme (`.NAME.rescuing-TIME-PID`): no
clean-up of dead writers' temps may ever take it for garbage, since it can be the only copy. A
file that was moved (renamed or linked elsewhere) still has a name, so the data is safe on disk:
it is left where the user put it. Standard library only, like storage.py.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("sparkq")


def identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _opened(ident: tuple[int, int]) -> os.stat_result | None:
    """The file `ident` as one of our own open descriptors sees it (the SQLite connection holds
    one): its link count and mode; None when /proc cannot tell."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            return st
    return None


def copy_if_deleted(conn: sqlite3.Connection, path: Path, ident: tuple[int, int] | None) -> Path | None:
    """When the file the server opened at `path` (resolved) has no name left, copy its data to a
    hidden file beside `path` and return it; else None. Never raises: the close must go on."""
    if ident is None or identity(path) == ident:
        return None  # still in place (the common case: one stat)
    opened = _opened(ident)
    if opened is None and path.exists():
        return None  # replaced, and no way to tell whether ours was deleted: leave everything
    if opened is not None and opened.st_nlink:
        log.warning("the database file %s was moved while the server ran; the data stays where it was moved", path)
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    copy = path.with_name(f".{path.name}.rescuing-{stamp}-{os.getpid()}")
    log.warning("the database file %s was deleted while the server ran; copying its data back", path)
    try:
        os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        target = sqlite3.connect(copy, isolation_level=None)
        try:
            # One private new file, fsynced once at the end: no journal, no syncs on the way
            # (a stop has server.stop_timeout before SIGKILL).
            target.execute("PRAGMA journal_mode=OFF")
            target.execute("PRAGMA synchronous=OFF")
            conn.backup(target)
        finally:
            target.close()
        if opened is not None:
            os.chmod(copy, stat.S_IMODE(opened.st_mode))  # the mode the user gave the database
        _fsync(copy)
    except FileExistsError:  # never touched: it may hold an earlier rescue
        log.error("copying the data of the deleted database file %s failed: %s exists", path, copy)
        return None
    except (sqlite3.Error, OSError) as exc:
        log.error("copying the data of the deleted database file %s failed: %s", path, exc)
        _remove(copy)
        return None
    return copy


def put_back(copy: Path, path: Path) -> None:
    """Give the copy the database's name, or a name beside it when a new file took that one
    meanwhile (never replaced: it may be what the user put there)."""
    if not path.exists():
        for stale in ("-wal", "-shm"):  # the deleted file's: never to be replayed into the copy
            _remove(path.with_name(path.name + stale))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    beside = [path.with_name(f"{path.stem}.rescued-{stamp}{n}{path.suffix}") for n in ("", "_1", "_2", "_3")]
    for where in (path, *beside):
        try:
            _place(copy, where)
        except FileExistsError:
            continue
        except OSError as exc:
            log.error("the data of the deleted database file %s is in %s: %s", path, copy, exc)
            return
        _fsync(where.parent)
        log.warning("the database file %s was deleted while the server ran; its data was written back to %s",
                    path, where)
        return
    log.error("the data of the deleted database file %s is in %s", path, copy)


def _place(copy: Path, where: Path) -> None:
    """Move `copy` to `where`, never over an existing file (FileExistsError)."""
    try:
        os.link(copy, where)  # unlike a rename, fails when the name is taken
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: a rename, checked just before
        if os.path.lexists(where):
            raise FileExistsError(where) from None
        os.rename(copy, where)
        return
    _remove(copy)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
