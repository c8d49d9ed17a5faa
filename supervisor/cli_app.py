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
from .errors import Interrupted, UsageError


try:  # typer >= 0.2x carries its own copy of click; older ones use click itself
    from typer._click.exceptions import UsageError as _ClickUsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import UsageError as _ClickUsageError


class _Commands(TyperGroup):
    """Errors that click would print its own way end as our other errors do, one line:

    - Ctrl-C: `sparkq: interrupted`, exit 130. Left to click, it ends silently with 130 (typer >=
      0.2x) or as "Aborted!" with exit 1 (older). Code that must undo work on Ctrl-C (a restore, a
      merge) catches KeyboardInterrupt deeper down and says more.
    - A usage error (unknown option or command, bad or missing argument): click prints four lines
      (usage, hint, blank, error); ours is `sparkq: <what>; see ./sparkq.sh COMMAND --help`, exit 2.
    Both are turned into our errors here, below click's handlers, so cli.main prints them.
    """

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except _ClickUsageError as exc:  # the root's own options (sparkq --bogus)
            if type(exc).__name__ == "NoArgsIsHelpError":  # `sparkq` alone: click shows the help
                raise
            raise _one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except _ClickUsageError as exc:  # a command's options and arguments, or no such command
            raise _one_line(exc) from None


_ROOT_OPTIONS = ("--config", "--debug", "--verbose", "-v", "--version")


def _one_line(exc) -> UsageError:
    message = exc.format_message().replace("\n", " ").rstrip(".")
    command = exc.ctx.command_path.split(" ", 1)[1:] if exc.ctx is not None else []
    option = getattr(exc, "option_name", None)
    if command and option in _ROOT_OPTIONS:  # `status --config x`: an option of sparkq itself
        return UsageError(f"{option} belongs before the command: ./sparkq.sh {option}"
                          f"{' FILE' if option == '--config' else ''} {command[0]} ...")
    where = " ".join(["./sparkq.sh", *command, "--help"])
    joint = " " if message.endswith("?") else "; "  # after "Did you mean ...?"
    return UsageError(f"{message[:1].lower()}{message[1:]}{joint}see {where}")


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


def load_settings(*, lenient: bool = False, quiet_missing: bool = False, strict: tuple[str, ...] = ()):
    """Load the config once per command; set up logging from it. `strict`: sections whose bad
    value stops the command even when loading leniently (one line, before any notice)."""
    from . import config, log

    settings = config.load(state["config"], lenient=lenient)
    for section in strict:
        settings.strict_for(section)
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
