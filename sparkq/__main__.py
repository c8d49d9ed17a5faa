"""`python -m sparkq`: set up the database, then serve the HTTP API with uvicorn.

Host, port and database come from the flags (the supervisor passes all three) or else from
sparkq.yml (sparkq/settings.py). Everything is logged to stderr. A SIGTERM stops the server
gracefully and exits 0; the database is checkpointed and closed on the way out. The server imports
nothing from the supervisor, so either can be shipped and tested alone.

Exit statuses: 0 stopped cleanly, 1 could not open the database or serve, 2 bad arguments or
sparkq.yml (as argparse uses it), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import copy
import logging
import signal
import sqlite3
import sys
from pathlib import Path

from . import __version__, storage
from .settings import WILDCARD_HOSTS, ServerConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def exposure_warning(host: str) -> str | None:
    """The warning to print when `host` makes the API reachable from other machines."""
    if host.strip("[]") in WILDCARD_HOSTS:
        return (
            f"sparkq: WARNING: listening on {host or 'all interfaces'}: the API has no authentication and is "
            "reachable from the network; set server.host to 127.0.0.1 unless that is intended"
        )
    return None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return value


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sparkq", description="Run the SparkQ HTTP server.")
    parser.add_argument("--host", help="interface to listen on (default: server.host of sparkq.yml)")
    parser.add_argument("--port", type=_port, help="TCP port (default: server.port of sparkq.yml)")
    parser.add_argument("--db", help="SQLite database file (default: database.path of sparkq.yml)")
    parser.add_argument("--config", help="config file to read instead of <project root>/sparkq.yml")
    parser.add_argument("--version", action="version", version=f"sparkq {__version__}")
    return parser.parse_args(argv)


def _resolve(args: argparse.Namespace) -> tuple[str, int, Path]:
    host, port, db = args.host, args.port, Path(args.db).resolve() if args.db else None
    if args.config or host is None or port is None or db is None:
        from . import settings  # only when a value must come from sparkq.yml

        found = settings.load(args.config)
        host = found.host if host is None else host
        port = found.port if port is None else port
        db = found.db if db is None else db
    return host, port, db


def _log_config() -> dict:
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout stays free; logs go to stderr
    cfg["loggers"]["sparkq"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return cfg


def _ignore_signal(_signum, _frame) -> None:
    """Stands in for SIGTERM's default action once uvicorn has shut down (see main)."""


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        host, port, db = _resolve(args)
    except ServerConfigError as exc:  # one line ending in what to do
        print(f"sparkq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr)

    fresh = not db.exists()
    try:
        setup = storage.setup_database(db)
    except (sqlite3.Error, OSError) as exc:
        print(f"sparkq: cannot open the database {db}: {exc}; check the file or restore a backup", file=sys.stderr)
        return EXIT_FAILURE

    import uvicorn

    from .app import create_app

    config = uvicorn.Config(
        create_app(db), host=host, port=port, log_level="info", timeout_graceful_shutdown=5, log_config=_log_config()
    )
    log = logging.getLogger("sparkq")
    log.info("sparkq %s: %s database %s", __version__, "created" if fresh else "opened", db)
    if setup["created"] and not fresh:
        log.info("added tables %s and seeded %s", ", ".join(setup["created"]), setup["seeded"])

    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once shutdown is done; with SIGTERM's default
    # action that would kill us with status -15. A no-op handler turns a clean stop into exit 0.
    signal.signal(signal.SIGTERM, _ignore_signal)
    try:
        server.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK if server.started else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
