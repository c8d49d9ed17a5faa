"""Every path the supervisor touches, built once from the config and passed explicitly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The checkout this code runs from (an editable install): the default project root.
CODE_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = CODE_ROOT / "sparkq" / "scripts" / "setup"

DEFAULT_DB = "sparkq/data/sparkq.db"
DEFAULT_BACKUP_DIR = "sparkq/data/backups"


def project_root() -> Path:
    """`SPARKQ_ROOT` when set (sparkq.sh sets it to its own folder), else the code checkout."""
    env = os.environ.get("SPARKQ_ROOT")
    return Path(env).resolve() if env else CODE_ROOT


@dataclass(frozen=True)
class Paths:
    root: Path
    config_file: Path
    db: Path
    backup_dir: Path

    @property
    def env_file(self) -> Path:
        return self.root / ".env"

    # Runtime files (pidfile, lock, logs, caches) follow the database, not the checkout: two
    # configs with their own databases are two independent servers, and `stop` with one config
    # never sees the other's server. For the default config these are the documented
    # sparkq/data/sparkq.pid, sparkq/data/sparkq.lock and sparkq/logs/.

    @property
    def data_dir(self) -> Path:
        return self.db.parent

    @property
    def _stem(self) -> str:
        """Names runtime files after the database, so two databases in one folder do not share them."""
        return self.db.stem or "sparkq"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / f"{self._stem}.pid"

    @property
    def lockfile(self) -> Path:
        return self.data_dir / f"{self._stem}.lock"

    @property
    def listing_cache(self) -> Path:
        """backup-list's cache of what it read from each manifest (see backup/catalog.py)."""
        return self.data_dir / f".{self._log_name('listing-cache.json')}"

    @property
    def log_dir(self) -> Path:
        if self.data_dir == self.root / "sparkq" / "data":
            return self.root / "sparkq" / "logs"
        return self.data_dir / "logs"

    @property
    def server_log(self) -> Path:
        return self.log_dir / self._log_name("server.log")

    @property
    def supervisor_log(self) -> Path:
        return self.log_dir / self._log_name("supervisor.log")

    @property
    def project_id_file(self) -> Path:
        """This project's id (see backup/history.py), named after the database like the rest."""
        return self.data_dir / self._log_name("project_id")

    @property
    def restored_from_file(self) -> Path:
        """The bundle the last restore came from, which retention spares."""
        return self.data_dir / self._log_name("restored_from.json")

    def _log_name(self, name: str) -> str:
        return name if self._stem == "sparkq" else f"{self._stem}-{name}"

    @property
    def templates_dir(self) -> Path:
        return TEMPLATES_DIR

    @classmethod
    def default(cls, root: Path | None = None) -> "Paths":
        root = root or project_root()
        return cls(
            root=root,
            config_file=root / "sparkq.yml",
            db=root / DEFAULT_DB,
            backup_dir=root / DEFAULT_BACKUP_DIR,
        )
