"""Find, order, resolve and read the backups in the backup dir, whatever format wrote them.

Shapes read (none of them may crash a listing):
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

import json
import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ..fmt import human_size
from ..errors import BackupNotFound, SparkqError, UsageError, VerificationFailed

REGULAR = "regular"
PRE_RESTORE = "pre_restore"
DB_NAME = "sparkq.db"
WAL_NAME = "sparkq.db-wal"
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 4 << 20  # a real manifest is a few KB; anything past this is treated as damaged

_BUNDLE_RE = re.compile(r"(sparkq|sparkq_preRestore)_(\d{8})_(\d{6})(?:_(\d+))?")
_LEGACY_RE = re.compile(r"(sparkq|sparkq_preRestore)_(\d{8})_(\d{6})(?:_(\d+))?\.db")
_EPOCH = datetime.fromtimestamp(0, timezone.utc)
REF_HINT = "give a number from backup-list (1 = newest) or a backup name such as sparkq_20251203_143022"


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
            return {"sparkq.yml": self.legacy_yml, ".env": self.legacy_env}.get(relname)
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
    def wal_file(self) -> Path | None:
        """`sparkq.db-wal` of a bundle when present and not empty (older 2.1 bundles carry one)."""
        if self.format != "bundle":
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
        if m is not None and isinstance(m.get("config_file"), bool) and m.get("backup_version") != "2.1":
            return m["config_file"]
        # 2.1 and damaged bundles: their file lists were not reliable, so look at the bundle.
        return not self.path.is_symlink() and _is_regular(self.path / "sparkq.yml")

    @property
    def env_file_included(self) -> bool:
        if self.format == "legacy":
            return self.legacy_env is not None
        return not self.path.is_symlink() and _is_regular(self.path / ".env")

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
        return "live" if self.manifest.get("backup_version") == "2.1" else "snapshot"

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
        if self.listing or self.format != "bundle" or (self.manifest or {}).get("backup_version") != "2.1":
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


@contextmanager
def open_backup_db(db: Path, wal: Path | None = None) -> Iterator:
    """A read-only connection to a backup's database, with its `-wal` folded in when given.

    Without a WAL the file is opened `immutable`, which writes nothing beside it. With one, both
    files are copied to a private temp dir first, because SQLite would otherwise create `-shm`
    files in the backup (and a read-only open cannot replay a WAL without them).
    """
    import sqlite3

    if wal is None:
        conn = sqlite3.connect(Path(os.path.abspath(db)).as_uri() + "?mode=ro&immutable=1", uri=True)
        try:
            yield conn
        finally:
            conn.close()
        return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sparkq-fold-") as tmp:
        copy = Path(tmp) / DB_NAME
        shutil.copyfile(db, copy)
        shutil.copyfile(wal, Path(tmp) / WAL_NAME)
        conn = sqlite3.connect(str(copy))
        try:
            yield conn
        finally:
            conn.close()


# --- scanning ---------------------------------------------------------------------------------


def scan(backup_dir: Path, *, listing_cache: Path | None = None) -> tuple[list[Entry], list[Entry]]:
    """(regular backups newest first, numbered from 1; pre-restore bundles newest first).

    With `listing_cache` (backup-list, status) manifests may be answered from that cache file:
    each entry's manifest then holds only the keys a listing shows (_LISTED). Everything that
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
    cache = _ListingCache(listing_cache, backup_dir) if listing_cache else None
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


# The manifest keys a listing shows; the listing cache keeps only these.
_LISTED = ("backup_version", "created_at", "integrity_check", "trigger", "config_file",
           "configuration_files", "counts", "database")


class _ListingCache:
    """What backup-list read from each manifest, kept in one file in the data dir (never in the
    backup dir, which holds backups only).

    A thousand bundles mean a thousand manifests to open and parse on every listing; one JSON
    file of their listed keys is an order of magnitude cheaper. An entry is used only while the
    manifest's inode, size and mtime are the ones it was read with; a missing, damaged or
    unwritable cache just means reading the manifests.
    """

    def __init__(self, path: Path, backup_dir: Path) -> None:
        self.path = path
        self.dir = str(backup_dir)
        try:
            with open(path, "rb") as fh:
                saved = json.loads(fh.read())
            self.old = saved["entries"] if saved["dir"] == self.dir and isinstance(saved["entries"], dict) else {}
        except (OSError, ValueError, KeyError, TypeError):
            self.old = {}
        self.new: dict[str, list] = {}

    def manifest(self, bundle: str, name: str) -> tuple[Any, str | None]:
        try:
            st = os.lstat(os.path.join(bundle, MANIFEST))
            stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
        except OSError:
            return _read_manifest(bundle)
        hit = self.old.get(name)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == stamp:
            self.new[name] = hit
            return hit[1], hit[2]
        raw, damaged = _read_manifest(bundle)
        listed = {k: raw[k] for k in _LISTED if k in raw} if damaged is None else None
        self.new[name] = [stamp, listed, damaged]
        return listed, damaged

    def save(self) -> None:
        if self.new == self.old or not self.path.parent.is_dir():
            return
        from ..fsutil import atomic_write_bytes

        blob = json.dumps({"dir": self.dir, "entries": self.new}, separators=(",", ":")).encode()
        try:
            atomic_write_bytes(self.path, blob, mode=0o600)
        except OSError:
            pass  # a read-only data dir: list from the manifests next time too


def _entry_of(item: os.DirEntry, cache: _ListingCache | None = None) -> Entry | None:
    name = item.name
    if name.startswith("."):
        return None
    bundle = _BUNDLE_RE.fullmatch(name)
    legacy = None if bundle else _LEGACY_RE.fullmatch(name)
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
    kind = PRE_RESTORE if prefix == "sparkq_preRestore" else REGULAR
    path = Path(item.path)
    manifest = raw = damaged = None
    if is_link:
        damaged = f"{name} is a symlink; refusing it"
    elif bundle:
        raw, damaged = cache.manifest(item.path, name) if cache else _read_manifest(item.path)
        # One lstat: a manifest can say "ok" about a sparkq.db that is a symlink to anywhere.
        damaged = damaged or _db_problem(item.path, name)
        manifest = raw if damaged is None else None
    # One order everywhere (listing, restore refs, retention): the manifest's created_at, which
    # carries an offset, else the name as local time, else the mtime.
    created = _parse_iso(manifest.get("created_at")) if manifest else None
    if created is None:
        created = _parse_name_time(day, clock)
    if created is None:
        try:
            created = datetime.fromtimestamp(item.stat(follow_symlinks=False).st_mtime, timezone.utc)
        except OSError:
            created = _EPOCH
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


def _read_manifest(bundle: str | Path) -> tuple[Any, str | None]:
    """(parsed manifest or None, why it cannot be trusted or None).

    Plain strings and os calls on purpose: backup-list reads a thousand of these per call."""
    path = os.path.join(bundle, MANIFEST)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, "manifest.json is missing"
    except OSError as exc:
        if os.path.islink(path):
            return None, "manifest.json is a symlink"
        return None, f"manifest.json cannot be read ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "manifest.json is not a regular file"
        if st.st_size > MANIFEST_LIMIT:
            return None, f"manifest.json is too large ({st.st_size} bytes)"
        chunks, total = [], 0
        while total <= MANIFEST_LIMIT:  # the size can change under us: never read past the limit
            chunk = os.read(fd, min(MANIFEST_LIMIT + 1 - total, max(st.st_size, 4096) + 1))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        return None, f"manifest.json cannot be read ({exc.strerror})"
    finally:
        os.close(fd)
    if total > MANIFEST_LIMIT:
        return None, "manifest.json is too large"
    data = b"".join(chunks)
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "manifest.json is not UTF-8 text"
    except ValueError as exc:
        return None, f"manifest.json is not valid JSON ({exc})"
    except RecursionError:
        return None, "manifest.json is nested too deeply"
    return raw, _manifest_problem(raw)


def _db_problem(bundle: str | Path, name: str) -> str | None:
    """Why the bundle's sparkq.db cannot be used (a symlink, not a file), or None (also when absent)."""
    try:
        mode = os.lstat(os.path.join(bundle, DB_NAME)).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return f"{name}/{DB_NAME} is a symlink; refusing it (pick another backup)"
    if not stat.S_ISREG(mode):
        return f"{name}/{DB_NAME} is not a regular file; refusing it"
    return None


def _all_of(values, kind: type) -> bool:
    """Every value is exactly of `kind` (so no bool passes for int); C-speed for long lists."""
    return set(map(type, values)) <= {kind}


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and _all_of(v, str)


# Types the readers rely on, key by key (a missing key is fine; older writers left some out).
# JSON object keys are always strings. Checksum values are only checked for shape here; verify
# compares them with the files. backup-list runs this for every bundle, hence the set tricks.
_MANIFEST_CHECKS = {
    "created_at": lambda v: isinstance(v, str),
    "integrity_check": lambda v: isinstance(v, str),
    "trigger": lambda v: v is None or isinstance(v, str),
    "project_id": lambda v: isinstance(v, str),
    "config_file": lambda v: isinstance(v, bool),
    "configuration_files": lambda v: isinstance(v, dict),
    "database": lambda v: isinstance(v, dict),
    "counts": lambda v: isinstance(v, dict) and _all_of(v.values(), int),
    "files": lambda v: _str_list(v) or (isinstance(v, dict) and all(_str_list(x) for x in v.values())),
    "checksums": lambda v: isinstance(v, dict) and _all_of(v.values(), str) and set(map(len, v.values())) <= {64},
}
_ESCAPES = re.compile(r"^/|\\|\x00|(^|/)\.\.(/|$)|^$")  # absolute, backslash, NUL, "..", empty


def _manifest_problem(m: Any) -> str | None:
    """Why a parsed manifest cannot be trusted, or None. Checks the types readers rely on."""
    if not isinstance(m, dict):
        return "manifest.json is not a JSON object"
    if not isinstance(m.get("backup_version"), str):
        return "manifest.json has no backup_version string"
    for key, ok in _MANIFEST_CHECKS.items():
        if key in m and not ok(m[key]):
            return f"manifest.json has a malformed {key!r}"
    for rel in m.get("checksums") or ():
        if _ESCAPES.search(rel):
            return f"manifest.json checksums name a path outside the bundle ({rel!r})"
    return None


def _parse_name_time(day: str, clock: str) -> datetime | None:
    """A name read as the machine's local time: the original SparkQ names its backups with
    `date +%Y%m%d_%H%M%S`, and legacy `.db` files carry no other clock. (Our bundles carry
    `created_at` with an offset in their manifest, which wins whenever it can be read.)"""
    try:  # by hand: strptime costs more than reading the whole manifest
        naive = datetime(int(day[:4]), int(day[4:6]), int(day[6:]), int(clock[:2]), int(clock[2:4]),
                         int(clock[4:]))
        return naive.astimezone(timezone.utc)  # a naive datetime is taken as local time
    except (ValueError, OverflowError, OSError):
        return None


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


# --- backup-list ------------------------------------------------------------------------------


@dataclass
class BackupList:
    backup_dir: Path
    backups: list[Entry]
    pre_restore: list[Entry]

    def to_dict(self) -> dict:
        return {
            "backups": [e.to_dict() for e in self.backups],
            "pre_restore": [e.to_dict() for e in self.pre_restore],
        }

    def text(self) -> str:
        if not self.backups and not self.pre_restore:
            return "No backups found"
        lines: list[str] = []
        if self.backups:
            lines.append(f"Backups in {self.backup_dir} (1 = newest):")
            lines += _table(self.backups)
        if self.pre_restore:
            if lines:
                lines.append("")
            lines.append("Pre-restore backups (restore them by name):")
            lines += _table(self.pre_restore)
        damaged = [e for e in self.backups + self.pre_restore if e.damaged]
        if damaged:
            lines.append("")
            lines += [f"damaged: {e.name}: {e.damaged}" for e in damaged]
            lines.append("Check them with ./sparkq.sh backup-verify --all")
        if any(e.counts_from == "live" for e in self.backups + self.pre_restore):
            lines.append("")
            lines.append("* counts from an original 2.1 manifest, read from the live database when it was copied")
        return "\n".join(lines)


_HEADER = ("#", "Name", "Format", "DB size", "yml", "Prompts", "Config", "Created", "Trigger", "Integrity")


def _table(entries: list[Entry]) -> list[str]:
    rows = [_HEADER]
    for e in entries:
        counts = e.counts
        mark = "*" if e.counts_from == "live" else ""
        integrity = "DAMAGED" if e.damaged else (e.integrity_check or "-")
        rows.append((
            str(e.number) if e.number is not None else "-",
            e.name,
            e.format,
            human_size(e.db_size),
            "yes" if e.config_file_included else "no",
            str(counts.get("prompts", "-")) + mark,
            str(counts.get("config_entries", "-")) + mark,
            e.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
            e.trigger or "-",
            integrity.splitlines()[0] if integrity else "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    right = {0, 3, 5, 6}
    return [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    ]


def list_backups(settings) -> BackupList:
    regular, pre = scan(settings.paths.backup_dir, listing_cache=settings.paths.listing_cache)
    return BackupList(settings.paths.backup_dir, regular, pre)


# --- backup-show ------------------------------------------------------------------------------


@dataclass
class ShowResult:
    entry: Entry
    files: list[dict]

    def to_dict(self) -> dict:
        e = self.entry
        out = {
            "name": e.name,
            "number": e.number,
            "kind": e.kind,
            "format": e.format,
            "path": str(e.path),
            "created_at": e.created_at.isoformat(),
            "manifest": e.raw_manifest if isinstance(e.raw_manifest, dict) else None,
            "damaged": e.damaged,
            "files": self.files,
        }
        if e.format == "legacy" or e.manifest is None or e.counts_from == "database":
            out.update(size=e.db_size, counts=e.counts, counts_from=e.counts_from, integrity_check=e.integrity_check)
        return out

    def text(self) -> str:
        e = self.entry
        d = self.to_dict()
        label = f"#{e.number} " if e.number is not None else ""
        lines = [f"Backup {label}{e.name} ({e.format}{', pre-restore' if e.kind == PRE_RESTORE else ''})",
                 f"Path: {e.path}", f"Created: {e.created_at.isoformat()}"]
        if e.damaged:
            lines.append(f"DAMAGED: {e.damaged}")
        if d["manifest"] is not None:
            lines += ["", "manifest.json:", json.dumps(d["manifest"], indent=2, ensure_ascii=False, default=str)]
        elif e.format == "legacy":
            lines.append("Legacy single-file backup: no manifest.")
        if "counts" in d:
            lines.append(f"Database: {human_size(d['size'])}; integrity: {d['integrity_check'] or '-'}")
            if d["counts"]:
                lines.append("Counts: " + ", ".join(f"{k} {v}" for k, v in d["counts"].items()))
            if e.manifest is not None:
                lines.append("(read from sparkq.db with its -wal folded in, as a restore gives it; the manifest's "
                             "counts were read from the live database)")
        lines += ["", f"Files ({len(self.files)}):"]
        width = max((len(f["path"]) for f in self.files), default=0)
        for f in self.files:
            note = " (symlink; refused)" if f.get("symlink") else ""
            lines.append(f"  {f['path'].ljust(width)}  {human_size(f['size']):>9}  ({f['size']} bytes){note}")
        return "\n".join(lines)


def show_backup(settings, ref: str) -> ShowResult:
    entry = resolve(settings, ref)
    return ShowResult(entry, _files_of(entry))


def _files_of(entry: Entry) -> list[dict]:
    """Every file of the backup with its size (lstat: symlinks are listed, never followed)."""
    if entry.format == "legacy":
        return [_file_row(p.name, p) for p in [entry.path, *entry.legacy_siblings]]
    if entry.path.is_symlink():
        return []
    rows: list[dict] = []
    for top, dirs, files in os.walk(entry.path):
        base = Path(top)
        for name in sorted(files) + sorted(d for d in dirs if (base / d).is_symlink()):
            rows.append(_file_row((base / name).relative_to(entry.path).as_posix(), base / name))
        dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
    return sorted(rows, key=lambda r: ("/" in r["path"], r["path"]))


def _file_row(rel: str, path: Path) -> dict:
    try:
        st = os.lstat(path)
    except OSError:
        return {"path": rel, "size": 0}
    row = {"path": rel, "size": st.st_size}
    if stat.S_ISLNK(st.st_mode):
        row["symlink"] = True
    return row
