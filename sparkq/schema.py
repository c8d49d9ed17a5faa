"""The tables, columns and indexes of a SparkQ database, and what a given database has of them.

Declarations and read-only questions only (which tables and columns exist, what is missing, which
ids SQLite numbers): `storage.migrate` applies what this module describes, in a write transaction.
Standard library only and no imports of ours, so storage.py, the server and the supervisor all
build on it.
"""

from __future__ import annotations

import sqlite3

TABLES: tuple[str, ...] = (
    "config",
    "prompts",
    "agent_roles",
    "task_classes",
    "tools",
    "projects",
    "sessions",
    "queues",
    "tasks",
    "audit_log",
)
# The statuses our API gives a task; the column itself takes any (see tasks.status below).
TASK_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed")

# Each column: (name, declaration in CREATE TABLE, declaration when added to an older table).
# ALTER TABLE ADD COLUMN cannot add PRIMARY KEY/UNIQUE columns, nor a non-constant default, and
# NOT NULL needs a non-null default, so the "added" form keeps only the type and a constant default.
#
# The schema is a superset of the original SparkQ's (see docs/BACKUP.md, "Older backup formats"):
# every column it declares is here with the same type, and every column it declares NOT NULL is
# NOT NULL here too. Those get a DEFAULT so that rows written by hand or by older code still go in;
# the server itself always writes every one of them explicitly, because a database made by the
# original has the NOT NULLs without our defaults.
_Column = tuple[str, str, str]
_NOW = "(strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))"  # the same text as storage.utc_now()
_STAMP = f"TEXT NOT NULL DEFAULT {_NOW}"
_STAMPS: tuple[_Column, ...] = (("created_at", _STAMP, "TEXT"), ("updated_at", _STAMP, "TEXT"))

SCHEMA: dict[str, tuple[tuple[_Column, ...], tuple[str, ...]]] = {
    "config": (
        (
            ("namespace", "TEXT NOT NULL", "TEXT"),
            ("key", "TEXT NOT NULL", "TEXT"),
            ("value", "TEXT NOT NULL DEFAULT 'null'", "TEXT"),  # JSON text, see encode_config_value
            ("updated_at", _STAMP, "TEXT"),
            ("updated_by", "TEXT", "TEXT"),
        ),
        ("PRIMARY KEY (namespace, key)",),
    ),
    "prompts": (
        (
            ("id", "TEXT PRIMARY KEY", "TEXT"),
            ("command", "TEXT NOT NULL UNIQUE", "TEXT"),
            ("label", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("template_text", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("description", "TEXT", "TEXT"),
            ("category", "TEXT", "TEXT"),
            ("active", "INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1))", "INTEGER DEFAULT 1"),
            *_STAMPS,
        ),
        (),
    ),
    "agent_roles": (
        (
            # INTEGER like the original's, so either server can insert a role without naming its id.
            ("id", "INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER"),
            ("key", "TEXT NOT NULL UNIQUE", "TEXT"),
            ("label", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("description", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("active", "INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1))", "INTEGER DEFAULT 1"),
            *_STAMPS,
        ),
        (),
    ),
    "task_classes": (
        (
            ("name", "TEXT PRIMARY KEY", "TEXT"),
            ("timeout", "INTEGER NOT NULL CHECK (timeout > 0)", "INTEGER"),
            ("description", "TEXT", "TEXT"),
            *_STAMPS,
        ),
        (),
    ),
    "tools": (
        (
            ("name", "TEXT PRIMARY KEY", "TEXT"),
            ("description", "TEXT", "TEXT"),
            ("task_class", "TEXT NOT NULL REFERENCES task_classes(name)", "TEXT REFERENCES task_classes(name)"),
            *_STAMPS,
        ),
        (),
    ),
    "projects": (
        (
            ("id", "TEXT PRIMARY KEY", "TEXT"),
            ("name", "TEXT NOT NULL", "TEXT"),
            ("repo_path", "TEXT", "TEXT"),
            ("prd_path", "TEXT", "TEXT"),
            *_STAMPS,
        ),
        (),
    ),
    "sessions": (
        (
            ("id", "TEXT PRIMARY KEY", "TEXT"),
            # Nullable, unlike the original's: our API lets a session go without a project.
            ("project_id", "TEXT REFERENCES projects(id)", "TEXT REFERENCES projects(id)"),
            ("name", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("description", "TEXT", "TEXT"),
            ("status", "TEXT NOT NULL DEFAULT 'active'", "TEXT DEFAULT 'active'"),
            ("started_at", _STAMP, "TEXT"),
            *_STAMPS,
            ("ended_at", "TEXT", "TEXT"),
        ),
        (),
    ),
    "queues": (
        (
            ("id", "TEXT PRIMARY KEY", "TEXT"),
            # Nullable, unlike the original's: our API lets a queue go without a session.
            ("session_id", "TEXT REFERENCES sessions(id)", "TEXT REFERENCES sessions(id)"),
            ("name", "TEXT NOT NULL UNIQUE", "TEXT"),
            ("instructions", "TEXT", "TEXT"),
            ("codex_session_id", "TEXT", "TEXT"),
            ("default_agent_role_key", "TEXT", "TEXT"),
            ("status", "TEXT NOT NULL DEFAULT 'active'", "TEXT DEFAULT 'active'"),
            *_STAMPS,
        ),
        (),
    ),
    "tasks": (
        (
            ("id", "TEXT PRIMARY KEY", "TEXT"),
            ("queue_id", "TEXT NOT NULL REFERENCES queues(id)", "TEXT REFERENCES queues(id)"),
            ("tool_name", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("task_class", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("payload", "TEXT NOT NULL DEFAULT 'null'", "TEXT"),
            ("agent_role_key", "TEXT", "TEXT"),
            # No CHECK on status: the original writes statuses of its own; the API checks ours.
            ("status", "TEXT NOT NULL DEFAULT 'queued'", "TEXT DEFAULT 'queued'"),
            ("timeout", "INTEGER NOT NULL DEFAULT 600 CHECK (timeout > 0)", "INTEGER"),
            ("attempts", "INTEGER NOT NULL DEFAULT 0", "INTEGER DEFAULT 0"),
            ("result", "TEXT", "TEXT"),
            ("error", "TEXT", "TEXT"),
            ("stdout", "TEXT", "TEXT"),
            ("stderr", "TEXT", "TEXT"),
            *_STAMPS,
            ("claimed_at", "TEXT", "TEXT"),
            ("stale_warned_at", "TEXT", "TEXT"),
            ("started_at", "TEXT", "TEXT"),
            ("finished_at", "TEXT", "TEXT"),
        ),
        (),
    ),
    "audit_log": (
        (
            # TEXT like the original's; databases made by older versions of ours keep INTEGER ids
            # (the server asks which, see integer_key). `at`/`detail` are ours, `created_at`/
            # `details` the original's; the server writes both pairs.
            ("id", "TEXT PRIMARY KEY DEFAULT ('aud_' || lower(hex(randomblob(8))))", "TEXT"),
            ("at", "TEXT", "TEXT"),
            ("actor", "TEXT", "TEXT"),
            ("action", "TEXT NOT NULL DEFAULT ''", "TEXT"),
            ("entity", "TEXT", "TEXT"),
            ("entity_id", "TEXT", "TEXT"),
            ("detail", "TEXT", "TEXT"),
            ("details", "TEXT", "TEXT"),
            ("created_at", _STAMP, "TEXT"),
        ),
        (),
    ),
}
# (table, columns) of every index: ours first, then the ones the original creates. An index is
# made only when no index of the table has the same columns already (the original's databases
# carry their own under other names).
_INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tasks", ("queue_id", "status", "created_at")),
    ("tasks", ("queue_id", "status")),
    ("tasks", ("queue_id", "created_at")),
    ("tasks", ("status",)),
    ("tasks", ("started_at",)),
    ("tasks", ("created_at",)),
    ("prompts", ("command",)),
    ("queues", ("session_id",)),
    ("queues", ("status",)),
    ("sessions", ("project_id",)),
    ("sessions", ("status",)),
    ("tools", ("task_class",)),
    ("config", ("namespace",)),
)


def missing(conn: sqlite3.Connection) -> list[tuple[str, str, tuple]]:
    """What `storage.migrate` has to add, in order: ("table"|"column"|"index", table, details)."""
    todo: list[tuple[str, str, tuple]] = []
    existing = table_names(conn)
    for table, (columns, _constraints) in SCHEMA.items():
        if table not in existing:
            todo.append(("table", table, ()))
            continue
        present = column_names(conn, table)
        todo += [("column", table, column) for column in columns if column[0] not in present]
    indexed: dict[str, set[tuple[str, ...]]] = {}
    for table, columns in _INDEXES:
        if table not in indexed:
            indexed[table] = _indexed_columns(conn, table)
        if columns not in indexed[table]:
            indexed[table].add(columns)
            todo.append(("index", table, columns))
    return todo


def _indexed_columns(conn: sqlite3.Connection, table: str) -> set[tuple[str, ...]]:
    """The column lists of every index on `table` (UNIQUE and PRIMARY KEY ones included)."""
    return {
        tuple(r[2] for r in conn.execute(f"PRAGMA index_info('{index[1]}')"))
        for index in conn.execute(f"PRAGMA index_list('{table}')").fetchall()
    }


def integer_key(conn: sqlite3.Connection, table: str) -> bool:
    """Whether `table`'s id is an INTEGER PRIMARY KEY that SQLite numbers itself.

    Agent roles and audit entries have integer ids in some databases (the original's roles, our
    older audit log) and text ids in others; a writer leaves an integer id to SQLite and makes up
    a text one. Never rewriting ids is what lets either server keep using the database.
    """
    for row in conn.execute(f"PRAGMA table_info('{table}')"):
        if row[1] == "id":
            return row[5] == 1 and row[2].upper() == "INTEGER"
    return False


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def column_names(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
