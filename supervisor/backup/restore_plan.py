"""The restore plan: which files a restore places where, what it verifies, what it shows first.

Everything here only reads. `build_plan` matches the scope against what the backup holds,
verifies what the scope restores, and says in advance what the restore will do: each file and its
real target (a symlinked path is followed; the link stays), where the database goes when the
restored sparkq.yml names another `database.path`, a wildcard bind in that file, row counts, and
how the pre-restore bundle will hold the current database. `fingerprint` lets the restore check,
once it holds the lock, that nothing changed while the question was open.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import timezone
from pathlib import Path

from ..errors import UsageError, VerificationFailed
from .layout import DB_NAME, ENV_NAME, MANIFEST, PRE_RESTORE_PREFIX, TEMPLATES_MEMBER, WAL, WAL_NAME, YML_NAME, sidecar

SCOPES = ("full", "db", "config", "yml", "env", "templates")
# Tables `--tables` may merge, in the order they are merged: task classes before the tools that
# point at them. Work data (sessions, queues, tasks, audit_log) is never merged.
MERGE_TABLES = ("config", "prompts", "agent_roles", "task_classes", "tools", "projects")


def build_plan(entry, scope: str, tables: list[str] | None, paths, *, verify: bool = True) -> "Plan":
    """The plan for restoring `scope` (or merging `tables`) of `entry`; raises when the backup
    lacks what is asked for or (with `verify`) fails verification. A caller that passes
    `verify=False` runs `verify_whole` itself before anything changes (restore.py)."""
    # A scope without the database is verified first: a member the manifest lists but the
    # bundle lacks is a damaged backup (exit 5), not a backup without that file (exit 2).
    checked = _verify_members(entry, scope) if verify and not tables and scope not in ("full", "db") else []
    steps, notes, warnings = ([], [], []) if tables else _steps(entry, scope, paths)
    if verify and not checked:
        verify_whole(entry)
    notes += checked
    plan = _plan(entry, scope, tables, steps, notes, paths)
    plan.warnings = warnings
    return plan


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
        width = max((len(label(s)) for s in self.steps), default=0)
        for step in self.steps:
            extra = "  (with its -wal folded in)" if step.wal else ""
            via = f"  (through the symlink {step.link})" if step.link else ""
            lines.append(f"  {label(step):<{width}}  ->  {step.target}{via}{extra}")
        if self.counts_backup is not None and (self.tables or any(s.kind == "db" for s in self.steps)):
            lines.extend(_counts_table(self.counts_backup, self.counts_now))
        how = {"hard link": "database hard-linked, not copied",
               "copy": "database copied: the backup dir is on another filesystem, so it cannot be hard-linked",
               "snapshot": "database snapshot",
               "none": "there is no current database"}[self.pre_restore_db]
        lines.append(f"Before that, the current state is saved as {self.pre_restore} ({how}).")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)

# --- which files go where ---------------------------------------------------------------------


def check_tables(tables: list[str]) -> list[str]:
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
        yml = entry.member(YML_NAME)
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
        env = entry.member(ENV_NAME)  # a legacy backup's loose .env beside it counts too
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
    target = real(configured)
    link = configured if os.path.islink(configured) else None
    return Step(kind, source, target, wal=wal, mode=_mode(target, default_mode), link=link)


def _restored_config(yml: Path, paths, scope: str, notes: list[str], warnings: list[str]) -> Path | None:
    """What the bundled sparkq.yml changes for the next start: the database it will look for
    (returned when it differs from the current one) and a wildcard bind (a warning)."""
    from .. import config
    from ..errors import ConfigError

    try:
        # The same reading and path rules as `config.load`, with the restored file in place.
        restored = config.settings_from_file(yml, root=paths.root, config_file=paths.config_file)
    except ConfigError as exc:
        notes.append(f"the backup's sparkq.yml does not load ({exc}); after the restore, commands fall "
                     "back to the default paths until it is fixed")
        return None
    if restored.skipped:
        notes.append(f"the backup's sparkq.yml has a bad value ({next(iter(restored.skipped.values()))}); "
                     "after the restore, that key keeps its default until it is fixed, and `start` refuses it")
    host = restored.host
    if host.strip("[]") in config.WILDCARD_HOSTS:
        warnings.append(f"the backup's sparkq.yml binds server.host {host!r} (every network interface): "
                        "once restored, the API is reachable from other machines; set server.host: "
                        "127.0.0.1 in sparkq.yml after the restore unless that is what you want")
    if real(restored.paths.backup_dir) != real(paths.backup_dir):
        notes.append(f"the backup's sparkq.yml sets backup.dir to {restored.paths.backup_dir} "
                     f"(now {paths.backup_dir}); the pre-restore bundle is written to the current one")
    new_db, now_db = restored.paths.db, paths.db
    if real(new_db) == real(now_db):
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

# --- verification: what the scope restores ---------------------------------------------------


def _verify_members(entry, scope: str) -> list[str]:
    """Verify what a restore without the database places; returns the note of what was left
    unchecked (never empty). VerificationFailed when the backup cannot be trusted for it.

    A restore of the database checks the whole backup (verify_whole). A scope without it
    (--config-only, --only yml/env/templates) checks the bundle's shape (no symlinks, nothing
    but files and folders), the checksums of the members it places and of those the manifest
    lists for it but the bundle lacks, and in a bundle of ours that each member it places has one.
    So a backup whose database is damaged can still give back its sparkq.yml and .env.
    """
    from . import verify

    unchecked = []
    if entry.format == "bundle":
        if entry.unusable:
            _raise_if(entry, [entry.unusable])
        checksums = (entry.manifest or {}).get("checksums") or {}
        wanted = [m for m in dict.fromkeys([*checksums, *_present(entry, scope)]) if _in_scope(m, scope)]
        problems = verify._symlinks_and_oddities(entry)
        problems += verify._check_checksums(entry, {m: checksums[m] for m in wanted if m in checksums})
        without = [m for m in wanted if m not in checksums]
        if without and entry.ours:  # every file we write is checksummed: this one was put there later
            problems += [f"{m} is not part of the backup (its manifest has no checksum for it)" for m in without]
        _raise_if(entry, problems)
        if entry.damaged:
            unchecked.append(f"the manifest ({entry.damaged})")
        if without:
            unchecked.append(f"the checksums of {', '.join(without)} (the manifest has none for them)")
    unchecked.append("the database (this restore does not touch it)")
    return [f"not checked: {'; '.join(unchecked)}"]


def _in_scope(member: str, scope: str) -> bool:
    if scope == "templates":
        return member.startswith(TEMPLATES_MEMBER + "/")
    return member in {"config": (YML_NAME, ENV_NAME), "yml": (YML_NAME,), "env": (ENV_NAME,)}.get(scope, ())


def _present(entry, scope: str) -> list[str]:
    """The member names of `scope` that exist in the bundle (whatever they are)."""
    names = [YML_NAME, ENV_NAME]
    folder = entry.path / TEMPLATES_MEMBER
    if scope == "templates" and folder.is_dir() and not folder.is_symlink():
        names = [f"{TEMPLATES_MEMBER}/{p.name}" for p in folder.iterdir()]
    return [n for n in names if os.path.lexists(entry.path / n)]


def verify_whole(entry) -> None:
    """Every check of the backup (what a restore of its database needs); VerificationFailed if one fails."""
    from . import verify

    _raise_if(entry, verify.verify_entry(entry))


def _raise_if(entry, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationFailed(
            f"backup {entry.name} failed verification: {problems[0]}{more}; nothing was changed; "
            "restore an older backup (see ./sparkq.sh backup-verify --all)"
        )

# --- what the plan shows ----------------------------------------------------------------------


def _plan(entry, scope, tables, steps, notes, paths) -> Plan:
    from .merge import RULE

    live = real(paths.db)
    shows_counts = bool(tables) or any(s.kind == "db" for s in steps)
    counts_backup = counts_now = None
    if shows_counts:
        counts_backup = entry.counts or None
        if not counts_backup:
            got = _counts(entry.db_file, None if entry.format == "legacy" else entry.wal_file)
            counts_backup = got if isinstance(got, dict) else None
        counts_now = _counts(live, sidecar(live, WAL)) if live.exists() else "no database yet"
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
    live = real(paths.db)
    if not live.exists():
        return "none"
    if not links_live_db(steps, paths):
        return "snapshot"
    probe = paths.backup_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        same_fs = os.stat(probe).st_dev == os.stat(live).st_dev
    except OSError:
        same_fs = False
    return "hard link" if same_fs else "copy"


def links_live_db(steps: list[Step], paths) -> bool:
    """Whether the pre-restore bundle may take the live DB by hard link: only when a step
    replaces that very file (else the link would stay shared with a file still in use)."""
    live = real(paths.db)
    return live.exists() and any(s.kind == "db" and s.target == live for s in steps)


def fingerprint(entry, steps: list[Step], paths) -> tuple:
    """Stat of every file the plan was made from; a change means the plan is stale."""
    files = [entry.path / MANIFEST if entry.format == "bundle" else entry.path]
    files += [s.source for s in steps] + [s.target for s in steps] + [real(paths.db)]
    if entry.format == "bundle":
        files += [entry.path / DB_NAME, entry.path / WAL_NAME]
    out = []
    for path in files:
        try:
            st = os.lstat(path)
            out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
        except OSError:
            out.append((str(path), None))
    wal = sidecar(real(paths.db), WAL)
    out.append(("live -wal bytes", wal.stat().st_size if wal.exists() else 0))
    return tuple(out)


def _counts(db: Path | None, wal: Path | None) -> dict | str:
    """Row counts of `db` (with `wal` folded in when non-empty), read without changing either."""
    from sparkq import storage

    from .dbfiles import open_backup_db

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

# --- small helpers ----------------------------------------------------------------------------


def real(path: Path) -> Path:
    """The file `path` leads to, symlinks followed (the path itself when nothing is there yet)."""
    return Path(os.path.realpath(path))


def label(step: Step) -> str:
    """The source as the user sees it in the backup: a bundle member name or the legacy file."""
    if step.kind == "template":
        return f"{TEMPLATES_MEMBER}/{step.source.name}"
    return step.source.name


def _mode(path: Path, default: int) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return default
