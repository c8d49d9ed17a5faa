"""The `sparkq` command line: parse, call one domain function, render the result.

No domain logic lives here, and nothing heavy is imported at module level, so `--help` and
`--version` stay fast. Domain code raises `SparkqError` subclasses; `main()` maps them to one
line on stderr and an exit code (see supervisor/errors.py and README "Exit codes").
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import FAILURE, INTERRUPTED, SparkqError, UsageError

app = typer.Typer(
    name="sparkq",
    help="Supervise the SparkQ server and back up / restore its data.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

_state: dict = {"config": None, "debug": False, "verbose": False}

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON for scripts.")
SkipBackupOpt = typer.Option(False, "--skip-backup", help="Start without the pre-start backup (logs a warning).")


def _version(value: bool) -> None:
    if value:
        print(f"sparkq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    config: Optional[Path] = typer.Option(None, "--config", help="Use this sparkq.yml (also: SPARKQ_CONFIG)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of unexpected errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every event to stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state.update(config=config, debug=debug, verbose=verbose)


def _settings(*, lenient: bool = False, quiet_missing: bool = False):
    """Load the config once per command; set up logging from it."""
    from . import config, log

    settings = config.load(_state["config"], lenient=lenient)
    log.setup(settings.paths.supervisor_log, verbose=_state["verbose"])
    for warning in settings.warnings:
        print(f"sparkq: warning: {warning}", file=sys.stderr)
    if settings.notice and not (quiet_missing and not settings.paths.config_file.exists()):
        print(f"sparkq: notice: {settings.notice}", file=sys.stderr)
    return settings


def _emit(result, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        text = result.text()
        if text:
            print(text)


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


# --- set-up and lifecycle -------------------------------------------------------------------


@app.command()
def setup(
    reseed: bool = typer.Option(False, "--reseed", help="Re-add missing default rows; changed rows stay."),
    as_json: bool = JsonOpt,
) -> None:
    """Write sparkq.yml and .env from the templates when missing, then create and seed the DB.

    Safe to run again: existing files and rows are never changed, and a default you deleted is
    not brought back unless you ask with --reseed. Takes no backup.
    """
    from .initialize import run_setup

    _emit(run_setup(_settings(quiet_missing=True), reseed=reseed), as_json)


@app.command()
def start(skip_backup: bool = SkipBackupOpt) -> None:
    """Back up, then start the server in the background and wait until it is healthy.

    Already running: says so and takes no backup. On the first run (no sparkq.yml and no DB yet)
    it runs setup first.
    """
    from .lifecycle import start as do_start

    _emit(do_start(_settings(), skip_backup=skip_backup))


@app.command()
def run(skip_backup: bool = SkipBackupOpt) -> None:
    """Back up, then run the server in the foreground (what systemd runs).

    SIGTERM and SIGINT are forwarded to the server; the exit status is the server's. With
    NOTIFY_SOCKET set, READY=1 is sent once healthy and STOPPING=1 on shutdown.
    """
    from .supervise import run as do_run

    _exit(do_run(_settings(), skip_backup=skip_backup))


@app.command("_supervise", hidden=True)
def supervise_detached(
    trigger: str = typer.Option("start", "--trigger"),
    skip_backup: bool = SkipBackupOpt,
) -> None:
    """The supervisor `start` leaves running (not for people: use start)."""
    import logging
    import os

    from . import config, log
    from .detached import serve_detached

    settings = config.load(_state["config"])
    log.setup(settings.paths.supervisor_log, console=False)
    code = serve_detached(settings, trigger=trigger, skip_backup=skip_backup)
    # `stop` waits for this process to be gone before it stops the server: skip the interpreter's
    # slow teardown of everything imported (the log is flushed first).
    logging.shutdown()
    os._exit(code)


@app.command()
def stop() -> None:
    """Stop the supervisor, then the server: SIGTERM to its process group, SIGKILL after
    server.stop_timeout."""
    from .lifecycle import stop as do_stop

    _emit(do_stop(_settings(lenient=True)))  # a broken sparkq.yml must not keep a server running


@app.command()
def restart(skip_backup: bool = SkipBackupOpt) -> None:
    """Stop the server, back up the now quiescent DB, start it again."""
    from .lifecycle import restart as do_restart

    _emit(do_restart(_settings(), skip_backup=skip_backup))


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Show the state (running, starting, backoff, fatal, stopped, unsupervised), PIDs, restarts,
    uptime, URL, health, DB size, newest backup.

    Exit status: 0 running/starting/backoff/unsupervised, 3 stopped/fatal (as `systemctl
    is-active` and LSB scripts use it).
    """
    from .errors import status_exit
    from .status import status as do_status

    result = do_status(_settings(lenient=True))
    _emit(result, as_json)
    _exit(status_exit(result.state))


@app.command()
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl-C ends)."),
    lines: int = typer.Option(20, "-n", "--lines", min=0, help="How many of the last lines."),
    supervisor: bool = typer.Option(False, "--supervisor", help="The supervisor's events instead."),
) -> None:
    """Print the last lines of the server log (or the supervisor's events), like `tail [-f]`."""
    from .logs import show

    show(_settings(lenient=True), lines=lines, follow=follow, supervisor=supervisor)


@app.command("systemd-unit")
def systemd_unit(user: bool = typer.Option(False, "--user", help="Print the user-unit variant.")) -> None:
    """Print the systemd unit for this install, with its absolute paths and user filled in."""
    from .systemd import render_unit

    print(render_unit(_settings(lenient=True), user=user), end="")


# Backup refs such as "-1" must reach the resolver (which explains them), not click's option parser.
_REFS = {"ignore_unknown_options": True}

# --- backups --------------------------------------------------------------------------------


@app.command()
def backup(
    as_json: bool = JsonOpt,
    trigger: str = typer.Option("manual", "--trigger", hidden=True, help="manual, or scheduled (the supervisor's)."),
) -> None:
    """Take a verified backup bundle now (also while the server runs)."""
    from .backup.create import create_backup
    from .backup.offsite import after_backup

    settings = _settings()
    if trigger == "manual":
        result = create_backup(settings, trigger="manual", progress=sys.stderr.isatty())
    else:
        from .interrupts import sigterm_unwinds
        from .schedule import TRIGGER

        if trigger != TRIGGER:
            raise UsageError(f"unknown --trigger {trigger!r}; the only one is {TRIGGER}")
        # The supervisor ends a scheduled backup with SIGTERM when it stops: unwinding removes the
        # half-built bundle. Unchanged since the newest bundle: nothing is written.
        with sigterm_unwinds():
            result = create_backup(settings, trigger=TRIGGER, skip_unchanged=True)
    pushed = after_backup(settings, result)  # None when off-site copies are off; never raises
    if as_json:
        print(json.dumps({**result.to_dict(), **({"offsite": pushed.to_dict()} if pushed else {})},
                         indent=2, default=str))
    else:
        _emit(result)
        if pushed:
            _emit(pushed)


@app.command("backup-push", context_settings=_REFS)
def backup_push(
    ref: Optional[str] = typer.Argument(None, metavar="[N|NAME]", help="Default: every pending backup."),
    all_: bool = typer.Option(False, "--all", help="Push every local backup, already pushed ones too."),
    background: bool = typer.Option(False, "--background", hidden=True),
    as_json: bool = JsonOpt,
) -> None:
    """Copy backups to the off-site restic repository now. Exit 1 when a push failed."""
    from .backup.offsite import push

    if ref is not None and all_:
        raise UsageError("give a backup N|NAME or --all, not both")
    report = push(_settings(lenient=background), ref, all_=all_)
    if not background:
        _emit(report, as_json)
        _exit(FAILURE if report.error else 0)


@app.command("backup-list")
def backup_list(
    offsite: bool = typer.Option(False, "--offsite", help="List the SparkQ snapshots in the off-site repository."),
    as_json: bool = JsonOpt,
) -> None:
    """List backups, 1 = newest; pre-restore bundles are listed apart, by name."""
    if offsite:
        from .backup.offsite_repo import list_offsite

        _emit(list_offsite(_settings(lenient=True)), as_json)
        return
    from .backup.listing import list_backups

    _emit(list_backups(_settings(lenient=True)), as_json)


@app.command("backup-show", context_settings=_REFS)
def backup_show(
    ref: str = typer.Argument(..., metavar="N|NAME", help="Backup number from backup-list, or its name."),
    as_json: bool = JsonOpt,
) -> None:
    """Show a backup's manifest and every file with its size (never the content of .env)."""
    from .backup.listing import show_backup

    _emit(show_backup(_settings(lenient=True), ref), as_json)


@app.command("backup-verify", context_settings=_REFS)
def backup_verify(
    ref: Optional[str] = typer.Argument(None, metavar="[N|NAME]", help="Default: the newest backup."),
    all_: bool = typer.Option(False, "--all", help="Verify every backup, pre-restore bundles included."),
    offsite: bool = typer.Option(False, "--offsite", help="Check the off-site repository (restic check)."),
    read_data: bool = typer.Option(False, "--read-data", help="With --offsite: download and check every pack."),
    as_json: bool = JsonOpt,
) -> None:
    """Check checksums and `PRAGMA integrity_check` of backups. Exit 5 when any fails."""
    from .backup.verify import verify_backups

    if ref is not None and all_:
        raise UsageError("give a backup N|NAME or --all, not both")
    if read_data and not offsite:
        raise UsageError("--read-data goes with --offsite")
    if offsite:
        if ref is not None or all_:
            raise UsageError("--offsite checks the whole repository; it takes no N|NAME or --all")
        from .backup.offsite_repo import check

        checked = check(_settings(lenient=True), read_data=read_data)
        _emit(checked, as_json)
        _exit(checked.exit_code)
        return
    report = verify_backups(_settings(lenient=True), ref, all_=all_)
    _emit(report, as_json)
    _exit(report.exit_code)


class Scope(str, Enum):
    full = "full"
    db = "db"
    config = "config"
    yml = "yml"
    env = "env"
    templates = "templates"


@app.command("backup-restore", context_settings=_REFS)
def backup_restore(
    ref: str = typer.Argument(..., metavar="N|NAME", help="Backup number from backup-list, or its name."),
    action: Optional[str] = typer.Argument(None, metavar="[export-prompts]", help="Print the prompts JSON instead."),
    db_only: bool = typer.Option(False, "--db-only", help="Restore the database alone."),
    config_only: bool = typer.Option(False, "--config-only", help="Restore sparkq.yml and .env alone."),
    only: Optional[Scope] = typer.Option(None, "--only", help="Restore one part: yml, env or templates."),
    tables: Optional[str] = typer.Option(
        None, "--tables", help="Merge these tables from the backup into the current DB (e.g. prompts,config)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    offsite: bool = typer.Option(False, "--offsite", help="REF is off-site: latest, a bundle name or a snapshot id."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan and the result as JSON (needs --yes)."),
) -> None:
    """Restore backup N. The current state is first saved as a sparkq_preRestore_* bundle.

    Refused while the server (or any process) uses the database. The backup is verified before
    anything is touched. `backup-restore N export-prompts` prints prompts and restores nothing.
    """
    if action is not None:
        if offsite:
            raise UsageError("export-prompts reads a local backup; fetch it first without export-prompts")
        if action.startswith("-"):  # refs may start with "-", so click lets unknown options through
            raise UsageError(f"unknown option {action}; see ./sparkq.sh backup-restore --help")
        if action != "export-prompts":
            raise UsageError(f"unknown action {action!r}; the only one is export-prompts")
        if db_only or config_only or only or tables:
            raise UsageError("export-prompts takes no restore options")
        from .backup import exports

        print(exports.export_json(_settings(lenient=True), ref, "prompts"))
        return
    chosen = [flag for flag, on in (("--db-only", db_only), ("--config-only", config_only),
                                    ("--only", only is not None), ("--tables", tables is not None)) if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} cannot be combined; pick one")
    scope = Scope.db if db_only else Scope.config if config_only else only or Scope.full
    table_list = [t.strip() for t in tables.split(",") if t.strip()] if tables is not None else None
    if as_json and not yes:
        raise UsageError("--json needs --yes: a script cannot answer the confirmation prompt")
    from .backup import restore

    settings = _settings(lenient=True)
    if offsite:
        from .backup.offsite_repo import fetch

        ref = fetch(settings, ref)  # now a verified local bundle; the normal path from here
    plans: list = []
    result = restore.restore_backup(settings, ref, scope=scope.value, tables=table_list,
                                    confirm=_confirmer(yes, plans, show=not as_json))
    if as_json:
        print(json.dumps({"plan": plans[0].to_dict(), **result.to_dict()}, indent=2, default=str))
    else:
        _emit(result)


def _confirmer(yes: bool, plans: list, *, show: bool = True):
    def confirm(plan) -> bool:
        plans.append(plan)
        if show:
            print(plan.text())
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("no terminal to confirm on; add --yes to restore without asking")
        import click

        try:
            return typer.confirm("Continue?", default=False)
        except (typer.Abort, click.exceptions.Abort):  # Ctrl-C or end of input at the prompt
            print(file=sys.stderr)
            return False

    return confirm


class ExportKind(str, Enum):
    prompts = "prompts"
    config = "config"
    tools = "tools"
    task_classes = "task-classes"
    agent_roles = "agent-roles"
    projects = "projects"


@app.command("backup-export", context_settings=_REFS)
def backup_export(
    kind: ExportKind = typer.Argument(..., help="What to print."),
    ref: str = typer.Argument(..., metavar="N|NAME", help="Backup number from backup-list, or its name."),
) -> None:
    """Print one export (JSON array of rows) of a backup to stdout. Restores nothing."""
    from .backup import exports

    print(exports.export_json(_settings(lenient=True), ref, kind.value))


# --- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: click handles its own usage errors (exit 2); ours map through SparkqError."""
    _no_shared_writes()
    try:
        app(args=argv, prog_name="sparkq")
    except SparkqError as exc:
        if _state["debug"]:
            raise
        print(f"sparkq: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("\nsparkq: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a message
        if _state["debug"]:
            raise
        sys.exit(_unexpected(exc))


def _no_shared_writes() -> None:
    """Keep the user's umask but add 022 to it, so nothing we (or the server we start) create is
    group- or world-writable: under umask 000 the data dir would be 0777, and anyone could swap
    the pidfile, the lock or the database. Files that hold secrets are 0600 regardless."""
    import os

    current = os.umask(0o022)
    os.umask(current | 0o022)


def _unexpected(exc: Exception) -> int:
    from . import log
    from .paths import Paths

    where = log.record_crash(exc, Paths.default().supervisor_log)
    hint = f"traceback in {where}" if where else "no log file could be written"
    print(f"sparkq: unexpected error: {type(exc).__name__}: {exc} ({hint}; rerun with --debug to see it)",
          file=sys.stderr)
    return FAILURE


__all__ = ["app", "main"]
