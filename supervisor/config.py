"""Locate the project, load and validate `sparkq.yml`, resolve paths and environment overrides.

A malformed file or a wrong type fails with one line naming the file, the key path (or the YAML
line) and what was expected. Unknown keys only warn. Recovery commands (stop, status, the backup
listings and restores) load leniently and say so in one line: a bad value keeps its key's default
and every other key its value, so a typo in a timeout does not hide a server started with another
database.path; a file missing or not YAML falls back to the default paths.

Reading the file (YAML and its JSON cache) is config_file.py; the project's `.env` is envfile.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkq.settings import WILDCARD_HOSTS  # the server's list: what it warns about, we warn about

from .config_file import CACHE_NAME, read_cached, read_yaml
from .errors import ConfigError
from .paths import DEFAULT_BACKUP_DIR, DEFAULT_DB, Paths, project_root

KEEP_ENV = "SPARKQ_BACKUP_KEEP"
CONFIG_ENV = "SPARKQ_CONFIG"

# key path -> (expected type(s), default, description of what is expected)
_SCHEMA: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "server.host": ((str,), "127.0.0.1", "a host name or IP address"),
    "server.port": ((int,), 5005, "a port number from 1 to 65535"),
    "server.command": ((list, type(None)), None, "a list of strings (argv)"),
    "server.health_url": ((str,), "/health", "a URL path such as /health (or a full http:// or https:// URL)"),
    "server.start_timeout": ((int, float), 30, "a number of seconds > 0"),
    "server.stop_timeout": ((int, float), 10, "a number of seconds > 0"),
    "server.restart": ((str,), "on-failure", "one of on-failure, always, never"),
    "server.backoff_max": ((int, float), 60, "a number of seconds > 0"),
    "server.start_retries": ((int,), 5, "a whole number >= 1"),
    "server.retry_window": ((int, float), 600, "a number of seconds > 0"),
    "server.health_interval": ((int, float), 10, "a number of seconds >= 0 (0 turns the checks off)"),
    "server.health_failures": ((int,), 3, "a whole number >= 1"),
    "database.path": ((str,), DEFAULT_DB, "a file path"),
    "backup.dir": ((str,), DEFAULT_BACKUP_DIR, "a folder path"),
    "backup.keep": ((int,), 7, "a whole number >= 1"),
    "backup.lock_timeout": ((int, float), 30, "a number of seconds > 0"),
    # Off-site copies through restic (backup/offsite.py); unset repository = off.
    "offsite.repository": ((str, type(None)), None, "a restic repository (a path, sftp:, rest:, s3:, rclone:)"),
    "offsite.password_file": ((str, type(None)), None, "a file path"),
    "offsite.env_file": ((str, type(None)), None, "a file path"),
    "offsite.keep": ((dict, type(None)), None,
                     "a mapping of last/daily/weekly/monthly to whole numbers from 1 to 1000000"),
    "offsite.lock_timeout": ((int, float), 120, "a number of seconds > 0"),
    "backup.interval": ((str, int, float, bool), "1d", "a duration such as 30m, 6h, 1d or seconds (>= 1), or 0/off"),
}
OFFSITE_KEEP_KINDS = ("last", "daily", "weekly", "monthly")
RESTART_POLICIES = ("on-failure", "always", "never")
# Sections the server owns; the supervisor passes them through unchecked.
_FREE_SECTIONS = {"task_classes", "tools", "purge", "logging", "ui", "features", "sparkq"}
# Top-level keys the original SparkQ writes into its sparkq.yml (see ORIGINAL.md): a restored
# original config passes through without a warning for each of them.
_ORIGINAL_SECTIONS = {"project", "queue_runner", "defaults", "sparkq_scripts_dir", "script_dirs"}
# Keys the original writes inside sections we own, with the one value that matches what we do.
_ORIGINAL_KEYS = {"database.mode": "wal"}  # our server always runs the database in WAL mode


@dataclass(frozen=True)
class Settings:
    paths: Paths
    values: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notice: str | None = None  # set when lenient loading fell back to defaults
    # Lenient loading: the keys (or whole sections) whose bad value was replaced by the default,
    # with the message. Code that must not act on a default in place of the user's value (the
    # off-site keep policy, say) asks `strict_for`.
    skipped: dict[str, str] = field(default_factory=dict)

    def strict_for(self, section: str) -> None:
        """ConfigError when a key of `section` was skipped by lenient loading."""
        for key, message in self.skipped.items():
            if key.split(".")[0] == section:
                raise ConfigError(message)

    # One typed property per key: code outside this module never spells a key as a string.

    @property
    def host(self) -> str:
        return self.values["server.host"]

    @property
    def port(self) -> int:
        return self.values["server.port"]

    @property
    def command(self) -> list[str] | None:
        """server.command: the argv to run instead of the bundled server."""
        command = self.values["server.command"]
        return list(command) if command else None

    @property
    def start_timeout(self) -> float:
        return float(self.values["server.start_timeout"])

    @property
    def stop_timeout(self) -> float:
        return float(self.values["server.stop_timeout"])

    @property
    def restart(self) -> str:
        """server.restart: on-failure, always or never (see supervise.py)."""
        return self.values["server.restart"]

    @property
    def backoff_max(self) -> float:
        return float(self.values["server.backoff_max"])

    @property
    def start_retries(self) -> int:
        return self.values["server.start_retries"]

    @property
    def retry_window(self) -> float:
        return float(self.values["server.retry_window"])

    @property
    def health_interval(self) -> float:
        return float(self.values["server.health_interval"])

    @property
    def health_failures(self) -> int:
        return self.values["server.health_failures"]

    @property
    def lock_timeout(self) -> float:
        return float(self.values["backup.lock_timeout"])

    @property
    def backup_interval(self):
        """backup.interval as written (schedule.interval parses it; the environment wins there)."""
        return self.values["backup.interval"]

    @property
    def offsite_repository(self) -> str | None:
        """offsite.repository (backup/offsite.py); None: off-site copies are off."""
        return self.values["offsite.repository"]

    @property
    def offsite_password_file(self) -> str | None:
        return self.values["offsite.password_file"]

    @property
    def offsite_env_file(self) -> str | None:
        return self.values["offsite.env_file"]

    @property
    def offsite_keep(self) -> dict | None:
        return self.values["offsite.keep"]

    @property
    def offsite_lock_timeout(self) -> float:
        """How long a restic command waits for another restic's lock on the repository."""
        return float(self.values["offsite.lock_timeout"])

    @property
    def base_url(self) -> str:
        host = self.host
        if host in WILDCARD_HOSTS:
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def exposure(self, host: str | None = None) -> str | None:
        """One line when `host` (default: server.host) makes the API reachable from the network."""
        host = self.host if host is None else host
        if host not in WILDCARD_HOSTS:
            return None
        shown = host or "empty"
        return (f"warning: server.host is {shown}: the API (no authentication) is reachable from other "
                f"machines; set server.host: 127.0.0.1 in {self.paths.config_file.name} to keep it local")

    @property
    def health_url(self) -> str:
        return self.health_url_for(self.base_url)

    def health_url_for(self, base_url: str) -> str:
        """server.health_url against `base_url` (a running server's may differ from ours)."""
        url = self.values["server.health_url"]
        return url if url.startswith("http") else base_url.rstrip("/") + url

    def backup_keep(self) -> int:
        """Retention count: `SPARKQ_BACKUP_KEEP` wins over `backup.keep`."""
        raw = os.environ.get(KEEP_ENV)
        if raw is None:
            return self.values["backup.keep"]
        text = raw.strip()
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ConfigError(f"{KEEP_ENV}={raw!r} is not a whole number >= 1; set it to e.g. 7")
        return int(text)


def config_path(explicit: str | os.PathLike | None = None, root: Path | None = None) -> Path:
    chosen = explicit or os.environ.get(CONFIG_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    return (root or project_root()) / "sparkq.yml"


def load(
    explicit: str | os.PathLike | None = None,
    *,
    root: Path | None = None,
    lenient: bool = False,
) -> Settings:
    """Load settings. `lenient` turns a broken file into defaults plus a one-line notice."""
    root = root or project_root()
    path = config_path(explicit, root)
    if not path.exists():
        if explicit or os.environ.get(CONFIG_ENV):
            # Even for the lenient commands: defaults beside a mistyped name would call a running
            # server "stopped" (status) or "not running" (stop).
            raise ConfigError(f"{path}: config file not found; check --config / {CONFIG_ENV}")
        return _build(root, path, {}, [], notice=f"{path.name} not found; using default paths")
    skipped: dict[str, str] | None = {} if lenient else None
    try:
        raw = read_cached(path, root / "sparkq" / "data" / CACHE_NAME)
        values, warnings = _validate(path, raw, skipped)
    except ConfigError as exc:
        if not lenient:
            raise
        return _build(root, path, {}, [], notice=f"{exc}; using default paths (a server started with "
                                                  "another database.path is not seen until it is fixed)")
    notice = None
    if skipped:  # only the bad keys fall back: database.path still finds a running server
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        notice = f"{next(iter(skipped.values()))}{more}; using the default for it until it is fixed"
    return _build(root, path, values, warnings, notice=notice, skipped=skipped or {})


def settings_from_file(path: Path, *, root: Path, config_file: Path) -> Settings:
    """Settings from the sparkq.yml at `path`, as if it stood at `config_file` (its relative paths
    resolve there): what restoring that file would give, read as the recovery commands would read
    it (leniently: a bad value keeps its default, listed in `skipped`).

    No cache (the file is not the project's). A file that is not YAML, or not a mapping, raises
    ConfigError naming `path`.
    """
    skipped: dict[str, str] = {}
    values, warnings = _validate(path, read_yaml(path), skipped)
    return _build(root, config_file, values, warnings, skipped=skipped)


def _build(root: Path, path: Path, given: dict[str, Any], warnings: list[str], notice=None,
           skipped: dict[str, str] | None = None) -> Settings:
    values = {key: given.get(key, spec[1]) for key, spec in _SCHEMA.items()}
    base = path.parent

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (base / q)

    paths = Paths(
        root=root,
        config_file=path,
        db=resolve(values["database.path"]),
        backup_dir=resolve(values["backup.dir"]),
    )
    return Settings(paths=paths, values=values, warnings=warnings, notice=notice, skipped=skipped or {})


def _validate(path: Path, raw: Any, skipped: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(values by dotted key, warnings). A bad section or value raises ConfigError, unless
    `skipped` is given (lenient loading): then its message goes there and the key keeps its default."""
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {_kind(raw)}")
    values: dict[str, Any] = {}
    warnings: list[str] = []
    sections = {key.split(".")[0] for key in _SCHEMA}
    for section, body in raw.items():
        if section in _FREE_SECTIONS or section in _ORIGINAL_SECTIONS:
            continue
        if section not in sections:
            warnings.append(f"{path}: unknown key '{section}' ignored")
            continue
        if body is None:
            continue
        try:
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: '{section}' must be a mapping, got {_kind(body)}")
            for key, value in body.items():
                dotted = f"{section}.{key}"
                if dotted in _ORIGINAL_KEYS and value == _ORIGINAL_KEYS[dotted]:
                    continue
                if dotted not in _SCHEMA:
                    warnings.append(f"{path}: unknown key '{dotted}' ignored")
                    continue
                try:
                    values[dotted] = _check(path, dotted, value)
                except ConfigError as exc:
                    if skipped is None:
                        raise
                    skipped[dotted] = str(exc)
        except ConfigError as exc:
            if skipped is None:
                raise
            skipped[section] = str(exc)
    return values, warnings


def _check(path: Path, dotted: str, value: Any) -> Any:
    types, _default, expected = _SCHEMA[dotted]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if ok and dotted == "server.port":
        ok = 1 <= value <= 65535
    elif ok and dotted in ("backup.keep", "server.start_retries", "server.health_failures"):
        ok = value >= 1
    elif ok and dotted == "server.restart":
        ok = value in RESTART_POLICIES
    elif ok and dotted == "server.health_interval":
        ok = value >= 0
    elif ok and dotted in ("server.backoff_max", "server.retry_window"):
        ok = value > 0
    elif ok and dotted.endswith("_timeout"):
        ok = value > 0
    elif ok and dotted == "offsite.keep" and value is not None:
        # restic reads each as a machine integer: a larger number fails every forget, silently
        ok = all(k in OFFSITE_KEEP_KINDS and isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 10**6
                 for k, n in value.items())
    elif ok and dotted == "backup.interval":
        from .schedule import parse_interval

        try:
            parse_interval(value)
        except ValueError:
            ok = False
    elif ok and dotted == "server.health_url":
        ok = _health_url_ok(value)
    elif ok and dotted == "server.command" and value is not None:
        ok = bool(value) and all(isinstance(arg, str) for arg in value)
    if not ok:
        raise ConfigError(f"{path}: '{dotted}' must be {expected}, got {value!r}")
    return value


def _health_url_ok(value: str) -> bool:
    """A path from / (against the server's own address), or a whole http(s) URL with a host."""
    from urllib.parse import urlsplit

    if value.startswith("/"):
        return not any(c.isspace() for c in value)
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)
