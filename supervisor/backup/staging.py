"""Placing restored files: each by temp copy + fsync + rename, so a crash leaves every target
whole, old or new; `roll_back` puts back, from the pre-restore bundle, what a failed restore had
already placed. The restored database is copied into a temp file beside its target while the
pre-restore bundle is being written (StagedCopy), then renamed into place only after that bundle
is published.

Writing the pre-restore bundle is mostly CPU (the live DB's integrity check and hash); copying
1 GiB and flushing it to disk is mostly the kernel and the disk. Side by side they take about
as long as the longer of the two. Nothing changes order where it matters: the live database is
replaced only by the rename, which `StagedCopy.place` does after the caller has published the
bundle; until then the temp file is the only thing written, and `discard` removes it on any
failure.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from .. import log
from ..fsutil import atomic_copy, copy_fd, fsync_dir, private_mkdir, remove_stale_temps, temp_name
from .dbfiles import fold_copy
from .layout import DB_NAME, ENV_NAME, JOURNAL, SHM, TEMPLATES_MEMBER, WAL, YML_NAME, sidecar
from .restore_plan import Step


class StagedCopy:
    """`src` copied to a temp name beside `target` (mode `mode`, fsynced) in a background thread."""

    def __init__(self, src: Path, target: Path, mode: int) -> None:
        self.src, self.target, self.mode = src, target, mode
        self.tmp = temp_name(target)
        self.seconds: dict[str, float] = {}  # copy and fsync, measured in the thread
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="sparkq-restore-copy", daemon=True)
        self._made: list[Path] = []  # folders start() created for the target (a moved database.path)

    def start(self) -> "StagedCopy":
        self._made = _missing_folders(self.target.parent)
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
        """Wait for the thread, remove the temp file if it was not placed, and the folders made
        for it: a restore that stops here (a backup that failed its verification) changed nothing."""
        if self._thread.ident is not None:  # started
            self._thread.join()
        self.tmp.unlink(missing_ok=True)
        for folder in self._made:  # deepest first; one that is not empty stays, and so its parents
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def stage_db(steps: list[Step]) -> StagedCopy | None:
    """Start copying the restored DB beside its target (a 2.1 bundle's DB + WAL is folded later)."""
    for step in steps:
        if step.kind == "db" and (step.wal is None or step.wal.stat().st_size == 0):
            return StagedCopy(step.source, step.target, step.mode).start()
    return None


def place(step: Step, staged: StagedCopy | None = None) -> None:
    """Put one restored file in place: the staged DB copy, a 2.1 DB + WAL folded, or a temp copy."""
    target = step.target
    target.parent.mkdir(parents=True, exist_ok=True)
    if step.kind == "db":
        # The new file must never meet the old DB's WAL: after the checkpoint it is empty, so
        # removing it before the rename loses nothing, and a crash in between leaves the old DB whole.
        for suffix in (WAL, SHM, JOURNAL):
            sidecar(target, suffix).unlink(missing_ok=True)
        if staged is not None and staged.target == target:
            staged.place()
        elif step.wal is not None and step.wal.stat().st_size > 0:
            _place_folded(step.source, step.wal, target, step.mode)
        else:
            atomic_copy(step.source, target, mode=step.mode)
    else:
        atomic_copy(step.source, target, mode=step.mode)


def _place_folded(db: Path, wal: Path, target: Path, mode: int) -> None:
    """A 2.1 bundle's DB + WAL: fold them together in a temp dir beside `target`, then rename."""
    remove_stale_temps(target)  # a killed earlier restore's work dir
    work = temp_name(target)
    shutil.rmtree(work, ignore_errors=True)
    private_mkdir(work)
    try:
        folded = fold_copy(db, wal, work)
        os.chmod(folded, mode)
        os.replace(folded, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def roll_back(placed: list[Step], pre_path: Path, live_db: Path) -> None:
    """Put back every target already replaced, from the pre-restore bundle (or remove it)."""
    for step in reversed(placed):
        name = {"db": DB_NAME, "yml": YML_NAME, "env": ENV_NAME}.get(
            step.kind, f"{TEMPLATES_MEMBER}/{step.target.name}")
        saved = pre_path / name
        # A database placed where the restored config looks (not the live one) had no file before.
        moved = step.kind == "db" and step.target != live_db
        try:
            if step.kind == "db":
                for suffix in (WAL, SHM):
                    sidecar(step.target, suffix).unlink(missing_ok=True)
            if saved.is_file() and not saved.is_symlink() and not moved:
                atomic_copy(saved, step.target, mode=step.mode)
            else:
                step.target.unlink(missing_ok=True)
                fsync_dir(step.target.parent)
        except OSError as exc:
            log.get().error("restore_rollback_failed", target=str(step.target), error=str(exc))
