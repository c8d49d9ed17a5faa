"""`backup-restore`: put a backup (or parts of it) back in place, keeping the current state first.

The order matters, and every step before the pre-restore bundle can stop the whole restore with
nothing touched: refuse while the database is in use -> resolve the backup and check the scope
against it -> verify what the scope restores -> show the plan and ask -> take the supervisor lock
and check that nothing changed since the plan was shown -> save the current state as a
`sparkq_preRestore_*` bundle -> place each file by temp copy + fsync + rename (database first,
then sparkq.yml, then .env). A crash at any moment leaves each target whole, old or new, and a
failure or Ctrl-C while placing puts back what was already placed. `--tables` instead merges
rows of the backup's configuration tables into the live database (merge.py).

The lock is taken only after the answer: a prompt left open must not block stop, start or backup.

Targets are the files the configured paths lead to: a `sparkq.yml`, `.env` or database path that
is a symlink stays a link, and the restored file lands where it points.
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

from sparkq import storage

from .. import log
from ..errors import InUse, Interrupted, SparkqError, UsageError, VerificationFailed
from ..interrupts import sigterm_unwinds
from .catalog import resolve
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
    target: Path  # the real file: a configured path that is a symlink is followed
    wal: Path | None = None  # a 2.1 bundle's sparkq.db-wal, folded into the DB before placing
    mode: int = 0o600  # the mode the placed file gets: the current file's, read before anything changes
    link: Path | None = None  # the configured path when it is a symlink to `target`

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": str(self.source), "target": str(self.target),
                "wal": str(self.wal) if self.wal else None, "mode": oct(self.mode),
                "link": str(self.link) if self.link else None}


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
    pre_restore_db: str  # "hard link" | "copy" | "snapshot" | "none"
    counts_backup: dict | None = None
    counts_now: dict | str | None = None  # a str says why the current DB could not be counted
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown first, before the question
    merge_rule: str | None = None
    # What the plan was made from (stat of every file involved); checked again under the lock.
    fingerprint: tuple = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("fingerprint")
        data["steps"] = [s.to_dict() for s in self.steps]
        return data

    def text(self) -> str:
        which = f"backup {self.number} ({self.backup})" if self.number else self.backup
        lines = [f"Restore plan: {which}, {self.format}, created {self.created_at}"]
        lines.extend(f"WARNING: {warning}" for warning in self.warnings)
        if self.tables:
            lines.append(f"  merge tables {', '.join(self.tables)} from the backup's sparkq.db into the "
                         "current database (tasks, sessions and queues stay as they are)")
            lines.append(f"  rule: {self.merge_rule}")
        width = max((len(_label(s)) for s in self.steps), default=0)
        for step in self.steps:
            extra = "  (with its -wal folded in)" if step.wal else ""
            via = f"  (through the symlink {step.link})" if step.link else ""
            lines.append(f"  {_label(step):<{width}}  ->  {step.target}{via}{extra}")
        if self.counts_backup is not None and (self.tables or any(s.kind == "db" for s in self.steps)):
            lines.extend(_counts_table(self.counts_backup, self.counts_now))
        how = {"hard link": "database hard-linked, not copied",
               "copy": "database copied: the backup dir is on another filesystem, so it cannot be hard-linked",
               "snapshot": "database snapshot",
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
    pre_restore_db: str = "none"  # what really happened: "hard link" | "copy" | "snapshot" | "none"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        from .merge import SHOWN_SKIPS

        lines = []
        if self.merged:
            lines.append(f"Merged from {self.backup} into the current database:")
            for table, info in self.merged.items():
                if info.get("note"):
                    lines.append(f"  {table}: {info['note']}")
                    continue
                lines.append(f"  {table}: {info['rows']} rows in the backup: {info['written']} written "
                             f"({info['added']} of them new), {info['skipped']} skipped")
                for skip in info["skipped_rows"][:SHOWN_SKIPS]:
                    key = ", ".join(f"{k}={v}" for k, v in skip["key"].items())
                    lines.append(f"    skipped {key}: {skip['reason']}; the live row is kept")
                if info["skipped"] > SHOWN_SKIPS:
                    lines.append(f"    ... and {info['skipped'] - SHOWN_SKIPS} more (see --json)")
        else:
            lines.append(f"Restored from {self.backup}:")
            for item in self.restored:
                lines.append(f"  {item['source']} -> {item['target']}")
        how = {"hard link": " (database hard-linked)", "copy": " (database copied, not hard-linked)",
               "snapshot": " (database snapshot)"}.get(self.pre_restore_db, "")
        lines.append(f"The previous state is kept in {self.pre_restore}{how}")
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
    _unshare_first(settings)
    entry, plan = _prepare(settings, ref, scope, tables)
    if not confirm(plan):
        raise SparkqError("restore cancelled; nothing changed")
    with supervisor_lock(paths.lockfile):
        # The answer may have come minutes later: what the plan showed must still be so.
        _refuse_if_in_use(paths, plan.steps)
        if _fingerprint(entry, plan.steps, paths) != plan.fingerprint:
            raise SparkqError(f"the backup {entry.name} or the current files changed while the plan was shown; "
                              "nothing was changed; run the restore again to see a new plan")
        unshare_pre_restore(settings)  # an earlier restore killed mid-way may have left a link
        log.get().info("restore_started", backup=entry.name, scope=scope, tables=tables,
                       targets=[s.target.name for s in plan.steps])
        try:
            if tables:
                return _merge(settings, entry, tables, plan)
            return _place_all(settings, entry, scope, plan)
        except KeyboardInterrupt:
            # While the pre-restore bundle was written: say so in one line, not a trace.
            _remove_own_temps(paths.backup_dir)
            log.get().info("restore_interrupted", backup=entry.name)
            raise Interrupted("restore interrupted; nothing was changed (a half-written pre-restore "
                              "bundle is removed); run it again when ready") from None


def _remove_own_temps(backup_dir: Path) -> None:
    """Remove the half-written bundle an interrupt left (the signal can land between creating
    its temp dir and the code that would clean it up); only this process's, by its PID suffix."""
    suffix = f"-{os.getpid()}"
    try:
        names = os.listdir(backup_dir)
    except OSError:
        return
    for name in names:
        if name.startswith(f".tmp-{PRE_RESTORE_PREFIX}_") and name.endswith(suffix):
            shutil.rmtree(backup_dir / name, ignore_errors=True)


def _unshare_first(settings) -> None:
    """Copy apart pre-restore bundles still linked to the live DB before planning (rarely needed,
    so the shared lock is taken only then): the plan's fingerprint must not change under it."""
    from ..locking import supervisor_lock

    try:
        if os.stat(settings.paths.db).st_nlink < 2:
            return
    except OSError:
        return
    with supervisor_lock(settings.paths.lockfile, shared=True):
        unshare_pre_restore(settings)


def _prepare(settings, ref: str, scope: str, tables: list[str] | None):
    """Everything that only reads: refusals, the backup, its verification, the plan."""
    paths = settings.paths
    _refuse_if_in_use(paths, [])
    entry = resolve(settings, ref)
    if tables and entry.db_file is None:
        raise UsageError(f"backup {entry.name} has no sparkq.db to merge tables from; pick another backup")
    steps, notes, warnings = ([], [], []) if tables else _steps(entry, scope, paths)
    notes += _verify(entry, scope, tables, steps)
    plan = _plan(entry, scope, tables, steps, notes, paths)
    plan.warnings = warnings
    _refuse_if_in_use(paths, steps)  # a target the restored config moves the DB to
    plan.fingerprint = _fingerprint(entry, steps, paths)
    return entry, plan


# --- step 1: refuse while the database is in use ---------------------------------------------


def _refuse_if_in_use(paths, steps: list[Step]) -> None:
    from .. import process
    from ..locking import describe_pid

    info = process.server_alive(paths)
    if info is not None:
        raise InUse(f"the server is running (PID {info.pid}); stop it first: ./sparkq.sh stop")
    dbs = dict.fromkeys([_real(paths.db)] + [s.target for s in steps if s.kind == "db"])
    for db in dbs:
        holder = _db_holder(db)
        if holder is None:
            continue
        if holder > 0:
            # Not our server (that was asked above): ./sparkq.sh stop would not end it.
            raise InUse(f"another process ({describe_pid(holder)}) is using {db}; it is not the SparkQ "
                        f"server, so ./sparkq.sh stop cannot end it: close that program (or kill {holder}), "
                        "then retry")
        raise InUse(f"another process is using {db} (its PID could not be found); close the program "
                    f"that has it open (`fuser -v {db}` names it), then retry")


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


def _steps(entry, scope: str, paths) -> tuple[list[Step], list[str], list[str]]:
    """(files to place for `scope` in placement order, notes, warnings); UsageError when the
    backup lacks what the scope asks for."""
    steps: list[Step] = []
    notes: list[str] = []
    warnings: list[str] = []
    legacy = entry.format == "legacy"
    yml = None
    if scope in ("full", "config", "yml"):
        yml = entry.legacy_yml if legacy else entry.member("sparkq.yml")
        if yml is None and (scope == "yml" or (scope == "config" and legacy)):
            if legacy:
                raise UsageError(f"legacy backup {entry.name} has no sparkq.yml; use --db-only")
            raise UsageError(f"backup {entry.name} has no sparkq.yml; pick another backup (see backup-list)")
        if yml is None:
            notes.append(f"the backup has no sparkq.yml; the current {paths.config_file.name} stays")
    db_target = paths.db
    if yml is not None:
        db_target = _restored_config(yml, paths, scope, notes, warnings) or paths.db
    if scope in ("full", "db"):
        db = entry.db_file
        if db is None:
            raise UsageError(f"backup {entry.name} has no sparkq.db; restore its config with --config-only")
        steps.append(_step("db", db, db_target, 0o600, wal=None if legacy else entry.wal_file))
    if yml is not None:
        steps.append(_step("yml", yml, paths.config_file, 0o644))
    if scope in ("full", "config", "env"):
        env = None if legacy else entry.member(".env")
        if env is not None:
            step = _step("env", env, paths.env_file, 0o600)
            step.mode = 0o600  # it holds secrets, whatever mode the current one has
            steps.append(step)
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
                steps.append(_step("template", member, paths.templates_dir / name, 0o644))
        if not steps:
            raise UsageError(f"backup {entry.name} has no setup_templates; pick another backup")
    return steps, notes, warnings


def _step(kind: str, source: Path, configured: Path, default_mode: int, wal: Path | None = None) -> Step:
    target = _real(configured)
    link = configured if os.path.islink(configured) else None
    return Step(kind, source, target, wal=wal, mode=_mode(target, default_mode), link=link)


def _restored_config(yml: Path, paths, scope: str, notes: list[str], warnings: list[str]) -> Path | None:
    """What the bundled sparkq.yml changes for the next start: the database it will look for
    (returned when it differs from the current one) and a wildcard bind (a warning)."""
    from .. import config
    from ..errors import ConfigError

    try:
        # The same reading and path rules as `config.load`, with the restored file in place.
        values, _ = config._validate(yml, config._read_yaml(yml))
    except ConfigError as exc:
        notes.append(f"the backup's sparkq.yml does not load ({exc}); after the restore, commands fall "
                     "back to the default paths until it is fixed")
        return None
    restored = config._build(paths.root, paths.config_file, values, [])
    host = str(values.get("server.host", "127.0.0.1"))
    if host.strip("[]") in config.WILDCARD_HOSTS:
        warnings.append(f"the backup's sparkq.yml binds server.host {host!r} (every network interface): "
                        "once restored, the API is reachable from other machines; set server.host: "
                        "127.0.0.1 in sparkq.yml after the restore unless that is what you want")
    if _real(restored.paths.backup_dir) != _real(paths.backup_dir):
        notes.append(f"the backup's sparkq.yml sets backup.dir to {restored.paths.backup_dir} "
                     f"(now {paths.backup_dir}); the pre-restore bundle is written to the current one")
    new_db, now_db = restored.paths.db, paths.db
    if _real(new_db) == _real(now_db):
        return None
    if scope != "full":
        there = "" if new_db.exists() else (
            "; there is no database there yet: restore one with --db-only after this")
        notes.append(f"the backup's sparkq.yml sets database.path to {new_db} (now {now_db}); "
                     f"after this restore the server uses {new_db}{there}")
        return None
    if os.path.lexists(new_db):
        raise UsageError(
            f"the backup's sparkq.yml puts the database at {new_db}, but this project's is at {now_db} and "
            f"{new_db} already exists; nothing was changed; move {new_db} aside and retry, or restore "
            "with --db-only to keep the database where it is"
        )
    notes.append(f"the backup's sparkq.yml sets database.path to {new_db} (now {now_db}): the database "
                 f"is restored to {new_db}, where the restored config looks for it; {now_db} stays as it is")
    return new_db


# --- step 3: verify ---------------------------------------------------------------------------


def _verify(entry, scope: str, tables, steps: list[Step]) -> list[str]:
    """Verify what this restore reads; returns notes saying what was left unchecked.

    A restore of the database checks the whole backup. A scope without it (--config-only,
    --only yml/env/templates) checks only the members it places: a backup whose database is
    damaged (the original SparkQ then wrote a manifest that is not even JSON) can still give
    back its intact sparkq.yml and .env.
    """
    from . import verify

    if tables or scope in ("full", "db"):
        _raise_if(entry, verify.verify_entry(entry))
        return []
    manifest = entry.manifest or {}
    checksums = manifest.get("checksums") or {}
    members = [s.source.relative_to(entry.path).as_posix() for s in steps] if entry.format == "bundle" else []
    _raise_if(entry, verify._check_checksums(entry, {m: checksums[m] for m in members if m in checksums}))
    unchecked = []
    if entry.damaged:
        unchecked.append(f"the manifest ({entry.damaged})")
    without = [m for m in members if m not in checksums]
    if without:
        unchecked.append(f"the checksums of {', '.join(without)} (the manifest has none for them)")
    unchecked.append("the database (this restore does not touch it)")
    return [f"not checked: {'; '.join(unchecked)}"]


def _raise_if(entry, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationFailed(
            f"backup {entry.name} failed verification: {problems[0]}{more}; nothing was changed; "
            "restore an older backup (see ./sparkq.sh backup-verify --all)"
        )


# --- step 4: the plan -------------------------------------------------------------------------


def _plan(entry, scope, tables, steps, notes, paths) -> Plan:
    from .merge import RULE

    live = _real(paths.db)
    shows_counts = bool(tables) or any(s.kind == "db" for s in steps)
    counts_backup = counts_now = None
    if shows_counts:
        counts_backup = entry.counts or None
        if not counts_backup:
            got = _counts(entry.db_file, None if entry.format == "legacy" else entry.wal_file)
            counts_backup = got if isinstance(got, dict) else None
        counts_now = _counts(live, _sidecar(live, "-wal")) if live.exists() else "no database yet"
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
        pre_restore_db=_pre_restore_db(steps, paths),
        counts_backup=counts_backup,
        counts_now=counts_now,
        notes=list(notes),
        merge_rule=RULE if tables else None,
    )


def _pre_restore_db(steps: list[Step], paths) -> str:
    """How the pre-restore bundle will hold the current DB: a hard link when it is about to be
    replaced and the backup dir shares its filesystem, else a copy (snapshot)."""
    live = _real(paths.db)
    if not live.exists():
        return "none"
    if not _links_live_db(steps, paths):
        return "snapshot"
    probe = paths.backup_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        same_fs = os.stat(probe).st_dev == os.stat(live).st_dev
    except OSError:
        same_fs = False
    return "hard link" if same_fs else "copy"


def _links_live_db(steps: list[Step], paths) -> bool:
    """Whether the pre-restore bundle may take the live DB by hard link: only when a step
    replaces that very file (else the link would stay shared with a file still in use)."""
    live = _real(paths.db)
    return live.exists() and any(s.kind == "db" and s.target == live for s in steps)


def _fingerprint(entry, steps: list[Step], paths) -> tuple:
    """Stat of every file the plan was made from; a change means the plan is stale."""
    files = [entry.path / "manifest.json" if entry.format == "bundle" else entry.path]
    files += [s.source for s in steps] + [s.target for s in steps] + [_real(paths.db)]
    if entry.format == "bundle":
        files += [entry.path / "sparkq.db", entry.path / "sparkq.db-wal"]
    out = []
    for path in files:
        try:
            st = os.lstat(path)
            out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
        except OSError:
            out.append((str(path), None))
    wal = _sidecar(_real(paths.db), "-wal")
    out.append(("live -wal bytes", wal.stat().st_size if wal.exists() else 0))
    return tuple(out)


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


def _pre_restore(settings, *, link: bool) -> tuple[Path, str, list[str]]:
    """Write the sparkq_preRestore_* bundle; returns (its path, how it holds the DB, notes).

    `link`: the live DB is about to be replaced, so first make it stand alone (checkpoint) and
    let the bundle take it by hard link instead of a copy.
    """
    from . import create

    notes: list[str] = []
    db = _real(settings.paths.db)
    link = link and db.exists()
    if link:
        problem = _checkpoint(db)
        if problem:
            notes.append(f"the current database could not be checkpointed ({problem}); "
                         "it is kept as it was in the pre-restore bundle")
    path = Path(create.write_bundle(settings, trigger="pre-restore", prefix=PRE_RESTORE_PREFIX, link_db=link))
    return path, _how_kept(db, path / "sparkq.db", link), notes


def _how_kept(live: Path, kept: Path, link: bool) -> str:
    """What the pre-restore bundle really did with the DB (a link can fall back to a copy)."""
    try:
        a, b = os.stat(live), os.lstat(kept)
    except OSError:
        return "none"
    if not link:
        return "snapshot"
    return "hard link" if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) else "copy"


def _checkpoint(db: Path) -> str | None:
    """Fold the WAL of the (unused) live DB into it and close; returns a problem or None."""
    busy_msg = f"another process is using {db}; close the program that has it open, then retry"
    try:
        conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("PRAGMA busy_timeout=0")
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if storage.is_busy(exc):
            raise InUse(busy_msg) from None
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    if busy:
        raise InUse(busy_msg)
    return None


# --- step 6: placing files --------------------------------------------------------------------


def _place_all(settings, entry, scope: str, plan: Plan) -> RestoreResult:
    paths = settings.paths
    steps = plan.steps
    live_db = _real(paths.db)
    pre_path, how, notes = _pre_restore(settings, link=_links_live_db(steps, paths))
    if how == "copy" and plan.pre_restore_db == "hard link":
        notes.append("the current database was copied into the pre-restore bundle, not hard-linked "
                     "(linking was refused there)")
    placed: list[Step] = []
    where = steps[0].target if steps else None
    try:
        with sigterm_unwinds():
            for step in steps:
                where = step.target
                _place(step)
                placed.append(step)
    except BaseException as exc:  # Ctrl-C (and SIGTERM, see the CLI) roll back too
        _roll_back(placed, pre_path, live_db)
        unshare_pre_restore(settings)  # the DB was not replaced: it may still be linked into pre_path
        if not isinstance(exc, Exception):
            log.get().info("restore_interrupted", backup=entry.name, target=str(where))
            raise Interrupted(
                f"restore interrupted while placing {where}; what was already placed is back as it was "
                f"(the previous state is also in {pre_path.name}); run the restore again when ready"
            ) from None
        log.get().error("restore_failed", backup=entry.name, target=str(where), error=str(exc))
        raise SparkqError(
            f"restore failed placing {where} ({exc}); what was already placed is back as it was "
            f"(the previous state is also in {pre_path.name}); check free space and permissions, then retry"
        ) from exc
    restored = [{"source": _label(s), "target": str(s.target)} for s in steps]
    # A database placed where the restored config looks left the old one untouched: undoing is
    # putting the config files back.
    moved = any(s.kind == "db" and s.target != live_db for s in steps)
    undo = f"./sparkq.sh backup-restore {pre_path.name}{_SCOPE_FLAG['config' if moved else scope]} --yes"
    log.get().info("restore_done", backup=entry.name, scope=scope, pre_restore=pre_path.name,
                   targets=[s.target.name for s in steps])
    return RestoreResult(backup=entry.name, scope=scope, tables=None, restored=restored, merged={},
                         pre_restore=pre_path.name, pre_restore_path=str(pre_path), undo=undo,
                         pre_restore_db=how, notes=plan.notes + notes)


def _place(step: Step) -> None:
    target = step.target
    target.parent.mkdir(parents=True, exist_ok=True)
    if step.kind == "db":
        # The new file must never meet the old DB's WAL: after the checkpoint it is empty, so
        # removing it before the rename loses nothing, and a crash in between leaves the old DB whole.
        for suffix in ("-wal", "-shm", "-journal"):
            _sidecar(target, suffix).unlink(missing_ok=True)
        if step.wal is not None and step.wal.stat().st_size > 0:
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


def _roll_back(placed: list[Step], pre_path: Path, live_db: Path) -> None:
    """Put back every target already replaced, from the pre-restore bundle (or remove it)."""
    for step in reversed(placed):
        name = {"db": "sparkq.db", "yml": "sparkq.yml", "env": ".env"}.get(
            step.kind, f"{TEMPLATES_MEMBER}/{step.target.name}")
        saved = pre_path / name
        # A database placed where the restored config looks (not the live one) had no file before.
        moved = step.kind == "db" and step.target != live_db
        try:
            if step.kind == "db":
                for suffix in ("-wal", "-shm"):
                    _sidecar(step.target, suffix).unlink(missing_ok=True)
            if saved.is_file() and not saved.is_symlink() and not moved:
                atomic_copy(saved, step.target, mode=step.mode)
            else:
                step.target.unlink(missing_ok=True)
                fsync_dir(step.target.parent)
        except OSError as exc:
            log.get().error("restore_rollback_failed", target=str(step.target), error=str(exc))


# --- step 7: --tables merge -------------------------------------------------------------------


def _merge(settings, entry, tables: list[str], plan: Plan) -> RestoreResult:
    from .merge import merge_tables

    live = _real(settings.paths.db)
    if not live.exists():
        raise UsageError(f"there is no current database at {live} to merge into; "
                         "restore the whole database instead (--db-only)")
    pre_path, how, notes = _pre_restore(settings, link=False)
    wal = None if entry.format == "legacy" else entry.wal_file
    with tempfile.TemporaryDirectory(prefix="sparkq-merge-") as tmp:
        source = entry.db_file
        if wal is not None and wal.stat().st_size > 0:
            source = _fold_copy(source, wal, Path(tmp))
        try:
            merged = merge_tables(live, source, tables)
        except sqlite3.Error as exc:
            raise SparkqError(f"merging tables from {entry.name} failed ({exc}); the database is unchanged "
                              f"(its previous state is also in {pre_path.name})") from None
        except KeyboardInterrupt:
            raise Interrupted(f"merge interrupted; the database is unchanged (its state before is also in "
                              f"{pre_path.name})") from None
    notes += [m.note for m in merged.values() if m.note]
    undo = f"./sparkq.sh backup-restore {pre_path.name} --db-only --yes"
    log.get().info("restore_done", backup=entry.name, scope="tables", tables=tables, pre_restore=pre_path.name,
                   skipped={t: m.skipped for t, m in merged.items()})
    return RestoreResult(backup=entry.name, scope="tables", tables=tables, restored=[],
                         merged={t: m.to_dict() for t, m in merged.items()},
                         pre_restore=pre_path.name, pre_restore_path=str(pre_path), undo=undo,
                         pre_restore_db=how, notes=plan.notes + notes)


# --- small helpers ----------------------------------------------------------------------------


def _real(path: Path) -> Path:
    """The file `path` leads to, symlinks followed (the path itself when nothing is there yet)."""
    return Path(os.path.realpath(path))


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
