"""`backup-restore`: put a backup (or parts of it) back in place, keeping the current state first.

The order matters, and every step before the pre-restore bundle can stop the whole restore with
nothing touched: refuse while the database is in use -> resolve the backup and check the scope
against it -> verify what the scope restores -> show the plan and ask -> take the supervisor lock
and check that nothing changed since the plan was shown -> save the current state as a
`sparkq_preRestore_*` bundle (the database's temp copy is written meanwhile, staging.py; with
--yes the backup's verification too, and the bundle is published only after it passed) ->
place each file by temp copy + fsync + rename (database first, then sparkq.yml, then .env). A crash at any moment leaves each target whole, old or new, and a
failure or Ctrl-C while placing puts back what was already placed (staging.py). `--tables` instead merges
rows of the backup's configuration tables into the live database (merge.py).

The lock is taken only after the answer: a prompt left open must not block stop, start or backup.

Targets are the files the configured paths lead to: a `sparkq.yml`, `.env` or database path that
is a symlink stays a link, and the restored file lands where it points.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import log
from ..errors import InUse, Interrupted, SparkqError, UsageError, VerificationFailed
from ..fsutil import temp_of
from ..interrupts import sigterm_unwinds, uninterrupted
from . import history, staging
from .catalog import resolve
from .dbfiles import checkpoint, db_holder
from .history import unshare_pre_restore
from .layout import DB_NAME, ENV_NAME, JOURNAL, PRE_RESTORE_PREFIX, WAL, YML_NAME, sidecar
from .restore_plan import (
    SCOPES, Plan, Step, build_plan, check_tables, fingerprint, label, links_live_db, real, verify_whole,
)

_SCOPE_FLAG = {
    "full": "",
    "db": " --db-only",
    "config": " --config-only",
    "yml": " --only yml",
    "env": " --only env",
    "templates": " --only templates",
}


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
        from .merge import merged_lines

        lines = []
        if self.merged:
            lines.extend(merged_lines(self.backup, self.merged))
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
    asks: bool = True,
) -> RestoreResult:
    """Restore `ref` (a backup-list number or a backup name). See the module docstring.

    `asks`: `confirm` puts a question to a person. A restore of the database that asks nobody
    (--yes) verifies the backup under the lock, beside the pre-restore bundle (`_Verifying`)."""
    from ..locking import file_lock

    if scope not in SCOPES:
        raise UsageError(f"unknown restore scope {scope!r}; use one of {', '.join(SCOPES)}")
    if tables is not None:
        tables = check_tables(tables)
    paths = settings.paths
    phases = _Phases()
    verify_beside = not asks and tables is None and scope in ("full", "db")
    try:
        _unshare_first(settings)
        with phases("plan" if verify_beside else "verify"):  # verifying a large backup takes a while
            entry, plan = _prepare(settings, ref, scope, tables, verify=not verify_beside)
        answer = confirm(plan)
    except KeyboardInterrupt:
        raise Interrupted("restore interrupted before anything was changed") from None
    if not answer:
        raise SparkqError("restore cancelled; nothing changed")
    done: RestoreResult | None = None
    try:
        # SIGTERM (a service manager, `timeout`) unwinds like Ctrl-C from here on: a half-written
        # pre-restore bundle, a staged copy or a hard link's mode must not be left behind.
        with phases("lock"), file_lock(paths.lockfile), sigterm_unwinds():
            # The answer may have come minutes later: what the plan showed must still be so.
            _refuse_if_in_use(paths, plan.steps)
            if fingerprint(entry, plan.steps, paths) != plan.fingerprint:
                raise SparkqError(f"the backup {entry.name} or the current files changed while the plan was "
                                  "shown; nothing was changed; run the restore again to see a new plan")
            unshare_pre_restore(settings)  # an earlier restore killed mid-way may have left a link
            log.get().info("restore_started", backup=entry.name, scope=scope, tables=tables,
                           targets=[s.target.name for s in plan.steps])
            if tables:
                result = _merge(settings, entry, tables, plan)
            else:
                verifying = _Verifying(entry).start() if verify_beside else None
                result = _place_all(settings, entry, scope, plan, phases, verifying)
            done = result
            history.record_restore(_paths_after(paths, plan.steps), entry)  # retention spares it
        log.get().info("restore_phases", **phases.seconds)  # `-v` shows where the time went
        return result
    except KeyboardInterrupt:
        if done is not None:  # everything was in place already: say so, not "nothing changed"
            raise Interrupted(f"interrupted after the restore was complete: everything listed was restored "
                              f"from {entry.name}; the previous state is kept in {done.pre_restore} "
                              f"(undo: {done.undo})") from None
        # Waiting for the lock or writing the pre-restore bundle (placing files has its own
        # roll-back and message): say so in one line, not a trace.
        _remove_own_temps(paths.backup_dir)
        log.get().info("restore_interrupted", backup=entry.name)
        raise Interrupted("restore interrupted; nothing was changed (a half-written pre-restore "
                          "bundle is removed); run it again when ready") from None


def _unshare_first(settings) -> None:
    """Copy apart pre-restore bundles still linked to the live DB before planning (rarely needed,
    so the shared lock is taken only then): the plan's fingerprint must not change under it."""
    from ..locking import file_lock

    try:
        if os.stat(settings.paths.db).st_nlink < 2:
            return
    except OSError:
        return
    with file_lock(settings.paths.lockfile, shared=True):
        unshare_pre_restore(settings)


def _prepare(settings, ref: str, scope: str, tables: list[str] | None, *, verify: bool = True):
    """Everything that only reads: refusals, the backup, its verification (unless the caller
    verifies later), the plan."""
    paths = settings.paths
    _refuse_if_in_use(paths, [], ours_wait=True)
    entry = resolve(settings, ref)
    if tables and entry.db_file is None:
        raise UsageError(f"backup {entry.name} has no sparkq.db to merge tables from; pick another backup")
    plan = build_plan(entry, scope, tables, paths, verify=verify)
    warnings, notes = history.origin_warnings(entry, settings)  # another project, DB path or host
    plan.warnings[:0] = warnings
    plan.notes[:0] = notes
    _refuse_if_in_use(paths, plan.steps, ours_wait=True)  # a target the restored config moves the DB to
    plan.fingerprint = fingerprint(entry, plan.steps, paths)
    return entry, plan


# --- step 1: refuse while the database is in use ---------------------------------------------


def refuse_if_in_use(paths) -> None:
    """InUse when the server, its supervisor or another process uses the database (an off-site
    restore asks before it downloads anything)."""
    _refuse_if_in_use(paths, [], ours_wait=True)


def _refuse_if_in_use(paths, steps: list[Step], *, ours_wait: bool = False) -> None:
    """InUse when the server, its supervisor or another process uses a database the restore
    touches. `ours_wait` (before the lock): a process that holds the supervisor lock (our own
    `sparkq backup`) is not refused: the restore's lock waits for it, and the check under the
    lock runs again."""
    from .. import pidfile
    from ..locking import describe_pid

    from ..runstate import live_supervisor

    info = pidfile.identify(paths)[0]
    if info is not None:
        raise InUse(f"the server is running (PID {info.pid}); stop it first: ./sparkq.sh stop")
    supervisor = live_supervisor(paths)
    if supervisor is not None:  # in backoff it would start a server in the middle of the swap
        raise InUse(f"a supervisor (PID {supervisor.supervisor_pid}, {supervisor.state}) would start the server "
                    "during the restore; stop it first: ./sparkq.sh stop")
    dbs = dict.fromkeys([real(paths.db)] + [s.target for s in steps if s.kind == "db"])
    for db in dbs:
        holder = db_holder(db)
        if holder is None or (ours_wait and holder > 0 and _holds_lock(holder, paths.lockfile)):
            continue
        if holder > 0:
            # Not our server (that was asked above): ./sparkq.sh stop would not end it.
            raise InUse(f"another process ({describe_pid(holder)}) is using {db}; it is not the SparkQ "
                        f"server, so ./sparkq.sh stop cannot end it: close that program (or kill {holder}), "
                        "then retry")
        raise InUse(f"another process is using {db} (its PID could not be found); close the program "
                    f"that has it open (`fuser -v {db}` names it), then retry")


def _holds_lock(pid: int, lockfile: Path) -> bool:
    """Whether process `pid` has the supervisor's lock file open (one of our commands)."""
    import psutil

    try:
        mine = os.path.realpath(lockfile)
        return any(f.path == mine for f in psutil.Process(pid).open_files())
    except psutil.Error:
        return False


# --- step 5: keep the current state -----------------------------------------------------------


def _pre_restore(settings, *, link: bool, verifying: _Verifying | None = None) -> tuple[Path, str, list[str]]:
    """Write the sparkq_preRestore_* bundle; returns (its path, how it holds the DB, notes).

    `link`: the live DB is about to be replaced, so first make it stand alone (checkpoint) and
    let the bundle take it by hard link instead of a copy.
    `verifying`: the backup's verification, still running. Until it passes nothing of the user's
    may change: the bundle is published only then; a live DB with a -wal or -journal (which the
    checkpoint or a snapshot would fold in or roll back) waits for it first; and if it fails,
    the live DB gets back the mode the hard link gave it.
    """
    from . import create

    notes: list[str] = []
    db = real(settings.paths.db)
    link = link and db.exists()
    mode = os.stat(db).st_mode & 0o7777 if link else None
    wait = verifying.wait if verifying is not None else None
    try:
        if wait is not None and _has_log(db):
            wait()
        if link:
            problem = checkpoint(db)
            if problem:
                notes.append(f"the current database could not be checkpointed ({problem}); "
                             "it is kept as it was in the pre-restore bundle")
        path = Path(create.write_bundle(settings, trigger="pre-restore", prefix=PRE_RESTORE_PREFIX, link_db=link,
                                        before_publish=wait))
    except BaseException:
        if mode is not None:
            with suppress(OSError):
                os.chmod(db, mode)  # the link is gone with the unpublished bundle; so is its chmod
        raise
    return path, _how_kept(db, path / DB_NAME, link), notes


def _has_log(db: Path) -> bool:
    """A -wal or -journal beside the live DB: opening it (the checkpoint, a snapshot) folds the
    WAL in or rolls the journal back. A server stopped cleanly leaves neither."""
    return any(sidecar(db, suffix).exists() for suffix in (WAL, JOURNAL))


class _Verifying:
    """The backup's verification in a thread, beside the pre-restore bundle and the staged copy.

    Used when nobody is asked (--yes): there is no answer to wait for, so the lock is taken at
    once and the two integrity checks and hashes (the backup's, the live DB's) share the CPUs
    instead of running one after the other; at 1 GiB that is most of a restore's time. The order
    that keeps a restore safe holds: `wait` is called before anything of the user's changes (the
    bundle's publication, a WAL's checkpoint), and the restore stops there if the backup fails.
    """

    def __init__(self, entry) -> None:
        self.entry = entry
        self.seconds = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sparkq-restore-verify", daemon=True)

    def start(self) -> "_Verifying":
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            verify_whole(self.entry)
        except SparkqError as exc:
            self._error = exc
        except Exception as exc:  # noqa: BLE001 - else the bundle writer would report it as its own
            self._error = VerificationFailed(f"backup {self.entry.name} could not be verified ({exc}); nothing "
                                             "was changed; check that its files can be read, then retry")
        except BaseException as exc:  # noqa: BLE001 - raised in the restoring thread by wait()
            self._error = exc
        self.seconds = round(time.perf_counter() - started, 3)

    def wait(self) -> None:
        """Block until the verification is done; raise what it found."""
        self._thread.join()
        if self._error is not None:
            raise self._error


def _how_kept(live: Path, kept: Path, link: bool) -> str:
    """What the pre-restore bundle really did with the DB (a link can fall back to a copy)."""
    try:
        a, b = os.stat(live), os.lstat(kept)
    except OSError:
        return "none"
    if not link:
        return "snapshot"
    return "hard link" if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) else "copy"


# --- step 6: placing files --------------------------------------------------------------------


def _place_all(settings, entry, scope: str, plan: Plan, phases: _Phases,
               verifying: _Verifying | None = None) -> RestoreResult:
    paths = settings.paths
    steps = plan.steps
    live_db = real(paths.db)
    staged = staging.stage_db(steps)  # copies while the pre-restore bundle is written; placed after it
    try:
        with phases("pre_restore"):
            pre_path, how, notes = _pre_restore(settings, link=links_live_db(steps, paths), verifying=verifying)
    except BaseException:
        if staged is not None:
            staged.discard()
        raise  # a verification still running reads only the backup: nothing to wait for
    begun: dict[Path, tuple | None] = {}  # target -> its identity before this restore touched it
    where = steps[0].target if steps else None
    try:
        if verifying is not None:  # done: the bundle was published after it passed
            phases.seconds["verify"] = verifying.seconds
        if how == "copy" and plan.pre_restore_db == "hard link":
            notes.append("the current database was copied into the pre-restore bundle, not hard-linked "
                         "(linking was refused there)")
        for step in steps:
            where = step.target
            begun[step.target] = _identity(step.target)
            with phases("place"):
                staging.place(step, staged)
    except BaseException as exc:  # Ctrl-C (and SIGTERM, see restore_backup) roll back too
        with uninterrupted():  # a second Ctrl-C must not cut the roll-back short
            if staged is not None:
                staged.discard()
            # Placed: each target that is no longer the file it was (a rename makes a new inode),
            # also one renamed just before the interrupt. One never reached is left alone.
            staging.roll_back([s for s in steps if s.target in begun and _identity(s.target) != begun[s.target]],
                              pre_path, live_db)
            unshare_pre_restore(settings)  # the DB was not replaced: it may still be linked into pre_path
        if not isinstance(exc, Exception):
            log.get().info("restore_interrupted", backup=entry.name, target=str(where))
            raise Interrupted(
                f"restore interrupted while placing {where}; what was already placed is back as it was "
                f"(the previous state is also in {pre_path.name}); run the restore again when ready"
            ) from None
        # info, not error: the one line below is what the console shows; the log file keeps both
        log.get().info("restore_failed", backup=entry.name, target=str(where), error=str(exc))
        raise SparkqError(
            f"restore failed placing {where} ({exc}); what was already placed is back as it was "
            f"(the previous state is also in {pre_path.name}); check free space and permissions, then retry"
        ) from exc
    if staged is not None:
        phases.seconds.update(staged.seconds)  # ran beside pre_restore, not after it
    restored = [{"source": label(s), "target": str(s.target)} for s in steps]
    # A database placed where the restored config looks left the old one untouched: undoing is
    # putting the config files back.
    moved = any(s.kind == "db" and s.target != live_db for s in steps)
    undo = _undo(settings, pre_path, "config" if moved else scope)
    log.get().info("restore_done", backup=entry.name, scope=scope, pre_restore=pre_path.name,
                   targets=[s.target.name for s in steps])
    return RestoreResult(backup=entry.name, scope=scope, tables=None, restored=restored, merged={},
                         pre_restore=pre_path.name, pre_restore_path=str(pre_path), undo=undo,
                         pre_restore_db=how, notes=plan.notes + notes)


def _identity(path: Path) -> tuple | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _undo(settings, pre_path: Path, scope: str) -> str:
    """The command that puts back what this restore replaced, from its pre-restore bundle.

    It must work from the state the restore leaves: a scope the bundle can give (a project that
    had no database, .env or sparkq.yml before has none in it), and the old sparkq.yml first when
    the restored one reads its backups from another backup.dir (the pre-restore bundle is in the
    current one)."""
    import shlex

    from .layout import TEMPLATES_MEMBER

    held = {name for name in (DB_NAME, YML_NAME, ENV_NAME) if (pre_path / name).is_file()}
    if (pre_path / TEMPLATES_MEMBER).is_dir() and any((pre_path / TEMPLATES_MEMBER).iterdir()):
        held.add(TEMPLATES_MEMBER)
    asked = scope
    if scope == "full" and DB_NAME not in held:
        scope = "config"  # the database was not there before: putting the config back is the undo
    needs = {"db": {DB_NAME}, "config": {YML_NAME, ENV_NAME}, "yml": {YML_NAME}, "env": {ENV_NAME},
             "templates": {TEMPLATES_MEMBER}}.get(scope, set())
    if needs and not needs & held:
        what = " or ".join(sorted(needs | ({DB_NAME} if asked == "full" else set())))
        return f"nothing to put back by a restore: the project had no {what} before this one"
    command = f"./sparkq.sh backup-restore {pre_path.name}{_SCOPE_FLAG[scope]} --yes"
    if YML_NAME in held and real(_backup_dir_after(settings)) != real(settings.paths.backup_dir):
        command = (f"cp {shlex.quote(str(pre_path / YML_NAME))} {shlex.quote(str(settings.paths.config_file))}"
                   f" && {command}")
    return command


def _backup_dir_after(settings) -> Path:
    """backup.dir as the sparkq.yml now in place gives it, read as the next command will read
    it (leniently: a bad value elsewhere in the file keeps the backup.dir it sets)."""
    from .. import config
    from ..errors import ConfigError

    paths = settings.paths
    try:
        return config.settings_from_file(paths.config_file, root=paths.root,
                                         config_file=paths.config_file).paths.backup_dir
    except (ConfigError, OSError):
        return paths.backup_dir


# --- step 7: --tables merge -------------------------------------------------------------------


def _merge(settings, entry, tables: list[str], plan: Plan) -> RestoreResult:
    from .merge import merge_backup

    live = real(settings.paths.db)
    if not live.exists():
        raise UsageError(f"there is no current database at {live} to merge into; "
                         "restore the whole database instead (--db-only)")
    pre_path, how, notes = _pre_restore(settings, link=False)
    merged = merge_backup(entry, live, tables, kept_in=pre_path.name)
    undo = f"./sparkq.sh backup-restore {pre_path.name} --db-only --yes"
    log.get().info("restore_done", backup=entry.name, scope="tables", tables=tables, pre_restore=pre_path.name,
                   skipped={t: m.skipped for t, m in merged.items()})
    return RestoreResult(backup=entry.name, scope="tables", tables=tables, restored=[],
                         merged={t: m.to_dict() for t, m in merged.items()},
                         pre_restore=pre_path.name, pre_restore_path=str(pre_path), undo=undo,
                         pre_restore_db=how, notes=plan.notes + notes)


# --- small helpers ----------------------------------------------------------------------------


def _paths_after(paths, steps):
    """The paths the restored config uses: its database may live elsewhere (a full restore
    places it where the restored sparkq.yml looks), and files kept beside it follow it."""
    import dataclasses

    db = next((s.link or s.target for s in steps if s.kind == "db"), None)
    return dataclasses.replace(paths, db=db) if db is not None else paths


class _Phases:
    """Wall seconds per restore phase. `lock` holds everything done under the supervisor lock;
    `pre_restore` and `place` are parts of it; `copy` and `fsync` (of the restored DB) run beside
    `pre_restore` (staging.py). The benchmark reads them from `sparkq -v`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def _remove_own_temps(backup_dir: Path) -> None:
    """Remove the half-written bundle an interrupt left (the signal can land between creating
    its temp dir and the code that would clean it up); only this process's, by its PID suffix."""
    try:
        names = os.listdir(backup_dir)
    except OSError:
        return
    for name in names:
        temp = temp_of(name)
        if temp and temp[1] == os.getpid() and temp[0].startswith(PRE_RESTORE_PREFIX + "_"):
            shutil.rmtree(backup_dir / name, ignore_errors=True)
