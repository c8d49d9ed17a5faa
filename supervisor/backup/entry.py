"""A backup as the catalog lists it: one Entry, whatever its shape (our bundle, the original's,
a legacy single file), with what can be read of it without trusting it.

The catalog (catalog.py) finds entries and puts them in one order; this module says what an
entry holds: its members (never through a symlink, never outside the bundle), its counts and
database size (from the manifest, or from the database itself when the manifest cannot be
trusted), and its JSON form for backup-list and backup-show.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import VerificationFailed
from .layout import BACKUP_VERSION, DB_NAME, ENV_NAME, ORIGINAL_VERSION, WAL_NAME, YML_NAME

REGULAR = "regular"
PRE_RESTORE = "pre_restore"


@dataclass
class Entry:
    name: str
    path: Path
    format: str  # "bundle" | "legacy"
    kind: str  # "regular" | "pre_restore"
    number: int | None
    created_at: datetime
    manifest: dict | None = None
    damaged: str | None = None
    # The parsed manifest even when it failed validation (for backup-show); None when unparsable.
    raw_manifest: Any = field(default=None, repr=False, compare=False)
    # Listing (backup-list, status) reads manifests only and never opens a database to fold one.
    listing: bool = field(default=False, repr=False, compare=False)
    _order: tuple = field(default=(), repr=False, compare=False)

    # --- members ---------------------------------------------------------------------------

    def member(self, relname: str) -> Path | None:
        """The regular file `relname` inside the backup; None when absent.

        Raises VerificationFailed for a symlink anywhere on the way, a name that would leave the
        bundle, or something that is not a regular file. A legacy backup answers for `sparkq.db`
        (the file itself), `sparkq.yml` and `.env` (the .yml and .env beside it).
        """
        if self.format == "legacy":
            if relname == DB_NAME:
                if self.path.is_symlink():
                    raise VerificationFailed(f"{self.name} is a symlink; refusing it (pick another backup)")
                return self.path if self.path.is_file() else None
            return {YML_NAME: self.legacy_yml, ENV_NAME: self.legacy_env}.get(relname)
        rel = PurePosixPath(relname)
        if not relname or "\\" in relname or "\0" in relname or rel.is_absolute() or ".." in rel.parts:
            raise VerificationFailed(f"{self.name}: member name {relname!r} leaves the bundle; refusing it")
        if self.path.is_symlink():
            raise VerificationFailed(f"{self.name} is a symlink; refusing it (pick another backup)")
        current = self.path
        st = None
        for part in rel.parts:
            current = current / part
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                shown = current.relative_to(self.path).as_posix()
                raise VerificationFailed(f"{self.name}/{shown} is a symlink; refusing it (pick another backup)")
        if st is None or not stat.S_ISREG(st.st_mode):
            raise VerificationFailed(f"{self.name}/{rel.as_posix()} is not a regular file; refusing it")
        base = self.path.resolve()
        if not current.resolve().is_relative_to(base):
            raise VerificationFailed(f"{self.name}/{rel.as_posix()} leaves the bundle; refusing it")
        return current

    @property
    def db_file(self) -> Path | None:
        """The backup's database file (raises VerificationFailed when it is a symlink)."""
        return self.member(DB_NAME)

    @property
    def unusable(self) -> str | None:
        """Why no member of this bundle can be trusted, or None. Any damage but one: a manifest
        that is not JSON, as the original wrote around a damaged database (manifest.NOT_JSON),
        leaves its sparkq.yml, .env and exports usable (with a note that they went unchecked)."""
        from .manifest import NOT_JSON

        return None if not self.damaged or self.damaged.startswith(NOT_JSON) else self.damaged

    @property
    def ours(self) -> bool:
        """A bundle this SparkQ wrote (backup_version 2.0): its database stands alone."""
        return self.format == "bundle" and (self.manifest or {}).get("backup_version") == BACKUP_VERSION

    @property
    def wal_file(self) -> Path | None:
        """`sparkq.db-wal` of a bundle when present and not empty (older 2.1 bundles carry one).

        Never for a bundle of ours: a -wal found there was put there later, and folding it in
        would restore rows no checksum covers (verify reports it, see verify.py)."""
        if self.format != "bundle" or self.ours:
            return None
        wal = self.member(WAL_NAME)
        return wal if wal is not None and wal.stat().st_size > 0 else None

    @property
    def legacy_yml(self) -> Path | None:
        return self._legacy_sibling(".yml")

    @property
    def legacy_env(self) -> Path | None:
        """The `.env` the original's restore script saved beside `sparkq_preRestore_TS.db`."""
        return self._legacy_sibling(".env")

    @property
    def legacy_siblings(self) -> list[Path]:
        """The files that belong to a legacy backup besides its .db (to list or remove with it)."""
        return [p for p in (self.legacy_yml, self.legacy_env) if p is not None]

    def _legacy_sibling(self, suffix: str) -> Path | None:
        """`<stem><suffix>` beside a legacy .db when it is a regular file (never a symlink)."""
        if self.format != "legacy":
            return None
        sibling = self.path.with_name(self.path.name[: -len(".db")] + suffix)
        try:
            st = os.lstat(sibling)
        except OSError:
            return None
        return sibling if stat.S_ISREG(st.st_mode) else None

    # --- what the listing shows -------------------------------------------------------------

    @property
    def config_file_included(self) -> bool:
        if self.format == "legacy":
            return self.legacy_yml is not None
        m = self.manifest
        if m is not None and isinstance(m.get("config_file"), bool) and m.get("backup_version") != ORIGINAL_VERSION:
            return m["config_file"]
        # 2.1 and damaged bundles: their file lists were not reliable, so look at the bundle.
        return not self.path.is_symlink() and _is_regular(self.path / YML_NAME)

    @property
    def env_file_included(self) -> bool:
        if self.format == "legacy":
            return self.legacy_env is not None
        return not self.path.is_symlink() and _is_regular(self.path / ENV_NAME)

    @property
    def counts(self) -> dict:
        if self._folded is not None:
            return dict(self._folded[0])
        if self.manifest is not None:
            return dict(self.manifest.get("counts") or {})
        return dict(self._db_facts[0])

    @property
    def counts_from(self) -> str:
        """Where `counts` (and the size) come from:
        "database": read from the bundled database, its `-wal` folded in (legacy, damaged and
        2.1-with-WAL backups); "snapshot": our manifest, counted from the snapshot the bundle
        holds; "live": an original 2.1 manifest, counted from the live database while it was
        copied, so it may not match what a restore gives (backup-list marks these with *).
        """
        if self.manifest is None or self._folded is not None:
            return "database"
        return "live" if self.manifest.get("backup_version") == ORIGINAL_VERSION else "snapshot"

    @property
    def integrity_check(self) -> str | None:
        if self.manifest is not None:
            return self.manifest.get("integrity_check")
        return self._db_facts[1]

    @property
    def db_size(self) -> int:
        if self.format == "legacy":
            return _lstat_size(self.path)
        if self._folded is not None:
            return self._folded[1]
        database = (self.manifest or {}).get("database") or {}
        for key in ("bytes", "size"):
            value = database.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return 0 if self.path.is_symlink() else _lstat_size(self.path / DB_NAME)

    @property
    def trigger(self) -> str | None:
        value = (self.manifest or {}).get("trigger")
        if isinstance(value, str):
            return value
        return "pre-restore" if self.kind == PRE_RESTORE else None

    @cached_property
    def _folded(self) -> tuple[dict, int] | None:
        """(counts, size in bytes) of a 2.1 bundle's database with its `-wal` folded in, or None
        (no WAL, not 2.1, unreadable, or a listing: the manifest's figures are shown then, marked).

        The original copied a live database with `cp`, so rows may sit in the WAL only and its
        manifest counts were read from the live database: neither the manifest nor the bare
        sparkq.db tells what a restore gives. Folding works on private copies (open_backup_db),
        so the bundle is never modified.
        """
        if self.listing or self.format != "bundle" or (self.manifest or {}).get("backup_version") != ORIGINAL_VERSION:
            return None
        try:
            db = self.db_file
            wal = self.wal_file if db is not None else None
        except VerificationFailed:
            return None
        if wal is None:
            return None
        import sqlite3

        from sparkq import storage

        from .dbfiles import open_backup_db  # status lists backups: SQLite only when needed

        try:
            with open_backup_db(db, wal) as conn:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                return storage.counts(conn), pages * conn.execute("PRAGMA page_size").fetchone()[0]
        except (sqlite3.Error, OSError):
            return None

    @cached_property
    def _db_facts(self) -> tuple[dict, str | None]:
        """(counts, quick_check) read from the database itself; used when no manifest tells."""
        try:
            db, wal = self.db_file, self.wal_file
        except VerificationFailed as exc:
            return {}, f"unreadable: {exc}"
        if db is None:
            return {}, "unreadable: no database file"
        import sqlite3

        from sparkq import storage

        from .dbfiles import open_backup_db  # status lists backups: SQLite only when needed

        try:
            with open_backup_db(db, wal) as conn:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                return storage.counts(conn), check
        except (sqlite3.Error, OSError) as exc:
            return {}, f"unreadable: {exc}"

    def to_dict(self) -> dict:
        return {
            "number": self.number,
            "name": self.name,
            "format": self.format,
            "path": str(self.path),
            "created_at": self.created_at.isoformat(),
            "db_size": self.db_size,
            "config_file": self.config_file_included,
            "env_file": self.env_file_included,
            "counts": self.counts,
            "counts_from": self.counts_from,
            "integrity_check": self.integrity_check,
            "damaged": self.damaged,
            "trigger": self.trigger,
        }


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _lstat_size(path: Path) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
