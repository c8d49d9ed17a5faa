"""`sparkq setup`: write sparkq.yml and .env from the templates when missing, create/migrate/seed the DB.

Safe to re-run: existing files and rows are never changed. Takes no backup.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .config import Settings
from .fsutil import atomic_copy


@dataclass
class SetupResult:
    wrote: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    db: str = ""
    created_tables: list[str] = field(default_factory=list)
    seeded: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"wrote {name}" for name in self.wrote] + [f"kept existing {name}" for name in self.kept]
        if self.created_tables:
            lines.append(f"database {self.db}: created {len(self.created_tables)} tables")
        else:
            lines.append(f"database {self.db}: up to date")
        seeded = ", ".join(f"{n} {t}" for t, n in self.seeded.items() if n)
        if seeded:
            lines.append(f"seeded defaults: {seeded}")
        lines.append("Setup complete. Start the server: ./sparkq.sh start")
        return "\n".join(lines)


def run_setup(settings: Settings, *, reseed: bool = False, locked: bool = False) -> SetupResult:
    """`locked`: the caller (a first start) already holds the supervisor lock."""
    if not locked:
        from .locking import file_lock

        with file_lock(settings.paths.lockfile):
            return _setup(settings, reseed)
    return _setup(settings, reseed)


def _setup(settings: Settings, reseed: bool) -> SetupResult:
    from sparkq import storage

    paths = settings.paths
    result = SetupResult(db=str(paths.db))
    for template, target, mode in (
        ("sparkq.yml.example", paths.config_file, 0o644),
        (".env.example", paths.env_file, 0o600),
    ):
        if target.exists():
            result.kept.append(target.name)
            if target == paths.env_file:
                os.chmod(target, 0o600)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(paths.templates_dir / template, target, mode=mode)
        result.wrote.append(target.name)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    from .backup.history import unshare_pre_restore

    unshare_pre_restore(settings)  # setup writes the DB: a pre-restore bundle must not share it
    outcome = storage.setup_database(paths.db, reseed=reseed)
    result.created_tables = list(outcome["created"])
    result.seeded = dict(outcome["seeded"])
    return result
