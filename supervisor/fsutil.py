"""Durable file operations: every change to user data is temp-write + fsync + rename + dir fsync."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# One temp-name scheme for the whole project: `.tmp-<name>-<pid>` beside the final place. The
# PID lets the next writer remove what a dead one left; the leading dot keeps it out of listings.
# Atomic writes used `.<name>.tmp-<pid>` before; temp_of still reads that form, so such leftovers
# are cleaned up too.
_TEMP_RE = re.compile(r"\.tmp-(?P<name>.+)-(?P<pid>\d+)")
_OLD_TEMP_RE = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)")


def temp_entry(name: str, pid: int | None = None) -> str:
    """The hidden temp name for `name` (a file or folder) written by `pid` (default: us)."""
    return f".tmp-{name}-{os.getpid() if pid is None else pid}"


def temp_of(entry: str) -> tuple[str, int] | None:
    """(the name it stands for, the writer's PID) when `entry` is a temp name, else None."""
    match = _TEMP_RE.fullmatch(entry) or _OLD_TEMP_RE.fullmatch(entry)
    return (match["name"], int(match["pid"])) if match else None


def temp_name(target: Path) -> Path:
    """A hidden name beside `target`, on the same filesystem, so a rename onto it is atomic."""
    return target.with_name(temp_entry(target.name))


def remove_stale_temps(target: Path) -> list[str]:
    """Delete the temp files (or work dirs) of `target` left by writers that died mid-write;
    returns the names removed.

    Only temp names of `target`, and only when the PID in the name is not alive: a writer that
    still runs keeps its file. Without this, each crash while restoring the database would leave
    a hidden full-size copy of it beside the live one for good.
    """
    return _remove_stale(target.parent, lambda name: name == target.name)


def remove_stale_temps_in(folder: Path, spare: Callable[[str], bool] = lambda name: False) -> list[str]:
    """The same for every temp in `folder` (a killed backup's bundle, an interrupted delete),
    except those whose name `spare` picks."""
    return _remove_stale(folder, lambda name: not spare(name))


def _remove_stale(folder: Path, mine: Callable[[str], bool]) -> list[str]:
    from .process import alive

    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for entry in entries:
        temp = temp_of(entry)
        if temp is None or not mine(temp[0]):
            continue
        if temp[1] != os.getpid() and not alive(temp[1]):
            remove_entry(folder / entry)
            removed.append(entry)
    return removed


def remove_entry(path: Path) -> None:
    """Remove a file or a whole folder (never following a symlink); gone already is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def sha256_file(path: Path) -> str:
    """Hex sha256 of a regular file, read 1 MiB at a time (hashlib releases the GIL as it hashes).

    Refuses symlinks and special files (a FIFO would block) with an OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        digest = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o600) -> None:
    _atomic_place(target, mode, lambda out: out.write(data))


def atomic_copy(src: Path, target: Path, mode: int = 0o600) -> None:
    """Copy `src` onto `target` so that `target` is always either the old file or the new, whole."""

    def copy(out) -> None:
        with open(src, "rb") as inp:
            copy_fd(inp, out)

    _atomic_place(target, mode, copy)


def copy_fd(inp, out) -> None:
    """Copy the open file `inp` to `out` in the kernel (copy_file_range: no trip through Python,
    about 3x faster on a large DB), falling back to a buffered copy where it is not supported."""
    out.flush()
    try:
        while os.copy_file_range(inp.fileno(), out.fileno(), 1 << 30):
            pass
        return
    except (AttributeError, OSError):
        inp.seek(0)
        out.seek(0)
        out.truncate()
    shutil.copyfileobj(inp, out, _CHUNK)


def _atomic_place(target: Path, mode: int, write) -> None:
    """Temp file beside `target`, `write(fh)`, fsync, rename over `target`, fsync the folder."""
    remove_stale_temps(target)
    tmp = temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def rotate_log(path: Path, limit: int = 10 << 20) -> None:
    """Keep a log from growing forever: past `limit` bytes it becomes `<name>.1` (one generation)."""
    try:
        if path.stat().st_size > limit:
            os.replace(path, path.with_name(path.name + ".1"))
    except OSError:
        pass


def private_mkdir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


# --- publishing under a name nobody else has -------------------------------------------------------


def publish_noreplace(src: Path, folder: Path, names) -> Path:
    """Rename `src` into `folder` under the first of `names` that is free; never replaces anything.

    Two writers that pick the same name at once both succeed: the second moves on to the next.
    Raises FileExistsError when every name is taken, OSError for any other failure.
    """
    for name in names:
        final = folder / name
        try:
            rename_noreplace(src, final)
            return final
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
    raise FileExistsError(errno.EEXIST, "every candidate name is taken", str(folder))


_renameat2: Any = None


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing (renameat2 RENAME_NOREPLACE).

    Where the kernel or filesystem lacks the flag, a check then a rename: only a writer racing
    in that instant could be replaced, and bundle writers reserve their names first.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = (fn, ctypes)
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2:
        fn, ctypes = _renameat2
        at_fdcwd, noreplace = -100, 1
        if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem lacks the flag
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)
