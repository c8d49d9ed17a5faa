"""The backup format as a spec: every name, pattern, clock and key a backup is made of.

Every other module takes these names from here; none spells them again.

**A bundle** is a folder in the backup dir (`backup.dir`, default `sparkq/data/backups`):

    sparkq_YYYYMMDD_HHMMSS[_N]/         a regular backup (PREFIX)
    sparkq_preRestore_YYYYMMDD_HHMMSS/  the state a restore replaced (PRE_RESTORE_PREFIX);
                                        never counted nor pruned by retention, restored by name
      sparkq.db                         online snapshot, rollback journal mode, stands alone
      sparkq.yml, .env                  copies of the project's files, when they exist
      setup_templates/*.example         the setup templates (TEMPLATES_MEMBER, TEMPLATE_FILES)
      *_export.json                     one JSON array per configuration table (EXPORT_FILES)
      manifest.json                     written last (MANIFEST_KEYS)

`_N` (from 1) separates bundles taken in the same second; the order of backups comes from the
manifest's `created_at`, not from the name.

**Legacy single files**, as the original SparkQ's scripts left them: `sparkq_YYYYMMDD_HHMMSS.db`,
maybe with a `.yml` of the same stem beside it (and, for its `sparkq_preRestore_*.db`, a `.env`).

**Clocks.** Our names carry UTC (`created_at` in the manifest, with its offset, is the exact
time). The original named its backups with `date +%Y%m%d_%H%M%S`: local time. A name is only
read as a time when no manifest says `created_at` (a legacy file, or a manifest that is not
JSON), and then in the clock its modification time agrees with: UTC for one of ours, local time
for the original's; local time when neither agrees, as in a folder copied later (name_time).

**Versions** (`backup_version`): "2.0" is ours; "2.1" is the original SparkQ's, *older* despite
the number. A 2.1 bundle has `files` as an object of lists, `configuration_files` instead of
`config_file`, counts read from the live database while it was copied with `cp`, and may carry
a `sparkq.db-wal` whose rows belong to the database.

**Temp names.** Anything being written (a bundle, a restored file, a fold's work folder) or being
deleted (a bundle retention removes) is a hidden `.tmp-<name>-<pid>` entry beside its final
place (fsutil.temp_entry), removed by the next writer once that PID is gone. The older
`.<name>.tmp-<pid>` form that atomic writes once used is still recognised and cleaned up. An
off-site fetch downloads into `.tmp-offsite-fetch-<host>-<pid>` (FETCH_TEMP and the host): a
backup dir shared between machines holds other hosts' fetches, which only their host may judge.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..fsutil import temp_entry, temp_of  # noqa: F401 - the temp-name scheme, part of this spec

FETCH_TEMP = "offsite-fetch-"

if TYPE_CHECKING:
    import sqlite3

# --- versions --------------------------------------------------------------------------------
BACKUP_VERSION = "2.0"  # what we write
ORIGINAL_VERSION = "2.1"  # the original SparkQ's bundles: older than ours (see the docstring)

# --- member names ----------------------------------------------------------------------------
DB_NAME = "sparkq.db"
YML_NAME = "sparkq.yml"
ENV_NAME = ".env"
MANIFEST = "manifest.json"
TEMPLATES_MEMBER = "setup_templates"
TEMPLATE_FILES = ("sparkq.yml.example", ".env.example", "requirements.txt.example")
CONFIG_MEMBERS = (YML_NAME, ENV_NAME)  # copied byte for byte from the project
# export kind (backup-export --type) -> member name; the tables behind them are in exports.py
EXPORT_FILES = {
    "config": "config_export.json",
    "tools": "tools_export.json",
    "task-classes": "task_classes_export.json",
    "prompts": "prompts_export.json",
    "agent-roles": "agent_roles_export.json",
    "projects": "projects_export.json",
}

# --- SQLite sidecars ---------------------------------------------------------------------------
WAL = "-wal"
SHM = "-shm"
JOURNAL = "-journal"
WAL_NAME = DB_NAME + WAL  # only in 2.1 bundles; ours stand alone


def sidecar(db: Path, suffix: str) -> Path:
    """`db`'s sidecar file (WAL, SHM or JOURNAL) beside it."""
    return db.with_name(db.name + suffix)


# --- names and their clock -----------------------------------------------------------------------
PREFIX = "sparkq"
PRE_RESTORE_PREFIX = "sparkq_preRestore"
STAMP = "%Y%m%d_%H%M%S"
_NAME = r"(sparkq|sparkq_preRestore)_(\d{8})_(\d{6})(?:_(\d+))?"
# groups: prefix, day, clock, the _N suffix (or None)
BUNDLE_RE = re.compile(_NAME)
LEGACY_RE = re.compile(_NAME + r"\.db")


def bundle_name(prefix: str, created: datetime) -> str:
    """The first name tried for a bundle made at `created` (UTC); `_N` is added when taken."""
    return f"{prefix}_{created.astimezone(timezone.utc).strftime(STAMP)}"


NAME_CLOCK_SLACK_S = 3600  # a bundle is written within this long of the time its name says


def name_time(day: str, clock: str, mtime: float | None = None) -> datetime | None:
    """The time a name's `YYYYMMDD` and `HHMMSS` say. Local time (the original's clock; legacy
    files carry no other), unless `mtime`, the entry's modification time, agrees with the name
    read as UTC and not with it read as local time: then it is one of ours whose manifest could
    not be read. None when the name makes no date."""
    try:  # by hand: strptime costs more than reading a whole manifest, and listings do thousands
        naive = datetime(int(day[:4]), int(day[4:6]), int(day[6:]), int(clock[:2]), int(clock[2:4]),
                         int(clock[4:]))
        local = naive.astimezone(timezone.utc)  # a naive datetime is taken as local time
    except (ValueError, OverflowError, OSError):
        return None
    utc = naive.replace(tzinfo=timezone.utc)
    if mtime is None or utc == local:
        return local
    off_utc, off_local = abs(mtime - utc.timestamp()), abs(mtime - local.timestamp())
    return utc if off_utc < off_local and off_utc <= NAME_CLOCK_SLACK_S else local


# --- manifest.json -----------------------------------------------------------------------------
MANIFEST_LIMIT = 4 << 20  # a real manifest is a few KB; anything past this is treated as damaged
PROJECT_KEY = "project_id"
# The keys we write (2.0). Readers accept a missing key: older writers left some out.
MANIFEST_KEYS = {
    "backup_version": "format version, see above",
    "created_at": "ISO time with offset (UTC): the order of backups",
    "timestamp": "the YYYYMMDD_HHMMSS of the name",
    "integrity_check": "PRAGMA integrity_check of the snapshot: 'ok', the problems, or 'no database'",
    "database": "{path: the live DB, size: human, bytes: int, present: false when there was none}",
    "config_file": "bool: sparkq.yml is in the bundle",
    "env_file": "bool: .env is in the bundle",
    "counts": "rows per table, counted in the snapshot",
    "files": "every member, manifest.json last",
    "checksums": "member -> sha256 hex (the manifest itself excluded)",
    "trigger": "manual | start | restart | pre-restore | ...",
    "sqlite_version": "of the writer", "sparkq_version": "of the writer", "hostname": "of the writer",
    PROJECT_KEY: "the project that took it (history.py); absent when unknown",
    "exports_error": "only when the exports could not be read from the snapshot",
}


# --- reading a backup's database --------------------------------------------------------------------


def readonly_uri(db: Path) -> str:
    """A URI opening `db` read-only and `immutable`: no locks taken and never a -wal/-shm created
    beside it. Only for files nobody writes: snapshots and backups."""
    return f"{Path(os.path.abspath(db)).as_uri()}?mode=ro&immutable=1"


def open_readonly(db: Path) -> sqlite3.Connection:
    """A connection to a backup's (or a fresh snapshot's) database that changes nothing."""
    import sqlite3  # here: listing backups (status) must not pay for importing SQLite

    return sqlite3.connect(readonly_uri(db), uri=True, check_same_thread=False)
