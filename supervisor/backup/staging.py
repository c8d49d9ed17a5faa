"""A restored database copied into a temp file beside its target while the pre-restore bundle is
being written, then renamed into place only after that bundle is published.

Writing the pre-restore bundle is mostly CPU (the live DB's integrity check and hash); copying
1 GiB and flushing it to disk is mostly the kernel and the disk. Side by side they take about
as long as the longer of the two. Nothing changes order where it matters: the live database is
replaced only by the rename, which `place` does after the caller has published the bundle; until
then the temp file is the only thing written, and `discard` removes it on any failure.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..fsutil import copy_fd, fsync_dir, remove_stale_temps, temp_name


class StagedCopy:
    """`src` copied to a temp name beside `target` (mode `mode`, fsynced) in a background thread."""

    def __init__(self, src: Path, target: Path, mode: int) -> None:
        self.src, self.target, self.mode = src, target, mode
        self.tmp = temp_name(target)
        self.seconds: dict[str, float] = {}  # copy and fsync, measured in the thread
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="sparkq-restore-copy", daemon=True)

    def start(self) -> "StagedCopy":
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.target)
        self._thread.start()
        return self

    def _write(self) -> None:
        try:
            started = time.perf_counter()
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.mode)
            with os.fdopen(fd, "wb") as out, open(self.src, "rb") as inp:
                copy_fd(inp, out)
                out.flush()
                copied = time.perf_counter()
                os.fsync(out.fileno())
            os.chmod(self.tmp, self.mode)
            self.seconds = {"copy": round(copied - started, 3), "fsync": round(time.perf_counter() - copied, 3)}
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by place()
            self._error = exc

    def place(self) -> None:
        """Wait for the copy, then rename it over the target (the moment the live DB changes)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)

    def discard(self) -> None:
        """Wait for the thread and remove the temp file if it was not placed."""
        if self._thread.ident is not None:  # started
            self._thread.join()
        self.tmp.unlink(missing_ok=True)
