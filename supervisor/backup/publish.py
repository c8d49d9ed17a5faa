"""Where a bundle lands: the backup dir (made 0700), a name reserved for it, and the publish.

A writer reserves `base[_N]` by creating its temp dir (`.tmp-<name>-<pid>`, layout.py), fills it,
then renames it onto the first free name from there on without ever replacing anything
(fsutil.publish_noreplace): backups taken in the same second each get their own bundle.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ..errors import BackupFailed
from ..fsutil import fsync_dir, publish_noreplace
from .failures import os_failure
from .layout import BUNDLE_RE, temp_entry, temp_of


def ensure_backup_dir(backup_dir: Path) -> None:
    """Create the backup dir 0700 when missing; refuse one that is not a directory."""
    try:
        st = os.stat(backup_dir)
    except FileNotFoundError:
        try:
            backup_dir.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(backup_dir, 0o700)
            os.chmod(backup_dir, 0o700)
            fsync_dir(backup_dir.parent)
            return
        except OSError as exc:
            raise os_failure(exc, f"creating the backup dir {backup_dir}") from None
    except OSError as exc:
        raise os_failure(exc, f"opening the backup dir {backup_dir}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BackupFailed(
            f"backup failed: the backup dir {backup_dir} is not a directory; "
            "move that file away or point backup.dir in sparkq.yml elsewhere"
        )
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
        with contextlib.suppress(OSError):
            os.chmod(backup_dir, 0o700)


def reserve(backup_dir: Path, base: str) -> tuple[str, Path]:
    """Pick the first free `base[_N]` and create our temp dir for it (mkdir is the reservation)."""
    taken = set(os.listdir(backup_dir))
    busy = {temp[0] for temp in map(temp_of, taken) if temp is not None}  # being written right now
    for n in range(10_000):
        name = base if n == 0 else f"{base}_{n}"
        if name in taken or f"{name}.db" in taken or name in busy:
            continue
        tmp = backup_dir / temp_entry(name)
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:  # another thread of this process took it just now
            continue
        os.chmod(tmp, 0o700)
        return name, tmp
    raise BackupFailed(f"backup failed: no free bundle name for {base} in {backup_dir}; remove stale entries")


def _names_from(name: str):
    """`name`, then the same base with the next `_N` suffixes: where a publish may land."""
    match = BUNDLE_RE.fullmatch(name)
    base = name if match is None or match[4] is None else name[: -len(match[4]) - 1]
    n = int(match[4]) if match is not None and match[4] else 0
    yield name
    for n in range(n + 1, n + 10_000):
        yield f"{base}_{n}"


def publish(tmp: Path, backup_dir: Path, name: str) -> Path:
    """Rename `tmp` onto the first free name from `name` on; never replaces anything."""
    try:
        return publish_noreplace(tmp, backup_dir, _names_from(name))
    except FileExistsError:
        raise BackupFailed(f"backup failed: no free bundle name for {name} in {backup_dir}; "
                           "remove stale entries") from None
