"""Databases and bundles as the original SparkQ wrote them, built from the facts in
/work/shared/ORIGINAL.md (its schema table and bundle description), not from its code.

- `ORIGINAL_TABLES` / `ORIGINAL_INDEXES`: its schema, table by table (integer agent-role ids,
  TEXT audit ids, NOT NULL timestamps, the columns ours did not have).
- `make_original_db`: an original-schema database with rows the way it writes them (JSON-encoded
  config values, integer role ids), optionally left in WAL mode with un-checkpointed rows.
- `make_original_bundle`: a "2.1" bundle (files as an object of lists, `configuration_files`,
  `database.size` a string, no checksums or trigger, 0-byte exports for empty tables, a
  `-wal`/`-shm` pair, everything 0644) or, with `damaged=True`, a damaged database whose manifest
  is not JSON because the raw multi-line integrity_check was pasted into it.
- `make_original_legacy` / `make_original_pre_restore`: the loose single files, named in local time.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

NOW = "2025-11-20 09:15:00"  # the original's timestamps: local time, no offset

# table -> column definitions, in the original's order (NN in ORIGINAL.md -> NOT NULL).
ORIGINAL_TABLES: dict[str, list[str]] = {
    "projects": [
        "id TEXT PRIMARY KEY", "name TEXT NOT NULL", "repo_path TEXT", "prd_path TEXT",
        "created_at TEXT NOT NULL", "updated_at TEXT NOT NULL",
    ],
    "sessions": [
        "id TEXT PRIMARY KEY", "project_id TEXT NOT NULL REFERENCES projects(id)", "name TEXT NOT NULL",
        "description TEXT", "status TEXT NOT NULL DEFAULT 'active'", "started_at TEXT NOT NULL", "ended_at TEXT",
        "created_at TEXT NOT NULL", "updated_at TEXT NOT NULL",
    ],
    "queues": [
        "id TEXT PRIMARY KEY", "session_id TEXT NOT NULL REFERENCES sessions(id)", "name TEXT NOT NULL UNIQUE",
        "instructions TEXT", "codex_session_id TEXT", "default_agent_role_key TEXT",
        "status TEXT NOT NULL DEFAULT 'active'", "created_at TEXT NOT NULL", "updated_at TEXT NOT NULL",
    ],
    "tasks": [
        "id TEXT PRIMARY KEY", "queue_id TEXT NOT NULL", "tool_name TEXT NOT NULL", "task_class TEXT NOT NULL",
        "payload TEXT NOT NULL", "agent_role_key TEXT", "status TEXT NOT NULL DEFAULT 'queued'",
        "timeout INTEGER NOT NULL", "attempts INTEGER NOT NULL DEFAULT 0", "result TEXT", "error TEXT",
        "stdout TEXT", "stderr TEXT", "claimed_at TEXT", "stale_warned_at TEXT", "created_at TEXT NOT NULL",
        "updated_at TEXT NOT NULL", "started_at TEXT", "finished_at TEXT",
    ],
    "agent_roles": [
        "id INTEGER PRIMARY KEY AUTOINCREMENT", "key TEXT NOT NULL UNIQUE", "label TEXT NOT NULL",
        "description TEXT NOT NULL", "active INTEGER NOT NULL DEFAULT 1", "created_at TEXT NOT NULL",
        "updated_at TEXT NOT NULL",
    ],
    "prompts": [
        "id TEXT PRIMARY KEY", "command TEXT NOT NULL UNIQUE", "label TEXT NOT NULL", "template_text TEXT NOT NULL",
        "description TEXT", "category TEXT", "created_at TEXT NOT NULL", "updated_at TEXT NOT NULL",
    ],
    "config": [
        "namespace TEXT NOT NULL", "key TEXT NOT NULL", "value TEXT NOT NULL", "updated_at TEXT NOT NULL",
        "updated_by TEXT", "PRIMARY KEY (namespace, key)",
    ],
    "audit_log": [
        "id TEXT PRIMARY KEY", "actor TEXT", "action TEXT NOT NULL", "details TEXT", "created_at TEXT NOT NULL",
    ],
    "task_classes": [
        "name TEXT PRIMARY KEY", "timeout INTEGER NOT NULL", "description TEXT", "created_at TEXT NOT NULL",
        "updated_at TEXT NOT NULL",
    ],
    "tools": [
        "name TEXT PRIMARY KEY", "description TEXT", "task_class TEXT NOT NULL REFERENCES task_classes(name)",
        "created_at TEXT NOT NULL", "updated_at TEXT NOT NULL",
    ],
}
# Added by the original at start, after CREATE TABLE IF NOT EXISTS.
ORIGINAL_ALTERS = ("ALTER TABLE prompts ADD COLUMN active INTEGER DEFAULT 1",)
# name -> (table, columns); "unique" in the name marks a UNIQUE index.
ORIGINAL_INDEXES: dict[str, tuple[str, str]] = {
    "idx_agent_roles_key_unique": ("agent_roles", "key"),
    "idx_prompts_command": ("prompts", "command"),
    "idx_tasks_queue_status": ("tasks", "queue_id, status"),
    "idx_tasks_queue_created": ("tasks", "queue_id, created_at DESC"),
    "idx_tasks_status": ("tasks", "status"),
    "idx_tasks_started_at": ("tasks", "started_at"),
    "idx_tasks_created_at": ("tasks", "created_at"),
    "idx_queues_session": ("queues", "session_id"),
    "idx_queues_status": ("queues", "status"),
    "idx_sessions_project": ("sessions", "project_id"),
    "idx_sessions_status": ("sessions", "status"),
    "idx_tools_task_class": ("tools", "task_class"),
    "idx_config_namespace": ("config", "namespace"),
}


def original_startup_sql() -> list[str]:
    """What the original server runs at every start: CREATE ... IF NOT EXISTS, then its ALTERs."""
    sql = [f"CREATE TABLE IF NOT EXISTS {t} ({', '.join(cols)})" for t, cols in ORIGINAL_TABLES.items()]
    sql += [
        f"CREATE {'UNIQUE ' if 'unique' in name else ''}INDEX IF NOT EXISTS {name} ON {table} ({cols})"
        for name, (table, cols) in ORIGINAL_INDEXES.items()
    ]
    return sql


def original_start(conn: sqlite3.Connection) -> None:
    """Run the original's start-up schema statements on `conn`; raises what it would stop on."""
    for sql in original_startup_sql():
        conn.execute(sql)
    for alter in ORIGINAL_ALTERS:
        table, column = alter.split()[2], alter.split()[5]
        if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(alter)


def make_original_db(path: Path, *, wal_rows: int = 0, empty_tables: tuple[str, ...] = ()) -> dict[str, int]:
    """Write an original-schema database at `path`; returns its row counts per table.

    `wal_rows` extra prompts are left un-checkpointed in `path`-wal (the connection is abandoned
    with the WAL in place, as a `cp` of a live database would catch it). Tables in `empty_tables`
    get no rows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    original_start(conn)
    rows = {
        "projects": [("proj-1", "Legacy project", "/src/legacy", None, NOW, NOW)],
        "sessions": [("sess-1", "proj-1", "First session", "from the old server", "active", NOW, None, NOW, NOW)],
        "queues": [("queue-1", "sess-1", "legacy-queue", "Be brief", None, "developer", "active", NOW, NOW)],
        "tasks": [
            ("task-1", "queue-1", "run-bash", "FAST_SCRIPT", '{"cmd": "ls"}', "developer", "succeeded", 120, 1,
             '{"ok": true}', None, "out", "", NOW, None, NOW, NOW, NOW, NOW),
        ],
        "agent_roles": [(1, "developer", "Developer", "Writes code", 1, NOW, NOW),
                        (2, "reviewer", "Reviewer", "Reads code", 1, NOW, NOW)],
        "prompts": [("p-1", "legacy-review", "Legacy review", "Review {file}", None, "review", NOW, NOW, 1)],
        "config": [("ui", "theme", json.dumps("dark"), NOW, "original"),
                   ("features", "flags", json.dumps({"beta": True}), NOW, "original"),
                   ("purge", "older_than_days", json.dumps(7), NOW, None)],
        "audit_log": [("a1b2c3", "cli", "create", '{"table": "prompts"}', NOW)],
        "task_classes": [("FAST_SCRIPT", 120, "quick", NOW, NOW)],
        "tools": [("run-bash", "shell", "FAST_SCRIPT", NOW, NOW)],
    }
    conn.execute("BEGIN")
    for table, values in rows.items():
        if table in empty_tables:
            continue
        marks = ", ".join("?" for _ in values[0])
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ORIGINAL_TABLES}
    if wal_rows:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO prompts (id, command, label, template_text, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(f"p-wal-{i}", f"wal-only-{i}", f"WAL {i}", "Write it up. " * 150, NOW, NOW) for i in range(wal_rows)],
        )
        conn.execute("COMMIT")
        counts["prompts"] += wal_rows
        # Closing checkpoints the WAL into the file: copy all three while the connection holds
        # them open (as `cp` of a live database does), then put the copies back.
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{path}{suffix}", f"{path}{suffix}.keep")
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            os.replace(f"{path}{suffix}.keep", f"{path}{suffix}")
    else:
        conn.close()
    return counts


# The manifest counts the original writes (from the live database), under its key names.
_COUNT_KEYS = {"config_entries": "config", "prompts": "prompts", "agent_roles": "agent_roles", "tools": "tools",
               "task_classes": "task_classes", "sessions": "sessions", "queues": "queues", "tasks": "tasks"}
_EXPORTS = {"config_export.json": "config", "prompts_export.json": "prompts", "tools_export.json": "tools",
            "task_classes_export.json": "task_classes", "agent_roles_export.json": "agent_roles",
            "projects_export.json": "projects"}


def _export(db: Path, table: str) -> bytes:
    """sqlite3 `.mode json` output: one object per line inside [...]; an empty table gives nothing."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = [json.dumps(dict(r)) for r in conn.execute(f"SELECT * FROM {table}")]
    finally:
        conn.close()
    return ("[" + ",\n".join(rows) + "]\n").encode() if rows else b""


def make_original_bundle(backup_dir: Path, stamp: str, *, wal_rows: int = 0, empty_tables: tuple[str, ...] = (),
                         damaged: bool = False, live_counts: dict | None = None, offset: str = "+01:00") -> Path:
    """A bundle `sparkq_<stamp>/` as the original's backup script writes it (see module doc).

    `stamp` is the local time of the machine that wrote it (YYYYMMDD_HHMMSS); the manifest's
    created_at carries `offset`. `live_counts` overrides the manifest counts (the original reads
    them from the live database, so they may not match what was copied).
    """
    d = backup_dir / f"sparkq_{stamp}"
    d.mkdir(parents=True)
    db = d / "sparkq.db"
    counts = make_original_db(db, wal_rows=wal_rows, empty_tables=empty_tables)
    (d / "sparkq.yml").write_text(
        "server:\n  host: 0.0.0.0\n  port: 5005\ndatabase:\n  path: sparkq/data/sparkq.db\n"
        "purge:\n  older_than_days: 3\nqueue_runner:\n  poll_interval: 30\n"
    )
    (d / ".env").write_text("ORIGINAL_TOKEN=original-secret-value\n")
    if wal_rows:  # exports of the original come from the live database, WAL included
        folded = d.parent / f".fold-{stamp}"
        folded.mkdir()
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{db}{suffix}", folded / f"sparkq.db{suffix}")
        source = folded / "sparkq.db"
    else:
        source = db
    for name, table in _EXPORTS.items():
        (d / name).write_bytes(_export(source, table))
    if wal_rows:
        shutil.rmtree(source.parent)
    (d / "setup_templates").mkdir()
    (d / "setup_templates" / "sparkq.yml.example").write_text("server:\n  port: 5005\n")
    when = datetime.strptime(stamp, "%Y%m%d_%H%M%S")
    counts_out = live_counts or {k: counts[t] for k, t in _COUNT_KEYS.items()}
    integrity = "ok"
    if damaged:
        _damage(db)
        integrity = "*** in database main ***\nPage 3: btreeInitPage() returns error code 11\nPage 4: never used"
    fields = {
        "backup_version": "2.1",
        "timestamp": stamp,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%S") + offset,
        "database": {"path": "sparkq/data/sparkq.db", "size": "184K"},
        "configuration_files": {"sparkq_yml": True, "env_file": True},
        "setup_templates": {"sparkq_yml_example": True, "requirements_example": False},
        "counts": counts_out,
        "files": {
            "critical_config": ["sparkq.yml", ".env"],
            "setup_templates": ["setup_templates/sparkq.yml.example"],
            "database": ["sparkq.db"] + (["sparkq.db-wal", "sparkq.db-shm"] if wal_rows else []),
            "reference": sorted(_EXPORTS),
        },
        "focus": "configuration",
        "recovery_notes": "Restore sparkq.yml and .env first; the database is optional.",
    }
    text = json.dumps(fields, indent=2)
    # The original pastes integrity_check into its JSON template unquoted-escaped: a multi-line
    # value breaks the JSON.
    text = text[:-2] + f',\n  "integrity_check": "{integrity}"\n}}\n'
    (d / "manifest.json").write_text(text)
    _all_0644(d)
    return d


def _damage(db: Path) -> None:
    """Overwrite the middle of the database (pages past the schema) with garbage."""
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.seek(min(4096 * 2, size // 2))
        fh.write(b"\xde\xad\xbe\xef" * 1024)


def _all_0644(root: Path) -> None:
    for top, dirs, files in os.walk(root):
        os.chmod(top, 0o755)
        for name in files:
            os.chmod(os.path.join(top, name), 0o644)


def local_stamp(when: datetime) -> str:
    """The name stamp the original gives a backup taken at `when`: the machine's local time."""
    return when.astimezone().strftime("%Y%m%d_%H%M%S")


def make_original_legacy(backup_dir: Path, stamp: str, *, yml: bool = True) -> Path:
    """A legacy pair `sparkq_<stamp>.db` (+ `.yml`), named in local time, no manifest."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    db = backup_dir / f"sparkq_{stamp}.db"
    make_original_db(db)
    if yml:
        (backup_dir / f"sparkq_{stamp}.yml").write_text("server:\n  host: 0.0.0.0\n  port: 5005\n")
    for p in backup_dir.glob(f"sparkq_{stamp}.*"):
        os.chmod(p, 0o644)
    return db


def make_original_pre_restore(backup_dir: Path, stamp: str) -> list[Path]:
    """The loose files the original restore script leaves: sparkq_preRestore_<stamp>.db/.yml/.env."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    base = backup_dir / f"sparkq_preRestore_{stamp}"
    db = Path(f"{base}.db")
    make_original_db(db)
    Path(f"{base}.yml").write_text("server:\n  port: 5005\n")
    Path(f"{base}.env").write_text("ORIGINAL_TOKEN=pre-restore-secret\n")
    out = [db, Path(f"{base}.yml"), Path(f"{base}.env")]
    for p in out:
        os.chmod(p, 0o644)
    return out
