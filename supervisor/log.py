"""structlog, configured once at the entry point.

Events go as JSON lines to the supervisor log (when writable) and to stderr as one readable line
each (`sparkq: warning: event (key=value ...)`), on a terminal, in a pipe or in the journal alike:
stderr is for people, the log file for machines. The console shows warnings and errors only,
unless `verbose` (or systemd's JOURNAL_STREAM) asks for everything.
Never log secrets: nothing here reads `.env`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_pending: dict | None = None
_configured = False


def setup(log_file: Path | None = None, *, verbose: bool = False, console: bool = True) -> None:
    """Remember where to log; structlog is imported and configured on the first event only, so
    commands that log nothing (status, backup-list) do not pay for it."""
    global _pending
    if _pending is None:
        _pending = {"log_file": log_file, "verbose": verbose, "console": console}


def _configure(log_file: Path | None, verbose: bool, console_on: bool = True) -> None:
    import logging

    structlog = _import_structlog()

    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if verbose or os.environ.get("JOURNAL_STREAM") else logging.WARNING)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _one_line,
            ],
            foreign_pre_chain=shared,
        )
    )
    if console_on:  # off in the detached supervisor, whose stderr is the log file itself
        root.addHandler(console)

    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            from .fsutil import rotate_log

            rotate_log(log_file)
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError:
            return
        handler.setLevel(logging.INFO)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    # no local variables in tracebacks: they could hold the server's environment
                    structlog.processors.ExceptionRenderer(
                        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
                    structlog.processors.JSONRenderer(),
                ],
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(handler)


def _import_structlog():
    """structlog, imported without rich.

    When rich is installed (typer depends on it), `import structlog` imports it and pygments for
    the pretty console renderer and rich tracebacks, neither of which we use: about 50 ms of every
    command that logs, a fifth of a small backup. A None in sys.modules makes their optional
    `import rich` fail as if it were not installed; it is there only while structlog loads, so
    typer's own use of rich (help, its exceptions) is unchanged.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        if sys.modules.get("rich", False) is None:
            del sys.modules["rich"]
    return structlog


def _one_line(_logger, method_name: str, event: dict) -> str:
    """An event as one line in the style of our other messages; tracebacks stay in the log file."""
    level = event.pop("level", method_name)
    name = event.pop("event", "")
    for key in ("timestamp", "exc_info", "stack_info"):
        event.pop(key, None)
    rest = " ".join(f"{key}={value}" for key, value in event.items())
    return f"sparkq: {level}: {name}" + (f" ({rest})" if rest else "")


def get(name: str = "sparkq"):
    structlog = _import_structlog()

    global _configured
    if not _configured:
        _configured = True
        # Someone else (a test's capture_logs, an embedding program) configured it: keep theirs.
        if not structlog.is_configured():
            settings = _pending or {"log_file": None, "verbose": False}
            _configure(settings["log_file"], settings["verbose"], settings.get("console", True))

    return structlog.get_logger(name)


def record_crash(exc: BaseException, log_file: Path) -> Path | None:
    """Append an unexpected exception with its traceback to the log file (not to the console)."""
    import json
    import traceback
    from datetime import datetime, timezone

    entry = {
        "event": "unexpected_error",
        "level": "error",
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
    }
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    except OSError:
        return None
    return log_file
