"""The supervisor lock: one flock that serializes start, stop, restart, backup placement and restore."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import SparkqError

DEFAULT_WAIT = 120.0


@contextlib.contextmanager
def supervisor_lock(lockfile: Path, *, wait: float = DEFAULT_WAIT, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `lockfile`, waiting up to `wait` seconds for another command.

    `shared` lets several holders in at once (manual backups) while keeping out the exclusive
    ones (start, stop, restart, setup, restore) and being kept out by them.
    """
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        deadline = time.monotonic() + wait
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SparkqError(
                        f"another sparkq command has held {lockfile} for over {wait:.0f}s; "
                        "wait for it to finish and try again"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        yield
    finally:
        os.close(fd)  # closing releases the lock
