"""The backup-* commands of `sparkq`: take, push, list, show, verify, restore and export backups.

Each parses its arguments, calls one function of supervisor/backup/ and renders the result, as
the commands in cli.py do. They register on the shared `app` (cli_app.py) when cli.py imports
this module; the backup code itself is imported inside each command, so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

from .cli_app import JsonOpt, app, emit, exit_with, load_settings
from .errors import FAILURE, UsageError

# Backup refs such as "-1" must reach the resolver (which explains them), not click's option parser.
_REFS = {"ignore_unknown_options": True}


@app.command()
def backup(
    as_json: bool = JsonOpt,
    trigger: str = typer.Option("manual", "--trigger", hidden=True, help="manual, or scheduled (the supervisor's)."),
) -> None:
    """Take a verified backup bundle now (also while the server runs)."""
    from .backup.create import create_backup
    from .backup.offsite import after_backup

    settings = load_settings()
    if trigger == "manual":
        from .pidfile import recorded_pid
        from .process import alive

        result = create_backup(settings, trigger="manual", progress=sys.stderr.isatty(),
                               beside_server=alive(recorded_pid(settings.paths)))
    else:
        from .interrupts import sigterm_unwinds
        from .schedule import TRIGGER

        if trigger != TRIGGER:
            raise UsageError(f"unknown --trigger {trigger!r}; the only one is {TRIGGER}")
        # The supervisor ends a scheduled backup with SIGTERM when it stops: unwinding removes the
        # half-built bundle. Unchanged since the newest bundle: nothing is written.
        with sigterm_unwinds():
            result = create_backup(settings, trigger=TRIGGER, skip_unchanged=True, beside_server=True)
    if not as_json:
        emit(result)  # before the push: the local backup is done whatever the network does
        sys.stdout.flush()
    pushed = after_backup(settings, result)  # None when off-site copies are off; never raises
    if as_json:
        print(json.dumps({**result.to_dict(), **({"offsite": pushed.to_dict()} if pushed else {})},
                         indent=2, default=str))
    elif pushed:
        emit(pushed)


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
    report = push(load_settings(lenient=background), ref, all_=all_, background=background)
    if not background:
        emit(report, as_json)
        exit_with(FAILURE if report.error else 0)


@app.command("backup-list")
def backup_list(
    offsite: bool = typer.Option(False, "--offsite", help="List the SparkQ snapshots in the off-site repository."),
    as_json: bool = JsonOpt,
) -> None:
    """List backups, 1 = newest; pre-restore bundles are listed apart, by name."""
    if offsite:
        from .backup.offsite_repo import list_offsite

        emit(list_offsite(load_settings(lenient=True, strict=("offsite",))), as_json)
        return
    from .backup.listing import list_backups

    emit(list_backups(load_settings(lenient=True)), as_json)


@app.command("backup-show", context_settings=_REFS)
def backup_show(
    ref: str = typer.Argument(..., metavar="N|NAME", help="Backup number from backup-list, or its name."),
    as_json: bool = JsonOpt,
) -> None:
    """Show a backup's manifest and every file with its size (never the content of .env)."""
    from .backup.listing import show_backup

    emit(show_backup(load_settings(lenient=True), ref), as_json)


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

        checked = check(load_settings(lenient=True, strict=("offsite",)), read_data=read_data)
        emit(checked, as_json)
        exit_with(checked.exit_code)
        return
    report = verify_backups(load_settings(lenient=True), ref, all_=all_)
    emit(report, as_json)
    exit_with(report.exit_code)


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
    only: Optional[Scope] = typer.Option(
        None, "--only", help="What to restore: full, db, config (yml and .env), yml, env or templates."),
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

        print(exports.export_json(load_settings(lenient=True), ref, "prompts"))
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

    settings = load_settings(lenient=True, strict=("offsite",) if offsite else ())
    if offsite:
        from .backup.offsite_repo import fetch

        if not yes and not sys.stdin.isatty():  # refused before anything is downloaded
            raise UsageError(_NO_TERMINAL)
        restore.refuse_if_in_use(settings.paths)
        ref = fetch(settings, ref)  # now a verified local bundle; the normal path from here
    plans: list = []
    result = restore.restore_backup(settings, ref, scope=scope.value, tables=table_list,
                                    confirm=_confirmer(yes, plans, show=not as_json), asks=not yes)
    if as_json:
        print(json.dumps({"plan": plans[0].to_dict(), **result.to_dict()}, indent=2, default=str))
    else:
        emit(result)


_NO_TERMINAL = "no terminal to confirm on; add --yes to restore without asking"


def _confirmer(yes: bool, plans: list, *, show: bool = True):
    def confirm(plan) -> bool:
        plans.append(plan)
        if show:
            print(plan.text())
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(_NO_TERMINAL)
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

    print(exports.export_json(load_settings(lenient=True), ref, kind.value))
