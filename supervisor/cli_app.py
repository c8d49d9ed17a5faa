"""The `sparkq` Typer app, its root options and what every command module shares.

The commands live in cli.py (set-up and lifecycle, and the entry point) and cli_backup.py (the
backup-* commands); both register on `app` from here, so neither imports the other's module for
its helpers. Nothing heavy is imported at module level, so `--help` and `--version` stay fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import Interrupted


class _Commands(TyperGroup):
    """Ctrl-C in a command ends as our other errors do: `sparkq: interrupted`, exit 130. Left to
    click, it ends silently with 130 (typer >= 0.2x) or as "Aborted!" with exit 1 (older), so it
    is turned into our error here, below click's handler; code that must undo work on Ctrl-C (a
    restore, a merge) catches KeyboardInterrupt deeper down and says more."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None


app = typer.Typer(
    name="sparkq",
    cls=_Commands,
    help="Supervise the SparkQ server and back up / restore its data.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

state: dict = {"config": None, "debug": False, "verbose": False}

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON for scripts.")


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
    state.update(config=config, debug=debug, verbose=verbose)


def load_settings(*, lenient: bool = False, quiet_missing: bool = False):
    """Load the config once per command; set up logging from it."""
    from . import config, log

    settings = config.load(state["config"], lenient=lenient)
    log.setup(settings.paths.supervisor_log, verbose=state["verbose"])
    for warning in settings.warnings:
        print(f"sparkq: warning: {warning}", file=sys.stderr)
    if settings.notice and not (quiet_missing and not settings.paths.config_file.exists()):
        print(f"sparkq: notice: {settings.notice}", file=sys.stderr)
    return settings


def emit(result, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        text = result.text()
        if text:
            print(text)


def exit_with(code: int) -> None:
    if code:
        raise typer.Exit(code)
