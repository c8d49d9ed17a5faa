"""Connections, transactions, the additive migration, default data and row counts of the SparkQ server.

What the tables look like is declared in schema.py; `migrate` brings a database up to it.

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

from . import schema

# Tables that ship with default rows. Order matters: tools point at task classes.
SEEDED_TABLES: tuple[str, ...] = ("config", "prompts", "agent_roles", "task_classes", "tools", "projects")

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"

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
    if not schema.missing(conn):
        return set()
    created: set[str] = set()
    with transaction(conn):
        for kind, table, what in schema.missing(conn):  # again, under the write lock
            if kind == "table":
                columns, constraints = schema.SCHEMA[table]
                body = ",\n  ".join([f"{name} {decl}" for name, decl, _ in columns] + list(constraints))
                conn.execute(f"CREATE TABLE {table} (\n  {body}\n)")
                created.add(table)
            elif kind == "column":
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {what[0]} {what[2]}")
            else:
                conn.execute(f"CREATE INDEX IF NOT EXISTS idx_{table}_{'_'.join(what)} ON {table} ({', '.join(what)})")
    return created




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
            columns = schema.column_names(conn, table)
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
    existing = schema.table_names(conn)
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
    if table in ID_PREFIXES and not schema.integer_key(conn, table):
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
