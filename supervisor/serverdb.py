"""Where the running server's database file is, when it is no longer at `database.path`.

A database file deleted, replaced or moved while the server has it open lives on in that open
file: no first run, no "no database yet", and a backup of whatever now sits at the path would be
of the wrong rows. The kernel knows where the file went: /proc/PID/fd of the server links to
its current path, or to "PATH (deleted)" once it has no name. `trouble` turns that into the one
line `status`, `backup`, `setup` and the start of a running server say, and `stop_timeout` gives
the bundled server the time to write a deleted file back as it stops (sparkq/rescue.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

from .config import Settings

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIDECARS = ("-wal", "-shm", "-journal")
RESCUE_STOP_S = 600.0


def locate(paths) -> tuple[str, str | None] | None:
    """("here", None), ("deleted", None) when the server's file has no name left (the path may
    hold a new file), ("moved", PATH) when it has another; None when no server runs or its open
    files cannot be read (another user's process, no /proc)."""
    from .pidfile import recorded_pid

    pid = recorded_pid(paths)
    try:
        fds = os.listdir(f"/proc/{pid}/fd") if pid else []
    except OSError:
        return None
    links = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    real = os.path.realpath(paths.db)
    if real in links:
        return "here", None
    if f"{real} (deleted)" in links:
        return "deleted", None
    moved = [link for link in sorted(links) if _is_database(link)]
    return ("moved", moved[0]) if moved else None


def _is_database(link: str) -> bool:
    """A path the server holds open that is an SQLite database (not a log, socket or sidecar)."""
    if not link.startswith("/") or link.endswith(" (deleted)") or link.endswith(_SIDECARS):
        return False
    try:
        fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return os.read(fd, len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def trouble(settings: Settings) -> str | None:
    """What to say when a running server's database is not the file at database.path; None when
    it is, or when no server runs and nothing is missing."""
    db = settings.paths.db
    found = locate(settings.paths)
    where = found[0] if found else None
    if where == "here" or (where is None and db.exists()):
        return None
    own = settings.command is None  # the bundled server writes a deleted file back (rescue.py)
    if where == "moved":
        return (f"the server's database is now {found[1]}, not {db} (moved, or a symlink changed, while it "
                f"runs); its rows are there: put it back at {db}, then ./sparkq.sh restart")
    if where == "deleted" and db.exists():
        then = (f"as it stops they go to {db.stem}.rescued-<time>{db.suffix} beside it, never over the new file"
                if own else "save them through that server before it stops")
        return (f"the database {db} was replaced while the server runs; the server's rows are in the file "
                f"it still has open: {then}; then keep one of the two at {db}")
    what = f"the database {db} is missing while the server runs"
    if not own:
        return (f"{what}; SparkQ cannot write it back for a server.command of your own: "
                "save the data through that server before it stops")
    if where == "deleted":
        return f"{what} (deleted while in use); ./sparkq.sh restart brings it back: the server writes its data back as it stops"
    return (f"{what} (deleted or moved while in use: SparkQ cannot see which); if you moved it, put it back; "
            "if you deleted it, ./sparkq.sh restart brings it back (the server writes its data back as it stops)")


def rescued_copies(paths) -> list[Path]:
    """The copies the bundled server wrote beside the database when a new file had taken its
    name (sparkq/rescue.py names them NAME.rescued-TIME.db), oldest first."""
    db = paths.db
    return sorted(db.parent.glob(f"{glob.escape(db.stem)}.rescued-*{glob.escape(db.suffix)}"))


def stop_timeout(settings: Settings) -> float:
    """How long a stop waits after SIGTERM before SIGKILL: server.stop_timeout, but up to 10
    minutes while the bundled server's database file has no name, which it then copies back
    as it stops: a SIGKILL half-way would lose every row."""
    if settings.command is None:
        found = locate(settings.paths)
        if (found and found[0] == "deleted") or (found is None and not settings.paths.db.exists()):
            return max(settings.stop_timeout, RESCUE_STOP_S)
    return settings.stop_timeout
