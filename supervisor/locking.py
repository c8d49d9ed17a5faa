"""File locks (flock) that tell who they wait for.

`file_lock` on the project's lock file (`Paths.lockfile`) is the supervisor lock: it serializes
start, stop, restart, setup and restore, and keeps backups (which hold it shared) away from
them. The same lock on `<backup dir>/.retention.lock` serializes deleting backups.

A command that has to wait says at once who it waits for (PID and command), and says it again if
it gives up. The holder is found in /proc/locks, which the kernel keeps exact: a holder that died
released its lock and is gone from there. Where /proc/locks is missing, the PID and command that
an exclusive holder writes into the lock file are used, if that PID still lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import SparkqError

DEFAULT_WAIT = 120.0
_PROC_LOCKS = Path("/proc/locks")


@contextlib.contextmanager
def file_lock(lockfile: Path, *, wait: float = DEFAULT_WAIT, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `lockfile`, waiting up to `wait` seconds for another holder.

    `shared` lets several holders in at once (manual backups) while keeping out the exclusive
    ones (start, stop, restart, setup, restore) and being kept out by them.
    """
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if not _try_lock(fd, shared):
            _wait_for(fd, lockfile, wait, shared)
        if not shared:
            _write_owner(fd)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(fd: int, shared: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_for(fd: int, lockfile: Path, wait: float, shared: bool) -> None:
    who = describe_holders(fd)
    if wait > 0:
        print(f"sparkq: waiting for {who} to finish (it holds {lockfile}; giving up after {wait:.0f}s)",
              file=sys.stderr, flush=True)
    deadline = time.monotonic() + wait
    delay = 0.01
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
        if _try_lock(fd, shared):
            return
    who = describe_holders(fd)  # it may have changed hands meanwhile
    raise SparkqError(
        f"{who} has held {lockfile} for over {wait:.0f}s; "
        "wait for it to finish (or end it if it hangs), then try again"
    )


def _write_owner(fd: int) -> None:
    """Leave our PID and command in the lock file, for systems without /proc/locks."""
    line = f"{os.getpid()} {command_line(os.getpid()) or 'sparkq'}\n".encode(errors="replace")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
    except OSError:
        pass  # a hint only; the flock itself is what excludes


# --- who holds it -----------------------------------------------------------------------------


def describe_holders(fd: int) -> str:
    """'PID 123 (sparkq stop)' for whoever holds the lock on open file `fd`, or a plain phrase."""
    pids = lock_holders(fd)
    if not pids:
        return "another sparkq command (its PID could not be found)"
    return " and ".join(describe_pid(pid) for pid in pids[:3])


def describe_pid(pid: int) -> str:
    cmd = command_line(pid)
    return f"PID {pid} ({cmd})" if cmd else f"PID {pid}"


def lock_holders(fd: int) -> list[int]:
    """PIDs holding a flock on the file open as `fd` (waiters excluded); may be empty."""
    st = os.fstat(fd)
    pids: list[int] = []
    try:
        lines = _PROC_LOCKS.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4231 fd:01:1234 0 EOF"; waiters read "1: -> FLOCK ..."
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
            inode = int(parts[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if inode == st.st_ino and pid > 0 and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    # No /proc/locks, or its inode numbers differ from ours (some overlay filesystems).
    return pids or _owner_from_file(fd)


def _owner_from_file(fd: int) -> list[int]:
    from .fsutil import pid_alive

    try:
        head = os.pread(fd, 64, 0).split(maxsplit=1)
        pid = int(head[0]) if head else 0
    except (OSError, ValueError):
        return []
    return [pid] if pid != os.getpid() and pid_alive(pid) else []


def command_line(pid: int, limit: int = 80) -> str | None:
    """The command of `pid` as a user would type it: `sparkq backup-restore 1`, `python3 app.py`."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not args:
        return None
    # An interpreter running a script: show the script (our console script shows as "sparkq").
    if os.path.basename(args[0]).startswith("python") and len(args) > 1 and not args[1].startswith("-"):
        args = args[1:]
    args[0] = os.path.basename(args[0])
    text = " ".join(" ".join(args).split())  # one line, whatever newlines an argument holds
    return text if len(text) <= limit else text[: limit - 3] + "..."
