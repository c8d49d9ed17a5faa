"""Durable file operations: every change to user data is temp-write + fsync + rename + dir fsync."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


def temp_name(target: Path) -> Path:
    """A hidden name beside `target`, on the same filesystem, so a rename onto it is atomic."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o600) -> None:
    _atomic_place(target, mode, lambda out: out.write(data))


def atomic_copy(src: Path, target: Path, mode: int = 0o600) -> None:
    """Copy `src` onto `target` so that `target` is always either the old file or the new, whole."""

    def copy(out) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, _CHUNK)

    _atomic_place(target, mode, copy)


def _atomic_place(target: Path, mode: int, write) -> None:
    """Temp file beside `target`, `write(fh)`, fsync, rename over `target`, fsync the folder."""
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


def private_mkdir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
