"""Issue 11.2: a database that is empty, not SQLite, or has none of SparkQ's tables, while backups
exist, is refused like a missing one: exit 2, what to do, nothing pruned, nothing seeded.
A database of the original SparkQ (its own schema, see ../shared/ORIGINAL.md) is accepted."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta

import pytest

from helpers import T0, live_state, make_bundle, one_line_error, stamp


def _empty(db):
    db.write_bytes(b"")


def _random(db):
    db.write_bytes(os.urandom(8192))


def _foreign(db):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.commit()
    conn.close()


def _prepare(project, seed_db, spoil):
    for name in (f"sparkq_{stamp(T0 - timedelta(days=i))}" for i in range(3)):
        make_bundle(project.backup_dir, name, seed_db)
    for leftover in project.db.parent.glob("sparkq.db*"):
        leftover.unlink()
    spoil(project.db)


@pytest.mark.parametrize("spoil", [_empty, _random, _foreign], ids=["0-byte", "random-bytes", "no-sparkq-tables"])
@pytest.mark.parametrize("command", [["start"], ["run"], ["start", "--skip-backup"], ["restart"], ["backup"]])
def test_unusable_database_with_backups_is_refused(project, fake, seed_db, spoil, command):
    """`backup` too: a manual or timer backup of an emptied database would write an "integrity
    ok" bundle of nothing and prune the real ones past keep."""
    _prepare(project, seed_db, spoil)
    before = live_state(project)
    proc = project.cli(*command)
    line = one_line_error(proc, codes={2})
    assert str(project.db) in line and "backup-restore 1 --db-only" in line and "setup" in line, line
    assert live_state(project) == before  # nothing pruned, nothing seeded, no bundle written
    assert fake.spawn_count() == 0


def _original_db(db):
    """A few tables as the original SparkQ creates them (ORIGINAL.md): integer role ids, NOT NULL
    timestamps, no table of ours that the original lacks."""
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, repo_path TEXT, prd_path TEXT,
                               created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE agent_roles (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                                  label TEXT NOT NULL, description TEXT NOT NULL, active INTEGER NOT NULL DEFAULT 1,
                                  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE prompts (id TEXT PRIMARY KEY, command TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
                              template_text TEXT NOT NULL, description TEXT, category TEXT,
                              created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
        INSERT INTO agent_roles (key, label, description, created_at, updated_at)
            VALUES ('dev', 'Dev', 'writes code', '2025-01-01', '2025-01-01');
    """)
    conn.close()


def test_a_database_of_the_original_sparkq_is_accepted(project, fake, seed_db):
    _prepare(project, seed_db, _original_db)
    proc = project.cli("start")
    assert proc.returncode == 0, proc.stderr
    assert project.cli("stop").returncode == 0
