"""Schema (sparkq.schema), seeding and migrations of sparkq.storage against real SQLite files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from sparkq import schema, storage


def _setup(path, **kw):
    return storage.setup_database(path, **kw)


def _one(path, sql, params=()):
    conn = storage.connect(path)
    try:
        return conn.execute(sql, params).fetchone()
    finally:
        storage.checkpoint_and_close(conn)


def _write(path, sql, params=()):
    conn = storage.connect(path)
    try:
        with storage.transaction(conn):
            return conn.execute(sql, params).rowcount
    finally:
        storage.checkpoint_and_close(conn)


def test_fresh_setup_creates_every_table_and_seeds_defaults(tmp_path):
    db = tmp_path / "data" / "sparkq.db"
    result = _setup(db)
    assert result["created"] == sorted(schema.TABLES)
    assert result["seeded"] == {
        "config": 5, "prompts": 33, "agent_roles": 8, "task_classes": 4, "tools": 7, "projects": 1,
    }
    conn = storage.connect(db)
    try:
        assert storage.counts(conn) == {
            "config_entries": 5, "prompts": 33, "agent_roles": 8, "tools": 7, "task_classes": 4,
            "sessions": 0, "queues": 0, "tasks": 0,
        }
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        timeouts = dict(conn.execute("SELECT name, timeout FROM task_classes").fetchall())
        assert timeouts == {"FAST_SCRIPT": 120, "MEDIUM_SCRIPT": 600, "LLM_LITE": 480, "LLM_HEAVY": 1200}
        # every default tool points at an existing task class
        orphans = conn.execute(
            "SELECT name FROM tools WHERE task_class NOT IN (SELECT name FROM task_classes)"
        ).fetchall()
        assert orphans == []
        assert all(r[0].startswith("prm_") for r in conn.execute("SELECT id FROM prompts"))
    finally:
        storage.checkpoint_and_close(conn)
    assert not (db.parent / "sparkq.db-wal").exists()


def test_defaults_files_have_the_promised_shape():
    defaults = storage.load_defaults()
    assert set(defaults) == set(storage.SEEDED_TABLES)
    assert len(defaults["prompts"]) == 33
    assert len({p["command"] for p in defaults["prompts"]}) == 33
    for prompt in defaults["prompts"]:
        assert set(prompt) == {"command", "label", "template_text", "description", "category", "active"}
        assert prompt["template_text"].strip()
    assert len(defaults["agent_roles"]) == 8
    assert len(defaults["tools"]) == 7
    assert 3 <= len(defaults["config"]) <= 5


def test_rerunning_setup_keeps_customisations(tmp_path):
    db = tmp_path / "sparkq.db"
    _setup(db)
    _write(db, "UPDATE prompts SET template_text = 'my own words' WHERE command = 'code-review'")
    _write(db, "UPDATE task_classes SET timeout = 99 WHERE name = 'FAST_SCRIPT'")
    _write(db, "INSERT INTO config (namespace, key, value) VALUES ('ui', 'font', 'mono')")

    assert _setup(db) == {"created": [], "seeded": {}}

    assert _one(db, "SELECT template_text FROM prompts WHERE command = 'code-review'")[0] == "my own words"
    assert _one(db, "SELECT timeout FROM task_classes WHERE name = 'FAST_SCRIPT'")[0] == 99
    assert _one(db, "SELECT value FROM config WHERE namespace = 'ui' AND key = 'font'")[0] == "mono"
    assert _one(db, "SELECT count(*) FROM prompts")[0] == 33


def test_deleted_default_stays_deleted_until_reseed(tmp_path):
    db = tmp_path / "sparkq.db"
    _setup(db)
    assert _write(db, "DELETE FROM prompts WHERE command = 'explain'") == 1
    _write(db, "UPDATE prompts SET label = 'Mine' WHERE command = 'refactor'")
    _write(db, "UPDATE task_classes SET timeout = 5 WHERE name = 'LLM_LITE'")

    _setup(db)
    assert _one(db, "SELECT count(*) FROM prompts WHERE command = 'explain'")[0] == 0

    result = _setup(db, reseed=True)
    assert result["seeded"]["prompts"] == 1
    assert sum(result["seeded"].values()) == 1
    assert _one(db, "SELECT count(*) FROM prompts WHERE command = 'explain'")[0] == 1
    assert _one(db, "SELECT label FROM prompts WHERE command = 'refactor'")[0] == "Mine"
    assert _one(db, "SELECT timeout FROM task_classes WHERE name = 'LLM_LITE'")[0] == 5
    assert _one(db, "SELECT count(*) FROM prompts")[0] == 33


def test_reseed_skips_a_tool_whose_task_class_was_removed(tmp_path):
    db = tmp_path / "sparkq.db"
    _setup(db)
    _write(db, "DELETE FROM tools WHERE task_class = 'LLM_LITE'")
    _write(db, "DELETE FROM task_classes WHERE name = 'LLM_LITE'")
    _write(db, "DELETE FROM tools WHERE name = 'run-bash'")
    result = _setup(db, reseed=True)
    # LLM_LITE comes back first, so its tools can come back too
    assert result["seeded"]["task_classes"] == 1
    assert result["seeded"]["tools"] == 3


def test_seed_without_reseed_leaves_populated_tables_alone(tmp_path):
    db = tmp_path / "sparkq.db"
    _setup(db)
    _write(db, "DELETE FROM prompts WHERE command = 'debug'")
    conn = storage.connect(db)
    try:
        assert storage.seed(conn, ["prompts"]) == {"prompts": 0}
        assert storage.seed(conn, ["prompts"], reseed=True) == {"prompts": 1}
        with pytest.raises(ValueError):
            storage.seed(conn, ["tasks"])
    finally:
        storage.checkpoint_and_close(conn)


def test_older_database_is_migrated_additively(tmp_path):
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        """
        CREATE TABLE prompts (id TEXT PRIMARY KEY, command TEXT NOT NULL UNIQUE, label TEXT, template_text TEXT);
        INSERT INTO prompts VALUES ('prm_legacy', 'legacy-cmd', 'Legacy', 'old text');
        CREATE TABLE tasks (id TEXT PRIMARY KEY, queue_id TEXT NOT NULL, status TEXT, payload TEXT);
        INSERT INTO tasks VALUES ('t1', 'q1', 'queued', '{}');
        CREATE TABLE legacy_notes (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO legacy_notes (body) VALUES ('keep me');
        """
    )
    old.commit()
    old.close()

    result = _setup(db)
    assert "prompts" not in result["created"] and "tasks" not in result["created"]
    assert "tools" in result["created"] and result["seeded"]["tools"] == 7
    assert "prompts" not in result["seeded"]  # existing table: the user's rows are what counts

    conn = storage.connect(db)
    try:
        prompt_cols = {r[1] for r in conn.execute("PRAGMA table_info(prompts)")}
        task_cols = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
        assert {"category", "active", "description", "created_at", "updated_at"} <= prompt_cols
        assert {"claimed_at", "finished_at", "attempts", "timeout", "tool_name"} <= task_cols
        row = conn.execute("SELECT * FROM prompts").fetchone()
        assert (row["id"], row["template_text"], row["active"]) == ("prm_legacy", "old text", 1)
        assert conn.execute("SELECT attempts FROM tasks WHERE id = 't1'").fetchone()[0] == 0
        assert conn.execute("SELECT body FROM legacy_notes").fetchone()[0] == "keep me"
        assert storage.counts(conn)["prompts"] == 1
    finally:
        storage.checkpoint_and_close(conn)
    assert _setup(db)["created"] == []  # idempotent


def test_counts_treats_missing_tables_as_zero(tmp_path):
    conn = storage.connect(tmp_path / "empty.db")
    try:
        assert storage.counts(conn) == dict.fromkeys(
            ["config_entries", "prompts", "agent_roles", "tools", "task_classes", "sessions", "queues", "tasks"], 0
        )
    finally:
        storage.checkpoint_and_close(conn)


def test_failed_setup_leaves_no_partial_schema(tmp_path, monkeypatch):
    db = tmp_path / "sparkq.db"

    def broken_seed(*_a, **_kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(storage, "seed", broken_seed)
    with pytest.raises(RuntimeError):
        _setup(db)
    monkeypatch.undo()
    assert _one(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'")[0] == 0
    assert _setup(db)["seeded"]["prompts"] == 33


def test_transaction_rolls_back_on_error(tmp_path):
    db = tmp_path / "sparkq.db"
    _setup(db)
    conn = storage.connect(db)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            with storage.transaction(conn):
                conn.execute("UPDATE prompts SET label = 'x'")
                conn.execute("INSERT INTO tools (name, task_class) VALUES ('bad', 'NO_SUCH_CLASS')")
        assert conn.execute("SELECT count(*) FROM prompts WHERE label = 'x'").fetchone()[0] == 0
        assert not conn.in_transaction
    finally:
        storage.checkpoint_and_close(conn)


def test_storage_does_not_import_the_http_stack():
    code = "import sys, sparkq.storage; sys.exit(any(m in sys.modules for m in ('fastapi', 'uvicorn', 'pydantic')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
