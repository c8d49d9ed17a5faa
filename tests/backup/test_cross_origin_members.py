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


def _add_role(db: Path, key: str) -> int:
    conn = sqlite3.connect(db)
    cur = conn.execute("INSERT INTO agent_roles (key, label, description, created_at, updated_at)"
                       " VALUES (?, ?, 'd', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')", (key, key))
    conn.commit()
    conn.close()
    return cur.lastrowid


def test_merge_never_takes_a_numbered_role_for_another_with_the_same_number(tmp_path):
    """Two databases number their roles on their own: number 9 is custom_a in one and custom_b
    in the other. The merge matches roles by key, so neither is overwritten."""
    from sparkq import storage
    from supervisor.backup.merge import merge_tables

    live, backup = tmp_path / "live.db", tmp_path / "backup.db"
    storage.setup_database(live)
    storage.setup_database(backup)
    assert _add_role(live, "custom_b") == _add_role(backup, "custom_a")

    result = merge_tables(live, backup, ["agent_roles"])["agent_roles"]

    conn = sqlite3.connect(live)
    keys = {k for (k,) in conn.execute("SELECT key FROM agent_roles")}
    conn.close()
    assert {"custom_a", "custom_b"} <= keys, keys
    assert (result.added, result.skipped) == (1, 0), result


def test_merge_skips_a_row_whose_parent_the_live_database_lacks(tmp_path):
    """A backup tool pointing at a task class the live database lacks is skipped and listed;
    the other rows merge (foreign keys are deferred to the commit, so the check is per row)."""
    from sparkq import storage
    from supervisor.backup.merge import merge_tables

    live, backup = tmp_path / "live.db", tmp_path / "backup.db"
    storage.setup_database(live)
    storage.setup_database(backup)
    conn = sqlite3.connect(backup)
    conn.execute("INSERT INTO task_classes (name, timeout, created_at, updated_at)"
                 " VALUES ('huge', 9999, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
    conn.execute("INSERT INTO tools (name, task_class, created_at, updated_at)"
                 " VALUES ('mytool', 'huge', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
    conn.execute("UPDATE tools SET description = 'from the backup' WHERE name != 'mytool'")
    conn.commit()
    conn.close()

    result = merge_tables(live, backup, ["tools"])["tools"]

    assert result.skipped == 1 and result.skipped_rows[0]["key"] == {"name": "mytool"}, result
    assert "FOREIGN KEY" in result.skipped_rows[0]["reason"]
    conn = sqlite3.connect(live)
    described = conn.execute("SELECT count(*) FROM tools WHERE description = 'from the backup'").fetchone()[0]
    conn.close()
    assert described == result.written > 0
