"""The catalog: every backup in the backup dir as an Entry, in one order, and resolving a ref.

The names and formats are specified in layout.py; manifests are read and checked in manifest.py;
what an entry holds is entry.py; backup-list and backup-show render entries in listing.py. Shapes read (none may crash a listing):
- bundles `sparkq_YYYYMMDD_HHMMSS[_N]/` with `manifest.json` ("2.0": `files` a list, `config_file`,
  `checksums`; older "2.1": `files` an object of lists, `configuration_files`, a `sparkq.db-wal`);
- bundles whose manifest is missing, unreadable, too big or of the wrong shape: listed with
  `damaged` set to the reason and whatever can still be read;
- legacy single files `sparkq_YYYYMMDD_HHMMSS.db`, maybe with a `.yml` of the same stem beside
  (and, for the original's loose `sparkq_preRestore_*` files, an `.env` too);
- pre-restore bundles `sparkq_preRestore_YYYYMMDD_HHMMSS[_N]`, listed apart and addressed by name.

Listing reads manifests only: a bundle's database is opened only when its manifest cannot be
trusted. Nothing here follows a symlink out of the backup dir or writes beside a backup (SQLite
opens backups `immutable`, so no `-shm`/`-wal` appear next to them).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import BackupNotFound, SparkqError, UsageError
from . import manifest as manifests
from .entry import PRE_RESTORE, REGULAR, Entry
from .layout import BUNDLE_RE, LEGACY_RE, PRE_RESTORE_PREFIX, name_time

_EPOCH = datetime.fromtimestamp(0, timezone.utc)
REF_HINT = "give a number from backup-list (1 = newest) or a backup name such as sparkq_20251203_143022"


# --- scanning ---------------------------------------------------------------------------------


def scan(backup_dir: Path, *, listing_cache: Path | None = None) -> tuple[list[Entry], list[Entry]]:
    """(regular backups newest first, numbered from 1; pre-restore bundles newest first).

    With `listing_cache` (backup-list, status) manifests may be answered from that cache file:
    each entry's manifest then holds only the keys a listing shows (manifest.LISTED). Everything that
    restores, verifies or shows a backup reads the manifests themselves.
    """
    regular: list[Entry] = []
    pre: list[Entry] = []
    try:
        items = list(os.scandir(backup_dir))
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    except OSError as exc:
        raise SparkqError(f"cannot read the backup dir {backup_dir} ({exc.strerror}); check its permissions")
    cache = manifests.ListingCache(listing_cache, backup_dir) if listing_cache else None
    for item in items:
        entry = _entry_of(item, cache)
        if entry is not None:
            (pre if entry.kind == PRE_RESTORE else regular).append(entry)
    if cache is not None:
        cache.save()
    regular.sort(key=lambda e: e._order, reverse=True)
    pre.sort(key=lambda e: e._order, reverse=True)
    for number, entry in enumerate(regular, 1):
        entry.number = number
    return regular, pre


def _entry_of(item: os.DirEntry, cache: manifests.ListingCache | None = None) -> Entry | None:
    name = item.name
    if name.startswith("."):
        return None
    bundle = BUNDLE_RE.fullmatch(name)
    legacy = None if bundle else LEGACY_RE.fullmatch(name)
    match = bundle or legacy
    if match is None:
        return None
    try:
        is_link = item.is_symlink()
        if not is_link and not (item.is_dir(follow_symlinks=False) if bundle else item.is_file(follow_symlinks=False)):
            return None
    except OSError:
        return None
    prefix, day, clock, seq = match.groups()
    kind = PRE_RESTORE if prefix == PRE_RESTORE_PREFIX else REGULAR
    path = Path(item.path)
    manifest = raw = damaged = None
    if is_link:
        damaged = f"{name} is a symlink; refusing it"
    elif bundle:
        raw, damaged = cache.manifest(item.path, name) if cache else manifests.read(item.path)
        # One lstat: a manifest can say "ok" about a sparkq.db that is a symlink to anywhere.
        damaged = damaged or manifests.db_problem(item.path, name)
        manifest = raw if damaged is None else None
    # One order everywhere (listing, restore refs, retention): the manifest's created_at, which
    # carries an offset (also when the bundle is damaged otherwise), else the name in the clock its
    # mtime agrees with (layout.name_time), else the mtime.
    created = _parse_iso(raw.get("created_at")) if isinstance(raw, dict) else None
    if created is None:
        try:
            mtime = item.stat(follow_symlinks=False).st_mtime
        except OSError:
            mtime = None
        created = name_time(day, clock, mtime) or (
            _EPOCH if mtime is None else datetime.fromtimestamp(mtime, timezone.utc))
    return Entry(
        name=name,
        path=path,
        format="bundle" if bundle else "legacy",
        kind=kind,
        number=None,
        created_at=created,
        manifest=manifest,
        damaged=damaged,
        raw_manifest=raw,
        listing=cache is not None,
        _order=(created, int(seq or 0), name),
    )


def _parse_iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


# --- resolving a reference ------------------------------------------------------------------


def resolve(settings, ref: str) -> Entry:
    """The backup `ref` names: a position in backup-list (1 = newest) or an exact name.

    The reference is only ever compared with names found in the backup dir; it is never used to
    build a path, so nothing outside the backup dir can be reached through it.
    """
    text = ref if isinstance(ref, str) else str(ref)
    text = text.strip()
    if text.rstrip("/") and "/" not in text.rstrip("/"):
        text = text.rstrip("/")  # a bundle name as tab completion gives it: sparkq_20260101_000000/
    if not text:
        raise UsageError(f"empty backup reference; {REF_HINT}")
    if any(c in text for c in "/\\\0") or ".." in text or text.startswith(".") or not text.isprintable():
        raise UsageError(f"invalid backup reference {ref!r}; {REF_HINT}")
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text) and not (text.isdigit() and text.isascii()):
        raise UsageError(f"invalid backup number {ref!r}; {REF_HINT}")
    if text.startswith("-"):  # commands let "-1" through as a ref, so a mistyped option lands here
        raise UsageError(f"unknown option {text}; see the command's --help")
    regular, pre = scan(settings.paths.backup_dir)
    if text.isdigit() and text.isascii():
        number = int(text) if len(text) < 20 else 10**20
        if number < 1:
            raise UsageError(f"invalid backup number {ref!r}; backup numbers start at 1 (newest)")
        if number > len(regular):
            raise BackupNotFound(f"no backup {text}; see ./sparkq.sh backup-list")
        return regular[number - 1]
    for entry in regular + pre:
        if text == entry.name or (entry.format == "legacy" and text + ".db" == entry.name):
            return entry
    raise BackupNotFound(f"no backup {text}; see ./sparkq.sh backup-list")
