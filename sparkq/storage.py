"""SQLite schema, additive migrations and default data of the SparkQ server.

Standard library only: the supervisor imports this module for backups and restores and must not
pay for (or depend on) the HTTP stack.

Connections from `connect` run in autocommit mode; group writes with `transaction(conn)`, which
takes the write lock up front (`BEGIN IMMEDIATE`) so two writers queue on `busy_timeout` instead of
failing half-way through.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

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
# Tables that ship with default rows. Order matters: tools point at task classes.
SEEDED_TABLES: tuple[str, ...] = ("config", "prompts", "agent_roles", "task_classes", "tools", "projects")
TASK_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed")

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"

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
_NOW = "(strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))"  # the same text as utc_now()
_STAMP = f"TEXT NOT NULL DEFAULT {_NOW}"
_STAMPS: tuple[_Column, ...] = (("created_at", _STAMP, "TEXT"), ("updated_at", _STAMP, "TEXT"))

_SCHEMA: dict[str, tuple[tuple[_Column, ...], tuple[str, ...]]] = {
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

# Natural key of each seeded table: a default counts as present when a row with this key exists.
_NATURAL_KEYS: dict[str, tuple[str, ...]] = {
    "config": ("namespace", "key"),
    "prompts": ("command",),
    "agent_roles": ("key",),
    "task_classes": ("name",),
    "tools": ("name",),
    "projects": ("id",),
}
# Tables whose id the server makes up, with the prefix that tells ids apart at a glance.
ID_PREFIXES: dict[str, str] = {
    "prompts": "prm",
    "agent_roles": "rol",
    "projects": "prj",
    "sessions": "ses",
    "queues": "que",
    "tasks": "tsk",
}
# Keys of `counts`, in manifest order, and the table each one counts.
_COUNTED: dict[str, str] = {
    "config_entries": "config",
    "prompts": "prompts",
    "agent_roles": "agent_roles",
    "tools": "tools",
    "task_classes": "task_classes",
    "sessions": "sessions",
    "queues": "queues",
    "tasks": "tasks",
}


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds; fixed width, so text order is time order."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def connect(path: str | Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """Open (and create) the database in WAL mode with foreign keys on; autocommit mode."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in one write transaction; joins the caller's transaction when one is open."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> set[str]:
    """Create missing tables, columns and indexes; never drops, renames or rewrites anything.

    Also upgrades a database made by the original SparkQ in place: its tables gain our columns,
    its rows (integer agent-role ids, JSON config values) stay as they are. Runs at every server
    start, so an up-to-date database costs a few PRAGMA reads and no write lock. Returns the
    names of the tables created by this call.
    """
    if not _missing(conn):
        return set()
    created: set[str] = set()
    with transaction(conn):
        for kind, table, what in _missing(conn):  # again, under the write lock
            if kind == "table":
                columns, constraints = _SCHEMA[table]
                body = ",\n  ".join([f"{name} {decl}" for name, decl, _ in columns] + list(constraints))
                conn.execute(f"CREATE TABLE {table} (\n  {body}\n)")
                created.add(table)
            elif kind == "column":
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {what[0]} {what[2]}")
            else:
                conn.execute(f"CREATE INDEX IF NOT EXISTS idx_{table}_{'_'.join(what)} ON {table} ({', '.join(what)})")
    return created


def _missing(conn: sqlite3.Connection) -> list[tuple[str, str, tuple]]:
    """What migrate has to add, in order: ("table"|"column"|"index", table, details)."""
    todo: list[tuple[str, str, tuple]] = []
    existing = _table_names(conn)
    for table, (columns, _constraints) in _SCHEMA.items():
        if table not in existing:
            todo.append(("table", table, ()))
            continue
        present = _column_names(conn, table)
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


def encode_config_value(value) -> str:
    """A config value as stored: JSON text, as the original SparkQ stores it ("dark" -> '"dark"')."""
    return json.dumps(value, ensure_ascii=False)


def decode_config_value(text):
    """A stored config value as the API shows it: a JSON string unquoted, anything else as stored.

    So "dark" (stored '"dark"') reads "dark", 8 (stored '8') reads "8", and text written by older
    versions of ours that is not JSON ('dark') reads as it is.
    """
    if not isinstance(text, str):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def load_defaults() -> dict[str, list[dict]]:
    """Default rows per table, read from `sparkq/defaults/<table>.json`."""
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DEFAULTS_DIR.glob("*.json"))
    }


def seed(conn: sqlite3.Connection, tables: Iterable[str] | None = None, *, reseed: bool = False) -> dict[str, int]:
    """Insert the default rows of `tables` (all seeded tables when None).

    Without `reseed` a table that already holds rows is left alone, so this is meant for freshly
    created tables. With `reseed` every default whose natural key is absent is added back; rows
    that exist, changed or not, are never touched. Returns the rows inserted per table.
    """
    wanted = set(SEEDED_TABLES if tables is None else tables)
    unknown = wanted - set(SEEDED_TABLES)
    if unknown:
        raise ValueError(f"no defaults for table(s): {', '.join(sorted(unknown))}")
    defaults = load_defaults()
    inserted: dict[str, int] = {}
    now = utc_now()
    with transaction(conn):
        for table in SEEDED_TABLES:  # fixed order: task classes before the tools that use them
            if table not in wanted:
                continue
            if not reseed and conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                inserted[table] = 0
                continue
            columns = _column_names(conn, table)
            inserted[table] = sum(
                _insert_default(conn, table, row, columns, now) for row in defaults.get(table, [])
            )
    return inserted


def setup_database(path: str | Path, *, reseed: bool = False) -> dict:
    """Create or upgrade the database at `path` and seed what is new, in one transaction.

    Only tables created now get their defaults, so re-running keeps every existing row and does
    not bring back a default the user deleted; `reseed` adds missing defaults to all seeded tables.
    """
    conn = connect(path)
    try:
        with transaction(conn):
            created = migrate(conn)
            targets = SEEDED_TABLES if reseed else tuple(t for t in SEEDED_TABLES if t in created)
            seeded = seed(conn, targets, reseed=reseed) if targets else {}
    finally:
        checkpoint_and_close(conn)
    return {"created": sorted(created), "seeded": seeded}


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Row counts under the manifest's key names; a missing table counts 0."""
    existing = _table_names(conn)
    return {
        key: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if table in existing else 0
        for key, table in _COUNTED.items()
    }


def is_busy(exc: BaseException) -> bool:
    """Whether an sqlite3 error means "another connection holds a lock" (SQLITE_BUSY/LOCKED)."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def checkpoint_and_close(conn: sqlite3.Connection) -> None:
    """Fold the WAL back into the main file, then close; the file then stands alone."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass  # closing still checkpoints when this is the last connection
    finally:
        conn.close()


def _insert_default(conn: sqlite3.Connection, table: str, row: dict, columns: set[str], now: str) -> int:
    row = dict(row)
    if table in ID_PREFIXES and not integer_key(conn, table):
        row.setdefault("id", new_id(ID_PREFIXES[table]))
    if "active" in row:
        row["active"] = int(bool(row["active"]))
    for stamp in ("created_at", "updated_at"):
        if stamp in columns:
            row.setdefault(stamp, now)
    if table == "config":
        row.setdefault("updated_by", "defaults")
        row["value"] = encode_config_value(row["value"])
    names = [name for name in row if name in columns]
    keys = _NATURAL_KEYS[table]
    # The NOT EXISTS guard (rather than relying on a UNIQUE constraint) also holds for tables
    # made by older versions that may lack the constraint.
    guard = "NOT EXISTS (SELECT 1 FROM {t} WHERE {w})".format(t=table, w=" AND ".join(f"{k} = ?" for k in keys))
    params = [row[n] for n in names] + [row[k] for k in keys]
    if table == "tools":  # skip a default tool whose task class the user has deleted
        guard += " AND EXISTS (SELECT 1 FROM task_classes WHERE name = ?)"
        params.append(row["task_class"])
    sql = "INSERT OR IGNORE INTO {t} ({c}) SELECT {p} WHERE {g}".format(
        t=table, c=", ".join(names), p=", ".join("?" for _ in names), g=guard
    )
    return conn.execute(sql, params).rowcount


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _column_names(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
