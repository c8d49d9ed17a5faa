"""Rows and files that cross from one origin to another: a `--tables` merge of agent roles with
text ids (our older databases) into a database that numbers them (ours now, and the original's);
the original's loose pre-restore `.env` put back by a restore; retention removing every file of
a legacy backup."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from original import make_original_pre_restore


def _older_roles_db(path: Path) -> None:
    """agent_roles as our earlier versions made it: text ids."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE agent_roles (id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, label TEXT,"
                 " description TEXT, active INTEGER NOT NULL DEFAULT 1, created_at TEXT, updated_at TEXT)")
    conn.executemany("INSERT INTO agent_roles (id, key, label, description, created_at, updated_at)"
                     " VALUES (?, ?, ?, 'd', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z')",
                     [("rol_a", "planner", "Planner (from the backup)"), ("rol_b", "newrole", "New")])
    conn.commit()
    conn.close()


def test_merge_matches_text_role_ids_by_key_into_numbered_roles(tmp_path):
    from sparkq import storage
    from supervisor.backup.merge import merge_tables

    live, old = tmp_path / "live.db", tmp_path / "old.db"
    storage.setup_database(live)
    _older_roles_db(old)
    before = dict(sqlite3.connect(live).execute("SELECT key, id FROM agent_roles").fetchall())

    result = merge_tables(live, old, ["agent_roles"])["agent_roles"]

    assert (result.rows, result.written, result.added, result.skipped) == (2, 2, 1, 0), result
    conn = sqlite3.connect(live)
    rows = {k: (i, label) for k, i, label in conn.execute("SELECT key, id, label FROM agent_roles")}
    conn.close()
    assert set(before) < set(rows)  # no live role deleted
    assert rows["planner"] == (before["planner"], "Planner (from the backup)")  # updated in place
    assert isinstance(rows["newrole"][0], int)  # added under a new number


def test_restore_puts_back_the_loose_pre_restore_env(project):
    project.sh("setup")
    make_original_pre_restore(project.backup_dir, "20251120_081500")
    proc = project.cli("backup-restore", "sparkq_preRestore_20251120_081500", "--only", "env", "--yes")
    assert proc.returncode == 0, proc.stderr
    env = project.root / ".env"
    assert env.read_text() == "ORIGINAL_TOKEN=pre-restore-secret\n"
    assert os.stat(env).st_mode & 0o777 == 0o600
    assert "pre-restore-secret" not in proc.stdout + proc.stderr


def test_retention_removes_every_file_of_a_legacy_backup(project, tmp_path):
    from supervisor import config
    from supervisor.backup import retention

    project.backup_dir.mkdir(parents=True)
    for stamp in ("20250101_000000", "20250102_000000"):
        db, yml, env = make_original_pre_restore(tmp_path, stamp)
        for src in (db, yml, env):
            os.rename(src, project.backup_dir / src.name.replace("sparkq_preRestore_", "sparkq_"))
    retention.prune(config.load(), 1)
    assert sorted(p.name for p in project.backup_dir.iterdir() if not p.name.startswith(".")) == [
        "sparkq_20250102_000000.db", "sparkq_20250102_000000.env", "sparkq_20250102_000000.yml"]
