"""Where the running server's database file is, when it is no longer at `database.path`.

A database file deleted, replaced or moved while the server has it open lives on in that open
file: no first run, no "no database yet", and a backup of whatever now sits at the path would be
of the wrong rows. The kernel knows where the file went: /proc/PID/fd of the server holds it, by
inode, under its current path, or as "PATH (deleted)" once it has no name. `trouble` turns that
into the one line `status`, `backup`, `setup` and the start of a running server say, and
`stop_timeout` gives the bundled server the time to write a deleted file back as it stops
(sparkq/rescue.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import stat
from pathlib import Path

from .config import Settings

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIDECARS = ("-wal", "-shm", "-journal")
RESCUE_STOP_S = 600.0


def locate(settings: Settings) -> tuple[str, str | None] | None:
    """Where the server's database file is:

    - ("no server", None): no server of ours runs (a pidfile naming a reused PID included);
    - ("here", None): it has the file at database.path open;
    - ("deleted", None): its file has no name left (the path may hold a new file);
    - ("moved", PATH): the bundled server's database is open under another path;
    - None: its open files cannot be read (another user's process, no /proc), or a server of the
      user's own holds nothing that tells.
    """
    from .pidfile import our_pid

    paths = settings.paths
    pid = our_pid(paths)
    if pid is None:
        return "no server", None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    try:
        st = os.stat(paths.db)
        here = (st.st_dev, st.st_ino)
    except OSError:
        here = None
    deleted = os.path.realpath(paths.db) + " (deleted)"
    found_deleted, moved = False, None
    for fd in fds:
        entry = f"/proc/{pid}/fd/{fd}"
        with contextlib.suppress(OSError):  # closed meanwhile
            st, link = os.stat(entry), os.readlink(entry)
            if not stat.S_ISREG(st.st_mode):
                continue
            if (st.st_dev, st.st_ino) == here:
                return "here", None
            if link == deleted:
                found_deleted = True
            elif settings.command is None and moved is None and _is_database(entry, link):
                moved = link  # the bundled server holds one database: this is it
    if found_deleted:
        return "deleted", None
    return ("moved", moved) if moved else None


def _is_database(entry: str, link: str) -> bool:
    if not link.startswith("/") or link.endswith((" (deleted)", *_SIDECARS)):
        return False
    try:
        with open(entry, "rb") as fh:  # through /proc: the server's very file
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def trouble(settings: Settings) -> str | None:
    """What to say when a running server's database is not the file at database.path; None when
    it is, or when no server of ours runs."""
    db = settings.paths.db
    found = locate(settings)
    where = found[0] if found else None
    if where in ("here", "no server") or (where is None and db.exists()):
        return None
    own = settings.command is None  # the bundled server writes a deleted file back (rescue.py)
    if where == "moved":
        return (f"the server's database is now {found[1]}, not {db} (moved, or a symlink changed, while it "
                f"runs); its rows are there: put it back at {db} (or re-create the symlink)")
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
        return (f"{what} (deleted while in use); ./sparkq.sh restart brings it back: the server writes its "
                "data back as it stops")
    return (f"{what} (deleted or moved while in use: SparkQ cannot see which); if you moved it, put it back; "
            "if you deleted it, ./sparkq.sh restart brings it back (the server writes its data back as it stops)")


def rescued_copies(paths) -> list[Path]:
    """What the bundled server left beside the database when it wrote its rows back (rescue.py):
    `NAME.rescued-TIME.db` copies (a new file had taken the name) and hidden
    `.NAME.db.rescuing-TIME-PID` ones (cut short, or not placed), oldest first."""
    db = paths.db
    stem, suffix = glob.escape(db.stem), glob.escape(db.suffix)
    found = [*db.parent.glob(f"{stem}.rescued-*{suffix}"), *db.parent.glob(f".{glob.escape(db.name)}.rescuing-*")]
    return sorted(found, key=lambda p: (re.search(r"\.rescu(?:ed|ing)-(.*)", p.name) or [p.name, p.name])[1])


def stop_timeout(settings: Settings) -> float:
    """How long a stop waits after SIGTERM before SIGKILL: server.stop_timeout, but up to 10
    minutes while the bundled server's database file has no name, which it then copies back
    as it stops: a SIGKILL half-way would lose every row."""
    if settings.command is None:
        found = locate(settings)
        unseen = found is None or found[0] == "no server"  # (an old pidfile adopted by `identify`)
        if (found and found[0] == "deleted") or (unseen and not settings.paths.db.exists()):
            return max(settings.stop_timeout, RESCUE_STOP_S)
    return settings.stop_timeout
