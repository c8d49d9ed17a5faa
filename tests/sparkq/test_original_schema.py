"""One schema for both servers: our database is a superset of the original SparkQ's, and an
original database is upgraded in place without touching its rows (issue 12 items 1, 2, 8)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from original import ORIGINAL_INDEXES, ORIGINAL_TABLES, make_original_db, original_start
from sparkq import storage
from sparkq.schema import SCHEMA

# Columns the original declares NOT NULL that stay nullable in ours, and why: our API lets a
# session go without a project and a queue without a session. The original always writes them,
# so it can still write to our database.
NULLABLE_IN_OURS = {("sessions", "project_id"), ("queues", "session_id")}


def _columns(conn: sqlite3.Connection, table: str) -> dict[str, dict]:
    return {
        r[1]: {"type": r[2].upper(), "notnull": bool(r[3]), "pk": r[5]}
        for r in conn.execute(f"PRAGMA table_info('{table}')")
    }


def _index_columns(conn: sqlite3.Connection, table: str) -> set[tuple[str, ...]]:
    return {
        tuple(r[2] for r in conn.execute(f"PRAGMA index_info('{ix[1]}')"))
        for ix in conn.execute(f"PRAGMA index_list('{table}')").fetchall()
    }


def _unique_columns(conn: sqlite3.Connection, table: str) -> set[tuple[str, ...]]:
    return {
        tuple(r[2] for r in conn.execute(f"PRAGMA index_info('{ix[1]}')"))
        for ix in conn.execute(f"PRAGMA index_list('{table}')").fetchall() if ix[2]
    }


@pytest.fixture
def original_schema() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    original_start(conn)
    yield conn
    conn.close()


@pytest.fixture
def ours(tmp_path) -> sqlite3.Connection:
    db = tmp_path / "ours.db"
    storage.setup_database(db)
    conn = sqlite3.connect(db, isolation_level=None)
    yield conn
    conn.close()


def test_our_schema_has_every_original_column_type_and_constraint(original_schema, ours):
    for table in ORIGINAL_TABLES:
        theirs, mine = _columns(original_schema, table), _columns(ours, table)
        for name, col in theirs.items():
            assert name in mine, f"{table}.{name} is missing from our schema"
            assert mine[name]["type"] == col["type"], f"{table}.{name}: {mine[name]['type']} vs {col['type']}"
            assert mine[name]["pk"] == col["pk"], f"{table}.{name}: primary key differs"
            if col["notnull"] and (table, name) not in NULLABLE_IN_OURS:
                assert mine[name]["notnull"], f"{table}.{name} must be NOT NULL as in the original"
        assert _unique_columns(original_schema, table) <= _unique_columns(ours, table), f"{table}: UNIQUE differs"


def test_our_schema_has_every_index_the_original_creates(ours):
    for name, (table, cols) in ORIGINAL_INDEXES.items():
        wanted = tuple(re.sub(r"\s+DESC$", "", c.strip()) for c in cols.split(","))
        assert wanted in _index_columns(ours, table), f"no index on {table}{wanted} (the original's {name})"


def test_the_original_server_can_start_on_and_write_to_our_database(ours):
    original_start(ours)  # its CREATE TABLE IF NOT EXISTS, indexes and ALTERs: no "no such column"
    now = "2025-11-20 09:15:00"
    # Writes the way the original makes them: a role without an id, an audit entry with a text id.
    ours.execute("INSERT INTO agent_roles (key, label, description, active, created_at, updated_at)"
                 " VALUES ('ops', 'Ops', 'Runs things', 1, ?, ?)", (now, now))
    ours.execute("INSERT INTO audit_log (id, actor, action, details, created_at) VALUES ('x1', 'cli', 'a', '{}', ?)",
                 (now,))
    ours.execute("INSERT INTO tasks (id, queue_id, tool_name, task_class, payload, status, timeout, attempts,"
                 " created_at, updated_at) VALUES ('t1', 'q', 'tool', 'C', '{}', 'stale', 60, 0, ?, ?)", (now, now))
    assert isinstance(ours.execute("SELECT id FROM agent_roles WHERE key = 'ops'").fetchone()[0], int)


# Every column of the original's tables, its start-up ALTERs included.
_ORIGINAL_COLUMNS = {
    t: [c.split()[0] for c in cols if not c.startswith("PRIMARY")] + (["active"] if t == "prompts" else [])
    for t, cols in ORIGINAL_TABLES.items()
}


def _all_rows(db: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        return {
            t: conn.execute(f"SELECT {', '.join(_ORIGINAL_COLUMNS[t])} FROM {t} ORDER BY rowid").fetchall()
            for t in ORIGINAL_TABLES
        }
    finally:
        conn.close()


def test_an_original_database_is_upgraded_in_place_keeping_every_row(tmp_path):
    db = tmp_path / "sparkq.db"
    make_original_db(db)
    before = _all_rows(db)
    storage.setup_database(db)
    conn = sqlite3.connect(db)
    try:
        for table, rows in before.items():
            cols = ", ".join(_ORIGINAL_COLUMNS[table])
            after = conn.execute(f"SELECT {cols} FROM {table} ORDER BY rowid").fetchall()
            assert after == rows, f"{table} rows changed"
        assert conn.execute("SELECT id, typeof(id) FROM agent_roles ORDER BY id").fetchall() == [
            (1, "integer"), (2, "integer")]
        assert conn.execute("SELECT value FROM config WHERE key = 'theme'").fetchone()[0] == '"dark"'
        for table, (columns, _) in SCHEMA.items():
            assert {c[0] for c in columns} <= set(_columns(conn, table)), table
    finally:
        conn.close()


def test_migration_is_idempotent_and_takes_no_write_lock_when_up_to_date(tmp_path):
    db = tmp_path / "sparkq.db"
    make_original_db(db)
    storage.setup_database(db)
    schema = sqlite3.connect(db).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    holder = storage.connect(db)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock: an up-to-date migrate must not wait
    try:
        conn = storage.connect(db, timeout=0.1)
        try:
            assert storage.migrate(conn) == set()
        finally:
            conn.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert sqlite3.connect(db).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema


def test_reseed_on_an_original_database_adds_defaults_and_keeps_its_rows(project):
    make_original_db(project.db)
    before = _all_rows(project.db)
    proc = project.sh("setup", "--reseed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conn = sqlite3.connect(project.db)
    try:
        assert conn.execute("SELECT count(*) FROM prompts").fetchone()[0] == 33 + len(before["prompts"])
        # the original's roles keep their ids; defaults get the next numbers, never text ids
        assert conn.execute("SELECT id FROM agent_roles WHERE key = 'developer'").fetchone()[0] == 1
        assert {r[0] for r in conn.execute("SELECT typeof(id) FROM agent_roles")} == {"integer"}
        assert conn.execute("SELECT value FROM config WHERE key = 'theme'").fetchone()[0] == '"dark"'
        # defaults went in with every column the original requires (its NOT NULLs hold here)
        assert conn.execute("SELECT value FROM config WHERE key = 'auto_purge'").fetchone()[0] == "true"
    finally:
        conn.close()
