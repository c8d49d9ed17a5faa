"""What a failed backup tells the user: one line naming the cause and what to do about it.

Shared by the bundle writer (create.py) and the snapshot engine (snapshot.py): a full disk
becomes BackupDiskFull (a backup short of room may prune and retry), everything else
BackupFailed.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from ..errors import BackupDiskFull, BackupFailed

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
# Lowering keep works because a backup short of space prunes past keep before it writes.
_FREE_SPACE_HINT = ("older backups are untouched; free space there (df -h {where}) or keep fewer backups: "
                    "SPARKQ_BACKUP_KEEP=2 ./sparkq.sh backup prunes past 2 before writing")


def locked(src: Path, timeout: float) -> BackupFailed:
    return BackupFailed(
        f"backup failed: the database {src} stayed locked for over {timeout:g}s (backup.lock_timeout); "
        "stop the server or the process holding the lock (./sparkq.sh stop), then retry"
    )


def sqlite_failure(exc: sqlite3.Error, src: Path, dst: Path, timeout: float) -> BackupFailed:
    """The failure of snapshotting `src` into `dst` (a file inside the bundle's temp dir)."""
    from sparkq.storage import is_busy

    if is_busy(exc):
        return locked(src, timeout)
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return BackupFailed(
            f"backup failed: {src} is not a SQLite database ({exc}); check database.path in sparkq.yml "
            "or restore a backup (./sparkq.sh backup-list)"
        )
    if code == sqlite3.SQLITE_FULL:
        return BackupDiskFull(f"backup failed: writing the snapshot of {src} into {dst.parent.parent} failed "
                              f"({exc}): disk full; {_FREE_SPACE_HINT.format(where=dst.parent.parent)}")
    if code == sqlite3.SQLITE_IOERR:
        return BackupFailed(
            f"backup failed: writing the snapshot of {src} into {dst.parent.parent} failed ({exc}): "
            f"the disk is full or failing; check free space with `df -h {dst.parent.parent}`; "
            "older backups are untouched"
        )
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH):
        return BackupFailed(
            f"backup failed: cannot open {src} or write {dst} ({exc}); "
            f"check permissions with `ls -la {src.parent} {dst.parent.parent}`"
        )
    return BackupFailed(f"backup failed: snapshot of {src} failed ({exc}); run `./sparkq.sh status` and retry")


def os_failure(exc: OSError, doing: str) -> BackupFailed:
    """`doing` ("writing the backup in DIR") failed with `exc`."""
    where = Path(exc.filename) if exc.filename else None
    what = f"{doing} failed ({exc.strerror or exc}"
    what += f": {where})" if where is not None and str(where) not in doing else ")"
    probe = where.parent if where is not None else Path(".")
    if exc.errno in _DISK_FULL:
        return BackupDiskFull(f"backup failed: {what}: disk full; {_FREE_SPACE_HINT.format(where=probe)}")
    if exc.errno in _NO_PERMISSION:
        return BackupFailed(f"backup failed: {what}; check permissions with `ls -la {probe}`")
    if exc.errno == errno.ENOTDIR:
        return BackupFailed(f"backup failed: {what}: part of that path is a file, not a directory; "
                            "check backup.dir in sparkq.yml")
    return BackupFailed(f"backup failed: {what}; check the disk and the permissions there")
