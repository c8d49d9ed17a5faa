"""The `sparkq` command line: parse, call one domain function, render the result.

No domain logic lives here, and nothing heavy is imported at module level, so `--help` and
`--version` stay fast. Domain code raises `SparkqError` subclasses; `main()` maps them to one
line on stderr and an exit code (see supervisor/errors.py and README "Exit codes").

This module holds the set-up and lifecycle commands and `main`; the app with its root options and
shared helpers is cli_app.py, the backup-* commands are cli_backup.py.
"""

from __future__ import annotations

import sys

import typer

from .cli_app import JsonOpt, app, emit, exit_with, load_settings, state
from .errors import FAILURE, INTERRUPTED, Interrupted, SparkqError, UsageError

SkipBackupOpt = typer.Option(False, "--skip-backup", help="Start without the pre-start backup (logs a warning).")


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
    from .serverdb import trouble

    settings = load_settings(quiet_missing=True)
    said = trouble(settings)  # None unless a server of ours runs
    if said:  # a new, seeded database would take the place the server's rows must come back to
        raise UsageError(f"{said}; setup changed nothing")
    emit(run_setup(settings, reseed=reseed), as_json)


@app.command()
def start(skip_backup: bool = SkipBackupOpt) -> None:
    """Back up, then start the server in the background and wait until it is healthy.

    Already running: says so, and backs up the state as it is (nothing is written when the newest
    backup holds it already). On the first run (no sparkq.yml and no DB yet)
    it runs setup first.
    """
    from .lifecycle import start as do_start

    emit(do_start(load_settings(), skip_backup=skip_backup))


@app.command()
def run(skip_backup: bool = SkipBackupOpt) -> None:
    """Back up, then run the server in the foreground (what systemd runs).

    SIGTERM and SIGINT are forwarded to the server; the exit status is the server's. With
    NOTIFY_SOCKET set, READY=1 is sent once healthy and STOPPING=1 on shutdown.
    """
    from .supervise import run as do_run

    exit_with(do_run(load_settings(), skip_backup=skip_backup))


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

    settings = config.load(state["config"])
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

    emit(do_stop(load_settings(lenient=True)))  # a broken sparkq.yml must not keep a server running


@app.command()
def restart(skip_backup: bool = SkipBackupOpt) -> None:
    """Stop the server, back up the now quiescent DB, start it again."""
    from .lifecycle import restart as do_restart

    emit(do_restart(load_settings(), skip_backup=skip_backup))


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Show the state (running, starting, backoff, fatal, stopped, unsupervised), PIDs, restarts,
    uptime, URL, health, DB size, newest backup.

    Exit status: 0 running/starting/backoff/unsupervised, 3 stopped/fatal (as `systemctl
    is-active` and LSB scripts use it).
    """
    from .errors import status_exit
    from .status import status as do_status

    result = do_status(load_settings(lenient=True))
    emit(result, as_json)
    exit_with(status_exit(result.state))


@app.command()
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl-C ends)."),
    lines: int = typer.Option(20, "-n", "--lines", min=0, help="How many of the last lines."),
    supervisor: bool = typer.Option(False, "--supervisor", help="The supervisor's events instead."),
) -> None:
    """Print the last lines of the server log (or the supervisor's events), like `tail [-f]`."""
    from .logs import show

    show(load_settings(lenient=True), lines=lines, follow=follow, supervisor=supervisor)


@app.command("systemd-unit")
def systemd_unit(user: bool = typer.Option(False, "--user", help="Print the user-unit variant.")) -> None:
    """Print the systemd unit for this install, with its absolute paths and user filled in."""
    from .systemd import render_unit

    print(render_unit(load_settings(lenient=True), user=user), end="")


# --- backups --------------------------------------------------------------------------------

# The backup-* commands are in cli_backup.py; importing it registers them on `app`. It comes here,
# after the commands above, so `sparkq --help` lists the lifecycle commands first, as it always has.
from . import cli_backup  # noqa: E402 - imported for that side effect only

del cli_backup  # nothing of it is used by name here


# --- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: click handles its own usage errors (exit 2); ours map through SparkqError."""
    _no_shared_writes()
    try:
        app(args=argv, prog_name="sparkq")
    except SparkqError as exc:
        interrupted = isinstance(exc, Interrupted)
        if state["debug"] and not interrupted:  # Ctrl-C is not a bug: no traceback for it
            import traceback

            traceback.print_exc()  # more output, the same exit code: scripts must not see 1 instead
        print(f"{chr(10) if interrupted else ''}sparkq: {exc}", file=sys.stderr)  # past the ^C echo
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("\nsparkq: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a message
        if state["debug"]:
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


__all__ = ["main"]
