"""Everything a start does before the server runs: first-run set-up, the checks that refuse a
start, and the pre-start backup; then retention once the server is healthy.

Shared by every start (start, run, restart, and the supervisor's restarts): the guide promises a
backup before each, and a start that fails must never rotate good history out.
"""

from __future__ import annotations

import sys

from . import log
from .config import Settings
from .errors import SparkqError, StartFailed
from .ports import holder, port_in_use


def prepare(settings: Settings, notices: list[str], skip_backup: bool) -> Settings:
    """First-run set-up, exposure warning and port check: everything before the backup."""
    from .backup.history import refuse_unusable_db, unshare_pre_restore

    paths = settings.paths
    check_retention(settings, skip_backup)
    _refuse_rescued_copies(paths)  # first: it says where the rows are, whatever the path holds
    refuse_unusable_db(paths)
    if paths.config_file.exists():  # before any first-run set-up: a refused start writes nothing
        _refuse_taken_port(settings)
    # The server is about to write the DB: a pre-restore bundle must not share its inode (even
    # with --skip-backup, which takes no backup that would otherwise do this).
    unshare_pre_restore(settings)
    if not paths.db.exists():
        from .initialize import run_setup

        result = run_setup(settings, locked=True)
        wrote = f"; wrote {', '.join(result.wrote)}" if result.wrote else ""
        notices.append(f"first run: created the database {paths.db}{wrote}")
        log.get().info("first_run_setup", db=str(paths.db), wrote=result.wrote)
        if paths.config_file.name in result.wrote:
            from . import config

            settings = config.load(paths.config_file, root=paths.root)
    exposed = settings.exposure()
    if exposed:  # said in the result, where it is read; the log keeps a record
        notices.append(exposed)
        log.get().info("server_exposed", host=settings.host)
    _refuse_taken_port(settings)  # again: set-up may have just written sparkq.yml
    return settings


def _refuse_taken_port(settings: Settings) -> None:
    if port_in_use(settings.host, settings.port):
        held_by = holder(settings)
        todo = "; stop that program or set server.port in sparkq.yml" if held_by == "another program" else ""
        raise StartFailed(f"port {settings.port} on {settings.host} is already in use by {held_by}{todo}")


def _refuse_rescued_copies(paths) -> None:
    """A copy the server wrote beside the database (it had been replaced while the server ran,
    or the copy was cut short: sparkq/rescue.py) holds rows the database does not: starting
    would bury it under new backups and writes. The user chooses first."""
    from shlex import quote

    from .errors import UsageError
    from .serverdb import rescued_copies

    found = rescued_copies(paths)
    if not found:
        return
    copy, db = found[-1], paths.db
    if ".rescued-" not in copy.name:  # hidden: a write-back that did not end
        raise UsageError(
            f"{copy} holds what the server could copy of its rows before it stopped (its database had no name "
            f"left, and the write-back did not end); check it (sqlite3 {quote(str(copy))} 'PRAGMA integrity_check'), "
            f"keep what you need, then move it out of {db.parent}")
    raise UsageError(
        f"{copy} holds the rows the server had when it stopped ({db} had been replaced while it ran); compare "
        f"the two, then keep one: rm -f {quote(str(db))}-wal {quote(str(db))}-shm && mv {quote(str(copy))} "
        f"{quote(str(db))} for the server's rows, or move {copy.name} out of {db.parent} to keep {db.name}")


def check_retention(settings: Settings, skip_backup: bool) -> None:
    """A bad SPARKQ_BACKUP_KEEP or SPARKQ_BACKUP_INTERVAL stops a start before first-run set-up
    writes anything."""
    from .schedule import interval

    try:
        if not skip_backup:
            settings.backup_keep()
        interval(settings)
    except SparkqError as exc:
        raise _not_started(exc, "") from None


def backup_before_start(settings: Settings, trigger: str, skip_backup: bool):
    """(BackupResult or None, its line). Writes nothing when the newest bundle holds this state
    already, and leaves retention to prune_after_healthy: a start that fails must never push
    good history out (a crash loop would otherwise rotate every bundle away)."""
    if skip_backup:
        log.get().warning("pre_start_backup_skipped", reason="--skip-backup",
                          hint="no backup of the current state was taken")
        return None, "backup skipped (--skip-backup)"
    from .backup.create import create_backup

    log.get().info("pre_start_backup", trigger=trigger)
    try:
        result = create_backup(settings, trigger=trigger, progress=sys.stderr.isatty(), locked=True,
                               prune=False, skip_unchanged=True)
    except SparkqError as exc:
        raise _not_started(exc, "the pre-start backup failed: ") from None
    from .schedule import note_backup

    note_backup(settings.paths, result)  # the schedule counts from this one
    return result, result.text() or result.notice


def prune_after_healthy(settings: Settings, backup) -> str | None:
    """Retention for the pre-start backup, now that the server is up; returns its new line."""
    if backup is None:
        return None
    from .backup.create import prune_after

    return prune_after(settings, backup).text()


def _not_started(exc: SparkqError, why: str) -> SparkqError:
    """The same error, saying that the server was not started because of it (`why`: what failed,
    when the error itself does not say: a bad setting names itself, a failed backup does not)."""
    exc.args = (f"server not started: {why}{exc}",)
    return exc
