"""Retention: keep the newest `keep` regular backups, delete the rest, clean up after crashes.

Bundles and legacy `.db` files count together, newest first in catalog order (a bundle's time
is its manifest's `created_at`, else its name in the clock layout.name_time picks); pre-restore bundles are never
counted nor deleted. Only this project's backups count (see history.py): another project's
bundles in a shared backup dir are never pruned here, and neither is the bundle the last restore
came from. Deleting is serialized by its own short lock, so backups taken at once never race
each other's clean-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .. import log
from ..errors import SparkqError, UsageError
from ..locking import file_lock
from ..fsutil import remove_stale_temps_in
from .layout import FETCH_TEMP, JOURNAL, SHM, WAL, sidecar, temp_entry

RETENTION_LOCK = ".retention.lock"


def prune(settings, keep: int) -> list[str]:
    """Keep the newest `keep` regular backups (bundles and legacy files together); delete the rest.

    Pre-restore bundles are never counted nor deleted. Also removes temp dirs of dead writers.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise UsageError(f"keep must be a whole number >= 1, got {keep!r}")
    return prune_for(settings, keep)[0]


def prune_for(settings, keep: int, protect: str | None = None) -> tuple[list[str], list[str]]:
    """prune_old for this project: its own backups only, sparing what the last restore came from."""
    from . import history

    paths = settings.paths
    return prune_old(paths.backup_dir, keep, protect, project_id=history.project_id(paths),
                     spare={history.restored_from(paths)} - {None})


@contextlib.contextmanager
def retention_lock(backup_dir: Path, *, wait: float = 60.0):
    """Serialize deleting backups, so backups finishing at once never race each other's pruning."""
    with file_lock(Path(backup_dir) / RETENTION_LOCK, wait=wait):
        yield


def prune_old(backup_dir: Path, keep: int, protect: str | None = None, *, project_id: str | None = None,
              spare: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Returns (names deleted, problems). Deletion problems are reported, never raised: the new
    backup is already safely in place. Counts only backups of `project_id` and unmarked ones;
    never deletes `protect` or a name in `spare`."""
    from .catalog import scan
    from .history import ours

    if not backup_dir.is_dir():
        return [], []
    pruned: list[str] = []
    problems: list[str] = []
    try:
        with retention_lock(backup_dir):
            # Temps whose writer is gone: a crashed backup, an interrupted delete. Off-site fetch
            # folders are left to the next fetch, which knows the host's own from another's.
            for name in remove_stale_temps_in(backup_dir, spare=lambda name: name.startswith(FETCH_TEMP)):
                log.get().info("backup_temp_removed", name=name)
            regular = ours(scan(backup_dir)[0], project_id)
            for entry in _past_keep(regular, keep, {protect, *spare}):
                try:
                    _delete(entry, backup_dir)
                except OSError as exc:
                    problems.append(f"could not delete old backup {entry.name} ({exc.strerror}); check its permissions")
                    log.get().warning("backup_prune_failed", name=entry.name, error=str(exc))
                    continue
                pruned.append(entry.name)
    except (SparkqError, OSError) as exc:  # the lock stayed busy or cannot be made (a read-only dir)
        problems.append(f"old backups not pruned: {exc}")
        log.get().warning("backup_prune_skipped", error=str(exc))
    if pruned:
        log.get().info("backups_pruned", names=pruned, keep=keep)
    return pruned, problems


def _past_keep(regular: list, keep: int, protect: set) -> list:
    """What retention deletes: the backups past the newest `keep`, sparing some of them.

    - `protect`: the backup just written (a clock set back, or bundles copied in from another
      host, can sort it past `keep`, and a backup must never delete itself), and the bundle the
      last restore came from (the first start after restoring an old bundle must not prune it).
    - The newest backup whose integrity check was ok, when none of the kept ones is: a series
      of starts on a damaged database must not push the last good backup out.
    """
    spared = set(protect)
    if not any(e.integrity_check == "ok" for e in regular[:keep]):
        spared.add(next((e.name for e in regular if e.integrity_check == "ok"), None))
    return [e for e in regular[keep:] if e.name not in spared]


def _delete(entry, backup_dir: Path) -> None:
    path = Path(entry.path)
    if entry.format == "bundle":
        # Hide it first (one rename), so a crash half-way never leaves half a bundle listed.
        hidden = backup_dir / temp_entry(path.name)
        os.rename(path, hidden)
        shutil.rmtree(hidden)
        return
    for extra in (*entry.legacy_siblings, *(sidecar(path, s) for s in (WAL, SHM, JOURNAL))):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(extra)
    os.unlink(path)

