"""The rules that keep the backup history: whose bundles count, when a new one is not needed,
which ones retention must spare, and making room on a full disk.

- **Project identity.** Each project has a random id beside its database
  (`sparkq/data/project_id`; `DIR/NAME-project_id` for a database `DIR/NAME.db`, so two databases
  in one folder are two projects), written into every manifest as `project_id`. It is a file,
  not a row of the database: moving the project folder keeps it, restoring another project's
  database does not turn this project into that one, and a fresh clone (a new machine) starts a
  new id unless the data dir was copied along. Pointing `database.path` elsewhere starts a new
  id too: the bundles taken before then are kept (never pruned) and a restore plan names them.
  Retention counts and prunes only bundles of this project; bundles without
  the key (the original SparkQ's, legacy files, ours from before the key) count as this one's.
- **Unchanged.** A pre-start backup whose snapshot and config files are byte-identical to the
  newest bundle of this project (which still verifies for those members) writes nothing: a
  series of starts, failed or not, cannot push good history out. The SQLite backup API gives
  byte-identical snapshots of unchanged content once the header's write counter is set to a
  fixed value (snapshot.py), so the snapshot's checksum is an exact test.
- **Restored from.** A restore notes the bundle it came from (`sparkq/data/restored_from.json`,
  beside the database the restored config uses);
  retention spares that bundle until the next restore, so the first start after restoring an
  old bundle cannot prune it.
- **Pre-restore links.** A pre-restore bundle still hard-linked to the live database gets its own
  copy before anything may write the database (unshare_pre_restore).
- **A full disk.** room_needed and free_bytes let a backup short of room prune past `keep` before
  it writes (create.py), so lowering SPARKQ_BACKUP_KEEP frees space.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from .. import log
from ..fsutil import atomic_write_bytes, sha256_file
from .layout import CONFIG_MEMBERS, DB_NAME, PRE_RESTORE_PREFIX, PROJECT_KEY, TEMPLATES_MEMBER, WAL, sidecar

# Room beside the snapshot for the exports (small tables only) and the manifest.
_SLACK = 1 << 20


# --- pre-restore bundles still linked to the live database ------------------------------------


def unshare_pre_restore(settings) -> list[str]:
    """Give every pre-restore bundle whose sparkq.db is still a hard link of the live DB its own
    copy; returns their names.

    Restore links the live DB into its pre-restore bundle instead of copying it (the server is
    down and the DB is about to be replaced by a rename). A restore that dies between the two
    leaves both names on one file, and the next write to the live DB would silently change the
    bundle (its checksum then fails). Every backup and every command that may open the DB for
    writing (start, run and restart, with or without --skip-backup, and setup) breaks such links
    first; the copy has the same bytes, so the bundle stays valid. Costs one stat unless the live
    DB has more than one link.
    """
    from ..errors import BackupFailed
    from ..fsutil import atomic_copy

    paths = settings.paths
    try:
        live = os.stat(paths.db)
        if live.st_nlink < 2:
            return []
        items = list(os.scandir(paths.backup_dir))
    except OSError:
        return []
    fixed = []
    for item in items:
        if not item.name.startswith(PRE_RESTORE_PREFIX + "_") or not item.is_dir(follow_symlinks=False):
            continue
        linked = Path(item.path) / DB_NAME
        try:
            st = os.lstat(linked)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) != (live.st_dev, live.st_ino):
            continue
        try:
            atomic_copy(linked, linked, mode=0o600)  # a new file under the same name; same bytes
        except OSError as exc:
            raise BackupFailed(f"copying the pre-restore bundle {linked} apart from the live database failed "
                               f"({exc.strerror or exc}); check free space and permissions with "
                               f"`df -h {linked.parent}` and `ls -la {linked.parent}`") from None
        fixed.append(item.name)
        log.get().warning("pre_restore_unshared", name=item.name,
                          hint="a restore was interrupted before it replaced the database")
    return fixed


# --- project identity -------------------------------------------------------------------------


def project_id(paths, *, create: bool = False) -> str | None:
    """This project's id; with `create`, make one when there is none yet."""
    path = paths.project_id_file
    found = _read_id(path)
    if found or not create:
        return found
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as out:
            os.fchmod(fd, 0o644)  # whatever the umask: readable, written by us alone
            out.write(secrets.token_hex(16) + "\n")
        try:
            os.link(tmp, path)  # never replaces: a concurrent first backup may have written one
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:  # a read-only data dir: bundles go unmarked, as before the key existed
        log.get().warning("project_id_not_written", path=str(path), error=str(exc))
        return None
    return _read_id(path)


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text and len(text) <= 64 and text.isalnum() else None


def owner(entry) -> str | None:
    """The project id a backup was taken by; None when it carries no mark."""
    value = (entry.manifest or {}).get(PROJECT_KEY)
    return value if isinstance(value, str) and value else None


def ours(entries: list, pid: str | None) -> list:
    """The backups retention may count as this project's: unmarked ones and our own."""
    return [e for e in entries if owner(e) in (None, pid)]


def origin_warnings(entry, settings) -> tuple[list[str], list[str]]:
    """(warnings, notes) for a restore plan: what it must shout about (a bundle taken by another
    project, for another database path, or on another host), and what is only worth saying.

    A recovery onto a new machine is told apart from taking another live project's files: this
    project has no id yet (no backup of its own) and the database the bundle was taken of is
    not here. Then the other project, path and host are what a recovery looks like: notes."""
    import socket

    m = entry.manifest or {}
    theirs, mine = owner(entry), project_id(settings.paths)
    db_path = (m.get("database") or {}).get("path") if isinstance(m.get("database"), dict) else None
    here = str(settings.paths.db.absolute())
    recovering = mine is None and not (isinstance(db_path, str) and db_path != here and os.path.exists(db_path))
    warnings: list[str] = []
    notes: list[str] = []
    said = notes if recovering else warnings
    if theirs is not None and recovering:
        notes.append(f"{entry.name} comes from another project folder (project_id {theirs}); this one has no "
                     "backups of its own yet, as on a new machine: its sparkq.yml and .env become this one's")
    elif theirs is not None and theirs != mine:
        warnings.append(f"{entry.name} was taken by ANOTHER PROJECT (project_id {theirs}, this "
                        f"project is {mine or 'not yet marked'}): its sparkq.yml and .env are that project's")
    if isinstance(db_path, str) and db_path != here:
        said.append(f"{entry.name} was taken of the database {db_path}, not of this project's {here}")
    host = m.get("hostname")
    if isinstance(host, str) and host and host != socket.gethostname():
        said.append(f"{entry.name} was taken on another host ({host})")
    return warnings, notes


# --- a database that cannot be SparkQ's, while backups exist ------------------------------


def refuse_unusable_db(paths) -> None:
    """A DB that is missing, empty, not SQLite, or has none of SparkQ's tables, with backups
    beside it, is an accident (deleted or truncated file, wrong database.path), not a first run:
    starting would seed an empty DB, and a backup of it would push the good ones out. Used by
    start/run/restart and by every regular backup."""
    from ..errors import SparkqError, UsageError
    from .catalog import scan

    problem = db_unusable(paths.db)
    if problem is None:
        return
    try:
        regular = ours(scan(paths.backup_dir)[0], project_id(paths))
    except (OSError, SparkqError):
        return
    if regular:
        fresh = "run ./sparkq.sh setup" if problem == "is missing" else "move it aside and run ./sparkq.sh setup"
        # In a backup dir shared with other projects, number 1 may be another project's bundle.
        ref = "1" if regular[0].number == 1 else regular[0].name
        raise UsageError(
            f"the database {paths.db} {problem} but {len(regular)} backup(s) exist; restore the newest "
            f"with ./sparkq.sh backup-restore {ref} --db-only, or {fresh} to start empty"
        )


def db_unusable(db) -> str | None:
    """Why `db` cannot be a SparkQ database (ours or the original's), or None. Only what is
    certain counts: a DB that is busy or damaged inside is left to the backup's integrity check."""
    import sqlite3

    from sparkq.schema import TABLES

    try:
        with open(db, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        return "is missing"
    except OSError:
        return None
    if not head:
        return "is empty (0 bytes)"
    if head != b"SQLite format 3\x00":
        return "is not a SQLite database"
    try:
        # A short wait: a DB held locked is in use by something, and the backup reports that.
        conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True, timeout=0.5)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        return "is not a SQLite database" if code == sqlite3.SQLITE_NOTADB else None
    if not names & set(TABLES):
        return "has none of SparkQ's tables"
    return None


# --- what a restore came from -----------------------------------------------------------------


def record_restore(paths, entry) -> None:
    """Note the bundle a restore came from, so retention spares it (best effort)."""
    blob = json.dumps({"name": entry.name}).encode() + b"\n"
    try:
        atomic_write_bytes(paths.restored_from_file, blob, mode=0o600)
    except OSError as exc:
        log.get().warning("restored_from_not_recorded", name=entry.name, error=str(exc))


def restored_from(paths) -> str | None:
    try:
        name = json.loads(paths.restored_from_file.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


# --- unchanged since the newest bundle ---------------------------------------------------------


class Unchanged(Exception):
    """The bundle about to be written would hold what `name` holds already."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def baseline(backup_dir: Path, pid: str | None, sparkq_version: str | None, backup_version: str):
    """The newest backup of this project, when it can stand in for a new one: a bundle of ours
    (same format and exports version), undamaged, integrity ok, with a checksummed database."""
    from .catalog import scan

    try:
        regular = ours(scan(backup_dir)[0], pid)
    except Exception:  # noqa: BLE001 - no baseline only means: write the bundle
        return None
    if not regular:
        return None
    newest = regular[0]
    m = newest.manifest
    if newest.format != "bundle" or m is None or newest.damaged or m.get("integrity_check") != "ok":
        return None
    if m.get("backup_version") != backup_version or m.get("sparkq_version") != sparkq_version:
        return None
    if not isinstance((m.get("checksums") or {}).get(DB_NAME), str):
        return None
    try:
        if newest.wal_file is not None:  # an older shape: its database is not the snapshot alone
            return None
    except Exception:  # noqa: BLE001 - a symlinked -wal and the like: not a baseline
        return None
    return newest


def check_unchanged(base, snapshot: Path, members: dict[str, Path]) -> str:
    """Raise Unchanged when the snapshot and the config `members` (bundle name -> source file)
    equal `base` byte for byte, and `base`'s own copies still match its checksums. Otherwise
    return the snapshot's sha256, which the caller reuses."""
    import threading

    sums = base.manifest["checksums"]
    box: dict = {}
    # Hash the bundle's database while hashing the snapshot: a bundle damaged on disk since it
    # was written must not stand in for a new one.
    worker = threading.Thread(target=lambda: box.update(base=_member_sha(base, DB_NAME)), daemon=True)
    worker.start()
    snap = sha256_file(snapshot)
    worker.join()
    if snap != sums[DB_NAME] or box.get("base") != snap:
        return snap
    kept = {k for k in sums if k in CONFIG_MEMBERS or k.startswith(TEMPLATES_MEMBER + "/")}
    if set(members) != kept:
        return snap
    for rel, src in members.items():
        if _sha_or_none(src) != sums[rel] or _member_sha(base, rel) != sums[rel]:
            return snap
    # The rest (the exports, small) is derived from the database, but must still be whole on
    # disk: the bundle that stands in for this state has to pass backup-verify.
    for rel in set(sums) - kept - {DB_NAME}:
        if _member_sha(base, rel) != sums[rel]:
            return snap
    raise Unchanged(base.name)


def _member_sha(entry, rel: str) -> str | None:
    try:
        return _sha_or_none(entry.member(rel))
    except Exception:  # noqa: BLE001 - a symlinked or missing member: not the same
        return None


def _sha_or_none(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return sha256_file(path)
    except Exception:  # noqa: BLE001 - unreadable means: not the same
        return None


# --- a full disk ------------------------------------------------------------------------------


def room_needed(paths, members: dict[str, Path]) -> int:
    """A generous estimate of a new bundle's size: the database (and its WAL), the config files,
    and slack for the exports and manifest."""
    total = _SLACK
    for p in (paths.db, sidecar(paths.db, WAL), *members.values()):
        try:
            total += os.stat(p).st_size
        except OSError:
            pass
    return total


def free_bytes(backup_dir: Path) -> int | None:
    try:
        return shutil.disk_usage(backup_dir).free
    except OSError:
        return None
