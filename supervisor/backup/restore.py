"""`backup-restore`: put a backup (or parts of it) back in place, keeping the current state first.

The order matters, and every step before the pre-restore bundle can stop the whole restore with
nothing touched: refuse while the database is in use -> resolve the backup and check the scope
against it -> verify it -> show the plan and ask -> save the current state as a
`sparkq_preRestore_*` bundle -> place each file by temp copy + fsync + rename (database first,
then sparkq.yml, then .env). A crash at any moment leaves each target whole, old or new, and a
failure while placing puts back what was already placed. `--tables` instead merges rows of the
backup's configuration tables into the live database in one transaction.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from sparkq import storage

from .. import log
from ..errors import InUse, SparkqError, UsageError, VerificationFailed
from ..interrupts import sigterm_unwinds
from .catalog import resolve
from . import history
from .create import unshare_pre_restore
from ..fsutil import atomic_copy, fsync_dir, fsync_file, private_mkdir, remove_stale_temps, temp_name

SCOPES = ("full", "db", "config", "yml", "env", "templates")
# Tables `--tables` may merge, in the order they are merged: task classes before the tools that
# point at them. Work data (sessions, queues, tasks, audit_log) is never merged.
MERGE_TABLES = ("config", "prompts", "agent_roles", "task_classes", "tools", "projects")
PRE_RESTORE_PREFIX = "sparkq_preRestore"
TEMPLATES_MEMBER = "setup_templates"

# SQLite's lock bytes in the main database file (see sqlite's os_unix.c): a process with the
# database open holds a lock in this range (WAL mode: a shared lock for as long as it is open).
_LOCK_START = 0x40000000
_LOCK_LEN = 512

_SCOPE_FLAG = {
    "full": "",
    "db": " --db-only",
    "config": " --config-only",
    "yml": " --only yml",
    "env": " --only env",
    "templates": " --only templates",
}


@dataclass
class Step:
    """One file to place: `source` in the backup -> `target` in the project."""

    kind: str  # db | yml | env | template
    source: Path
    target: Path
    wal: Path | None = None  # a 2.1 bundle's sparkq.db-wal, folded into the DB before placing

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": str(self.source), "target": str(self.target),
                "wal": str(self.wal) if self.wal else None}


@dataclass
class Plan:
    backup: str
    number: int | None
    created_at: str
    format: str
    scope: str
    tables: list[str] | None
    steps: list[Step]
    pre_restore: str  # where the pre-restore bundle goes; its exact name is known once written
    pre_restore_db: str  # "hard link" | "snapshot" | "none"
    counts_backup: dict | None = None
    counts_now: dict | str | None = None  # a str says why the current DB could not be counted
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["steps"] = [s.to_dict() for s in self.steps]
        return data

    def text(self) -> str:
        which = f"backup {self.number} ({self.backup})" if self.number else self.backup
        lines = [f"Restore plan: {which}, {self.format}, created {self.created_at}"]
        if self.tables:
            lines.append(f"  merge tables {', '.join(self.tables)} from the backup's sparkq.db into the "
                         "current database (insert or replace by key; nothing is deleted; tasks, "
                         "sessions and queues stay as they are)")
        width = max((len(_label(s)) for s in self.steps), default=0)
        for step in self.steps:
            extra = "  (with its -wal folded in)" if step.wal else ""
            lines.append(f"  {_label(step):<{width}}  ->  {step.target}{extra}")
        if self.counts_backup is not None and (self.tables or any(s.kind == "db" for s in self.steps)):
            lines.extend(_counts_table(self.counts_backup, self.counts_now))
        how = {"hard link": "database hard-linked, not copied", "snapshot": "database snapshot",
               "none": "there is no current database"}[self.pre_restore_db]
        lines.append(f"Before that, the current state is saved as {self.pre_restore} ({how}).")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class RestoreResult:
    backup: str
    scope: str
    tables: list[str] | None
    restored: list[dict]
    merged: dict[str, dict]
    pre_restore: str
    pre_restore_path: str
    undo: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = []
        if self.merged:
            lines.append(f"Merged from {self.backup} into the current database:")
            for table, info in self.merged.items():
                lines.append(f"  {table}: {info['rows']} rows from the backup written, "
                             f"{info['added']} of them new")
        else:
            lines.append(f"Restored from {self.backup}:")
            for item in self.restored:
                lines.append(f"  {item['source']} -> {item['target']}")
        lines.append(f"The previous state is kept in {self.pre_restore}")
        lines.append(f"  undo: {self.undo}")
        lines.extend(f"Note: {note}" for note in self.notes)
        lines.append("Restore complete. Start the server: ./sparkq.sh start")
        return "\n".join(lines)


def restore_backup(
    settings,
    ref: str,
    *,
    scope: str = "full",
    tables: list[str] | None = None,
    confirm: Callable[[Plan], bool],
) -> RestoreResult:
    """Restore `ref` (a backup-list number or a backup name). See the module docstring."""
    from ..locking import supervisor_lock

    if scope not in SCOPES:
        raise UsageError(f"unknown restore scope {scope!r}; use one of {', '.join(SCOPES)}")
    if tables is not None:
        tables = _check_tables(tables)
    paths = settings.paths
    with supervisor_lock(paths.lockfile):
        _refuse_if_in_use(paths)
        unshare_pre_restore(settings)  # an earlier restore killed mid-way may have left a link
        entry = resolve(settings, ref)
        steps, notes = ([], []) if tables else _steps(entry, scope, paths)
        if tables and entry.db_file is None:
            raise UsageError(f"backup {entry.name} has no sparkq.db to merge tables from; pick another backup")
        _verify(entry)
        notes = [*history.origin_warnings(entry, settings), *notes]  # another project, DB path or host
        plan = _plan(entry, scope, tables, steps, notes, paths)
        if not confirm(plan):
            raise SparkqError("restore cancelled; nothing changed")
        log.get().info("restore_started", backup=entry.name, scope=scope, tables=tables,
                       targets=[s.target.name for s in steps])
        result = _merge(settings, entry, tables, plan) if tables else _place_all(settings, entry, scope, steps, plan)
        history.record_restore(paths, entry)  # retention spares the bundle restored from
        return result


# --- step 1: refuse while the database is in use ---------------------------------------------


def _refuse_if_in_use(paths) -> None:
    from .. import process

    info = process.server_alive(paths)
    if info is not None:
        raise InUse(f"the server is running (PID {info.pid}); stop it first: ./sparkq.sh stop")
    holder = _db_holder(paths.db)
    if holder is not None:
        who = f" (PID {holder})" if holder > 0 else ""
        raise InUse(f"another process{who} is using {paths.db}; stop it first: ./sparkq.sh stop")


def _db_holder(db: Path) -> int | None:
    """The PID of a process that has `db` open (0 when unknown), or None; changes nothing.

    First ask the kernel whether anyone holds SQLite's lock bytes (this also sees an idle
    connection to a WAL database, which keeps a shared lock while open). Then, as SQLite itself
    would, try `BEGIN EXCLUSIVE` without waiting. That probe is skipped when a non-empty -wal
    lies beside the DB: closing our connection would fold it in and change the file.
    """
    import fcntl
    import struct

    if not db.exists():
        return None
    try:
        fd = os.open(db, os.O_RDONLY)
    except OSError:
        return None
    try:
        req = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, _LOCK_START, _LOCK_LEN, 0)
        kind, _whence, _start, _len, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, req))
        if kind != fcntl.F_UNLCK:
            return pid
    except OSError:
        pass  # no POSIX locks here (some network filesystems): rely on the probe below
    finally:
        os.close(fd)
    wal = _sidecar(db, "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return None
    try:
        conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if storage.is_busy(exc):
            return 0
    except sqlite3.DatabaseError:
        pass  # not a database (corrupt): nobody can be using it; the restore may replace it
    finally:
        conn.close()
    return None


# --- step 2: resolve the backup, match the scope against what it holds -----------------------


def _check_tables(tables: list[str]) -> list[str]:
    wanted = [t.strip().replace("-", "_") for t in tables if t.strip()]
    if not wanted:
        raise UsageError(f"--tables needs table names; allowed: {', '.join(MERGE_TABLES)}")
    unknown = [t for t in wanted if t not in MERGE_TABLES]
    if unknown:
        raise UsageError(f"cannot merge table(s) {', '.join(unknown)}; allowed: {', '.join(MERGE_TABLES)}")
    return [t for t in MERGE_TABLES if t in wanted]


def _steps(entry, scope: str, paths) -> tuple[list[Step], list[str]]:
    """The files to place for `scope`, in placement order; UsageError when the backup lacks them."""
    steps: list[Step] = []
    notes: list[str] = []
    legacy = entry.format == "legacy"
    if scope in ("full", "db"):
        db = entry.db_file
        if db is None:
            raise UsageError(f"backup {entry.name} has no sparkq.db; restore its config with --config-only")
        steps.append(Step("db", db, paths.db, wal=None if legacy else entry.wal_file))
    if scope in ("full", "config", "yml"):
        yml = entry.legacy_yml if legacy else entry.member("sparkq.yml")
        if yml is not None:
            steps.append(Step("yml", yml, paths.config_file))
        elif scope == "yml" or (scope == "config" and legacy):
            if legacy:
                raise UsageError(f"legacy backup {entry.name} has no sparkq.yml; use --db-only")
            raise UsageError(f"backup {entry.name} has no sparkq.yml; pick another backup (see backup-list)")
        else:
            notes.append(f"the backup has no sparkq.yml; the current {paths.config_file.name} stays")
    if scope in ("full", "config", "env"):
        env = None if legacy else entry.member(".env")
        if env is not None:
            steps.append(Step("env", env, paths.env_file))
        elif scope == "env":
            kind = "legacy backup" if legacy else "backup"
            raise UsageError(f"{kind} {entry.name} has no .env; pick a backup that has one (see backup-show)")
        elif scope == "config" and not any(s.kind == "yml" for s in steps):
            raise UsageError(f"backup {entry.name} has neither sparkq.yml nor .env; use --db-only")
        else:
            notes.append("the backup has no .env; the current .env stays")
    if scope == "templates":
        if legacy:
            raise UsageError(f"legacy backup {entry.name} has no setup templates; use --db-only")
        folder = entry.path / TEMPLATES_MEMBER
        if folder.is_symlink():
            raise VerificationFailed(f"{entry.name}/{TEMPLATES_MEMBER} is a symlink; refusing it (pick another backup)")
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        for name in names:
            member = entry.member(f"{TEMPLATES_MEMBER}/{name}")
            if member is not None:
                steps.append(Step("template", member, paths.templates_dir / name))
        if not steps:
            raise UsageError(f"backup {entry.name} has no setup_templates; pick another backup")
    return steps, notes


# --- step 3: verify ---------------------------------------------------------------------------


def _verify(entry) -> None:
    from . import verify

    problems = verify.verify_entry(entry)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationFailed(
            f"backup {entry.name} failed verification: {problems[0]}{more}; nothing was changed; "
            "restore an older backup (see ./sparkq.sh backup-verify --all)"
        )


# --- step 4: the plan -------------------------------------------------------------------------


def _plan(entry, scope, tables, steps, notes, paths) -> Plan:
    replaces_db = any(s.kind == "db" for s in steps)
    if not paths.db.exists():
        how = "none"
    else:
        how = "hard link" if replaces_db else "snapshot"
    shows_counts = bool(tables) or replaces_db
    counts_backup = counts_now = None
    if shows_counts:
        counts_backup = entry.counts or None
        if not counts_backup:
            got = _counts(entry.db_file, None if entry.format == "legacy" else entry.wal_file)
            counts_backup = got if isinstance(got, dict) else None
        counts_now = _counts(paths.db, _sidecar(paths.db, "-wal")) if paths.db.exists() else "no database yet"
    created = entry.created_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Plan(
        backup=entry.name,
        number=entry.number,
        created_at=created,
        format=entry.format,
        scope=scope,
        tables=tables,
        steps=steps,
        # The name carries the time of writing, after the answer: say the pattern, not a guess.
        pre_restore=f"a new {PRE_RESTORE_PREFIX}_YYYYMMDD_HHMMSS bundle in {paths.backup_dir}",
        pre_restore_db=how,
        counts_backup=counts_backup,
        counts_now=counts_now,
        notes=list(notes),
    )


def _counts(db: Path | None, wal: Path | None) -> dict | str:
    """Row counts of `db` (with `wal` folded in when non-empty), read without changing either."""
    from sparkq import storage

    from .catalog import open_backup_db

    if db is None:
        return "no database"
    try:
        wal = wal if wal is not None and wal.exists() and wal.stat().st_size > 0 else None
        with open_backup_db(db, wal) as conn:
            return storage.counts(conn)
    except (sqlite3.Error, OSError) as exc:
        return f"unreadable ({exc})"


def _counts_table(backup: dict, now: dict | str | None) -> list[str]:
    lines = [f"  {'rows':<15}{'backup':>8}{'now':>8}"]
    for key, value in backup.items():
        current = now.get(key, "-") if isinstance(now, dict) else "-"
        lines.append(f"  {key:<15}{value:>8}{current:>8}")
    if isinstance(now, str):
        lines.append(f"  (current database: {now})")
    return lines


# --- step 5: keep the current state -----------------------------------------------------------


def _pre_restore(settings, *, replaces_db: bool) -> tuple[Path, list[str]]:
    """Write the sparkq_preRestore_* bundle; for a DB swap, first make the live DB stand alone."""
    from . import create

    notes: list[str] = []
    db = settings.paths.db
    link = replaces_db and db.exists()
    if link:
        problem = _checkpoint(db)
        if problem:
            notes.append(f"the current database could not be checkpointed ({problem}); "
                         "it is kept as it was in the pre-restore bundle")
    path = create.write_bundle(settings, trigger="pre-restore", prefix=PRE_RESTORE_PREFIX,
                               link_db=link)
    return Path(path), notes


def _checkpoint(db: Path) -> str | None:
    """Fold the WAL of the (unused) live DB into it and close; returns a problem or None."""
    try:
        conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("PRAGMA busy_timeout=0")
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if storage.is_busy(exc):
            raise InUse(f"another process is using {db}; stop it first: ./sparkq.sh stop") from None
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    if busy:
        raise InUse(f"another process is using {db}; stop it first: ./sparkq.sh stop")
    return None


# --- step 6: placing files --------------------------------------------------------------------


def _place_all(settings, entry, scope: str, steps: list[Step], plan: Plan) -> RestoreResult:
    paths = settings.paths
    replaces_db = any(s.kind == "db" for s in steps)
    pre_path, notes = _pre_restore(settings, replaces_db=replaces_db)
    placed: list[Step] = []
    try:
        with sigterm_unwinds():
            for step in steps:
                _place(step, paths)
                placed.append(step)
    except BaseException as exc:  # Ctrl-C (and SIGTERM, see the CLI) roll back too
        _roll_back(placed, pre_path, paths)
        unshare_pre_restore(settings)  # the DB was not replaced: it may still be linked into pre_path
        log.get().error("restore_failed", backup=entry.name, target=str(step.target), error=str(exc))
        if not isinstance(exc, Exception):
            raise
        raise SparkqError(
            f"restore failed placing {step.target} ({exc}); what was already placed is back as it was "
            f"(the previous state is also in {pre_path.name}); check free space and permissions, then retry"
        ) from exc
    restored = [{"source": _label(s), "target": str(s.target)} for s in steps]
    undo = f"./sparkq.sh backup-restore {pre_path.name}{_SCOPE_FLAG[scope]} --yes"
    log.get().info("restore_done", backup=entry.name, scope=scope, pre_restore=pre_path.name,
                   targets=[s.target.name for s in steps])
    return RestoreResult(backup=entry.name, scope=scope, tables=None, restored=restored, merged={},
                         pre_restore=pre_path.name, pre_restore_path=str(pre_path), undo=undo,
                         notes=plan.notes + notes)


def _place(step: Step, paths) -> None:
    target = step.target
    target.parent.mkdir(parents=True, exist_ok=True)
    if step.kind == "db":
        mode = _mode(target, 0o600)
        # The new file must never meet the old DB's WAL: after the checkpoint it is empty, so
        # removing it before the rename loses nothing, and a crash in between leaves the old DB whole.
        for suffix in ("-wal", "-shm", "-journal"):
            _sidecar(target, suffix).unlink(missing_ok=True)
        if step.wal is not None and step.wal.stat().st_size > 0:
            _place_folded(step.source, step.wal, target, mode)
        else:
            atomic_copy(step.source, target, mode=mode)
    elif step.kind == "env":
        atomic_copy(step.source, target, mode=0o600)
    else:
        atomic_copy(step.source, target, mode=_mode(target, 0o644))


def _place_folded(db: Path, wal: Path, target: Path, mode: int) -> None:
    """A 2.1 bundle's DB + WAL: fold them together in a temp dir beside `target`, then rename."""
    remove_stale_temps(target)  # a killed earlier restore's work dir
    work = temp_name(target)
    shutil.rmtree(work, ignore_errors=True)
    private_mkdir(work)
    try:
        folded = _fold_copy(db, wal, work)
        os.chmod(folded, mode)
        os.replace(folded, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fold_copy(db: Path, wal: Path, work: Path) -> Path:
    """Copy `db` and its `wal` into `work`, checkpoint them into one stand-alone file, fsync it."""
    out = work / "sparkq.db"
    shutil.copyfile(db, out)
    shutil.copyfile(wal, _sidecar(out, "-wal"))
    conn = sqlite3.connect(out, timeout=0, isolation_level=None)
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            raise sqlite3.OperationalError("could not fold the -wal into the database")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        _sidecar(out, suffix).unlink(missing_ok=True)
    fsync_file(out)
    return out


def _roll_back(placed: list[Step], pre_path: Path, paths) -> None:
    """Put back every target already replaced, from the pre-restore bundle (or remove it)."""
    for step in reversed(placed):
        name = {"db": "sparkq.db", "yml": "sparkq.yml", "env": ".env"}.get(
            step.kind, f"{TEMPLATES_MEMBER}/{step.target.name}")
        saved = pre_path / name
        try:
            if step.kind == "db":
                for suffix in ("-wal", "-shm"):
                    _sidecar(step.target, suffix).unlink(missing_ok=True)
            if saved.is_file() and not saved.is_symlink():
                atomic_copy(saved, step.target, mode=_mode(step.target, 0o600))
            else:
                step.target.unlink(missing_ok=True)
                fsync_dir(step.target.parent)
        except OSError as exc:
            log.get().error("restore_rollback_failed", target=str(step.target), error=str(exc))


# --- step 7: --tables merge -------------------------------------------------------------------


def _merge(settings, entry, tables: list[str], plan: Plan) -> RestoreResult:
    paths = settings.paths
    if not paths.db.exists():
        raise UsageError(f"there is no current database at {paths.db} to merge into; "
                         "restore the whole database instead (--db-only)")
    pre_path, notes = _pre_restore(settings, replaces_db=False)
    merged: dict[str, dict] = {}
    wal = None if entry.format == "legacy" else entry.wal_file
    with tempfile.TemporaryDirectory(prefix="sparkq-merge-") as tmp:
        source = entry.db_file
        if wal is not None and wal.stat().st_size > 0:
            source = _fold_copy(source, wal, Path(tmp))
        # A URI main connection, so that ATTACH reads the next URI as one on every SQLite build.
        conn = sqlite3.connect(paths.db.absolute().as_uri(), timeout=5, isolation_level=None, uri=True)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("ATTACH DATABASE ? AS bk", (_ro_uri(source),))
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("PRAGMA defer_foreign_keys=ON")  # checked once, at COMMIT
                for table in tables:
                    merged[table] = _merge_table(conn, table, notes)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SparkqError(f"merging tables from {entry.name} failed ({exc}); the database is unchanged "
                              f"(its previous state is also in {pre_path.name})") from None
        finally:
            conn.close()
    undo = f"./sparkq.sh backup-restore {pre_path.name} --db-only --yes"
    log.get().info("restore_done", backup=entry.name, scope="tables", tables=tables, pre_restore=pre_path.name)
    return RestoreResult(backup=entry.name, scope="tables", tables=tables, restored=[], merged=merged,
                         pre_restore=pre_path.name, pre_restore_path=str(pre_path), undo=undo,
                         notes=plan.notes + notes)


def _merge_table(conn: sqlite3.Connection, table: str, notes: list[str]) -> dict:
    live_cols = [r[1] for r in conn.execute(f'PRAGMA main.table_info("{table}")')]
    backup_cols = {r[1] for r in conn.execute(f'PRAGMA bk.table_info("{table}")')}
    if not live_cols or not backup_cols:
        where = "backup" if not backup_cols else "current database"
        notes.append(f"table {table} is missing from the {where}; skipped")
        return {"rows": 0, "added": 0}
    cols = ", ".join(f'"{c}"' for c in live_cols if c in backup_cols)
    before = conn.execute(f'SELECT count(*) FROM main."{table}"').fetchone()[0]
    rows = conn.execute(f'SELECT count(*) FROM bk."{table}"').fetchone()[0]
    conn.execute(f'INSERT OR REPLACE INTO main."{table}" ({cols}) SELECT {cols} FROM bk."{table}"')
    after = conn.execute(f'SELECT count(*) FROM main."{table}"').fetchone()[0]
    return {"rows": rows, "added": max(after - before, 0)}


# --- small helpers ----------------------------------------------------------------------------


def _label(step: Step) -> str:
    """The source as the user sees it in the backup: a bundle member name or the legacy file."""
    if step.kind == "template":
        return f"{TEMPLATES_MEMBER}/{step.source.name}"
    return step.source.name


def _sidecar(db: Path, suffix: str) -> Path:
    return db.with_name(db.name + suffix)


def _mode(path: Path, default: int) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return default


def _ro_uri(path: Path) -> str:
    """Read-only, no locks, no -wal/-shm created: only for files nobody else writes."""
    return f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
