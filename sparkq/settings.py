"""Where the server listens and which database it serves, when `python -m sparkq` runs alone.

Under the supervisor every value arrives as a flag (`--host --port --db`), so this file is read
only for what no flag gave. It reads three keys of sparkq.yml and nothing else: checking the
whole file, and warning about keys it does not know, is the supervisor's job. Kept apart from the
supervisor so that the server can be shipped and run on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bind addresses that make the server reachable from other machines (the supervisor uses this too).
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5005
DEFAULT_DB = "sparkq/data/sparkq.db"  # relative to the folder of sparkq.yml


class ServerConfigError(Exception):
    """sparkq.yml cannot give a value the server needs; the message says which and what to do."""


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    db: Path


def config_file(explicit: str | None) -> Path:
    """--config, else $SPARKQ_CONFIG, else sparkq.yml in $SPARKQ_ROOT or the code checkout."""
    chosen = explicit or os.environ.get("SPARKQ_CONFIG")
    if chosen:
        return Path(chosen).expanduser().resolve()
    root = os.environ.get("SPARKQ_ROOT")
    base = Path(root).resolve() if root else Path(__file__).resolve().parent.parent
    return base / "sparkq.yml"


def load(explicit: str | None = None) -> ServerSettings:
    """Host, port and database from sparkq.yml, with defaults for what it leaves out."""
    path = config_file(explicit)
    if not path.exists():
        if explicit or os.environ.get("SPARKQ_CONFIG"):
            raise ServerConfigError(f"{path}: config file not found; check --config / SPARKQ_CONFIG")
        return ServerSettings(DEFAULT_HOST, DEFAULT_PORT, path.parent / DEFAULT_DB)
    raw = _read(path)
    host = _value(path, raw, "server", "host", str, DEFAULT_HOST, "a host name or IP address")
    port = _value(path, raw, "server", "port", int, DEFAULT_PORT, "a port number from 1 to 65535")
    if not 1 <= port <= 65535:
        raise ServerConfigError(f"{path}: 'server.port' must be a port number from 1 to 65535, got {port!r}")
    db = Path(_value(path, raw, "database", "path", str, DEFAULT_DB, "a file path")).expanduser()
    return ServerSettings(host, port, db if db.is_absolute() else path.parent / db)


def _read(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerConfigError(f"{path}: cannot read ({exc}); check the file and its permissions") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ServerConfigError(f"{path}: invalid YAML ({problem}); fix the file or restore it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ServerConfigError(f"{path}: top level must be a mapping of sections; fix the file")
    return data


def _value(path: Path, raw: dict, section: str, key: str, kind: type, default: Any, expected: str) -> Any:
    body = raw.get(section)
    if body is None:
        return default
    if not isinstance(body, dict):
        raise ServerConfigError(f"{path}: '{section}' must be a mapping; fix the file")
    value = body.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ServerConfigError(f"{path}: '{section}.{key}' must be {expected}, got {value!r}")
    return value
