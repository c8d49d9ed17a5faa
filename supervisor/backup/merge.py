"""`backup-restore N --tables ...`: merge rows of a backup's configuration tables into the live DB.

A merge never deletes a live row. Each backup row is written with `INSERT OR ABORT` / `UPDATE OR
ABORT` (an explicit conflict clause: a table's own `ON CONFLICT REPLACE` would otherwise delete
the row in the way), inside a savepoint, so a clash undoes that one row and nothing else:

- a backup row whose primary key matches a live row updates that row (the backup's values win);
- a backup row with a primary key the live table lacks is added;
- a backup row that clashes with a *different* live row on another unique column
  (`prompts.command`, `agent_roles.key`, ...) or breaks another constraint is skipped and listed;
  the live row stays as it is;
- in a table that numbers its rows (`agent_roles`, as the original SparkQ does) a number says
  nothing across databases: two databases give number 9 to different roles, and a text id such
  as `rol_...` from one of our older databases is no number at all. There a row is matched by
  the table's other unique key (`key`) instead: it updates the live row with that key, or is
  added under a new number;
- a row whose foreign key points at nothing in the live database (a tool whose task class the
  live database lacks) is skipped and listed like a clash.

Constraints are read from the live schema, not listed here, so a table or unique index added
later follows the same rule. All tables go in one transaction (`storage.transaction`); foreign
keys are checked for each row in its savepoint, and once more at the commit.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import Interrupted, SparkqError
from .dbfiles import fold_copy
from .layout import readonly_uri

RULE = (
    "a backup row with the same primary key as a live row updates it; a row with a new key is "
    "added; a row that clashes with a different live row on another unique column "
    "(e.g. prompts.command, agent_roles.key) is skipped and listed, and the live row is kept; "
    "in a table that numbers its rows (agent_roles) rows are matched by their other unique key; "
    "a row whose foreign key points at nothing in the live database is skipped and listed; "
    "no live row is ever deleted"
)
SHOWN_SKIPS = 5  # skipped rows listed per table in the text output (JSON lists them all)


@dataclass
class TableMerge:
    rows: int = 0  # rows in the backup's table
    written: int = 0  # backup rows now in the live table (updated or added)
    added: int = 0  # of those, rows the live table did not have
    skipped: int = 0
    skipped_rows: list[dict] = field(default_factory=list)  # {"key": ..., "reason": ...}
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def merge_backup(entry, live_db: Path, tables: list[str], *, kept_in: str) -> dict[str, TableMerge]:
    """Merge `tables` of backup `entry` (a 2.1 bundle's DB + WAL folded into a temp copy first)
    into `live_db`; on failure the live DB is unchanged, and its state before is in `kept_in`."""
    wal = None if entry.format == "legacy" else entry.wal_file
    with tempfile.TemporaryDirectory(prefix="sparkq-merge-") as tmp:
        source = entry.db_file
        if wal is not None and wal.stat().st_size > 0:
            source = fold_copy(source, wal, Path(tmp))
        try:
            merged = merge_tables(live_db, source, tables)
        except sqlite3.Error as exc:
            raise SparkqError(f"merging tables from {entry.name} failed ({exc}); the database is unchanged "
                              f"(its previous state is also in {kept_in})") from None
        except KeyboardInterrupt:
            raise Interrupted(f"merge interrupted; the database is unchanged (its state before is also in "
                              f"{kept_in})") from None
    return merged


def merged_lines(backup: str, merged: dict[str, dict]) -> list[str]:
    """The text report of a merge (TableMerge.to_dict per table), SHOWN_SKIPS skipped rows each."""
    lines = [f"Merged from {backup} into the current database:"]
    for table, info in merged.items():
        if info.get("note"):
            lines.append(f"  {table}: {info['note']}")
            continue
        lines.append(f"  {table}: {info['rows']} rows in the backup: {info['written']} written "
                     f"({info['added']} of them new), {info['skipped']} skipped")
        for skip in info["skipped_rows"][:SHOWN_SKIPS]:
            key = ", ".join(f"{k}={v}" for k, v in skip["key"].items())
            lines.append(f"    skipped {key}: {skip['reason']}; the live row is kept")
        if info["skipped"] > SHOWN_SKIPS:
            lines.append(f"    ... and {info['skipped'] - SHOWN_SKIPS} more (see --json)")
    return lines


def merge_tables(live_db: Path, source_db: Path, tables: list[str]) -> dict[str, TableMerge]:
    """Merge `tables` of `source_db` (read-only, nobody else's) into `live_db`; one transaction."""
    from sparkq import storage

    # A URI main connection, so that ATTACH reads the next URI as one on every SQLite build.
    conn = sqlite3.connect(Path(live_db).absolute().as_uri(), uri=True, timeout=5, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("ATTACH DATABASE ? AS bk", (readonly_uri(source_db),))
        merged: dict[str, TableMerge] = {}
        with storage.transaction(conn):
            conn.execute("PRAGMA defer_foreign_keys=ON")  # checked once, at COMMIT
            for table in tables:
                merged[table] = _merge_table(conn, table)
        return merged
    finally:
        conn.close()


def _merge_table(conn: sqlite3.Connection, table: str) -> TableMerge:
    live = conn.execute(f'PRAGMA main.table_info("{table}")').fetchall()
    backup_cols = {r[1] for r in conn.execute(f'PRAGMA bk.table_info("{table}")')}
    if not live or not backup_cols:
        where = "backup" if not backup_cols else "current database"
        return TableMerge(note=f"table {table} is missing from the {where}; skipped")
    cols = [r[1] for r in live if r[1] in backup_cols]
    pk = [r[1] for r in sorted((r for r in live if r[5] > 0), key=lambda r: r[5])]
    if not set(pk) <= set(cols):
        pk = []  # the backup lacks a key column: its rows can only be added
    quoted = ", ".join(f'"{c}"' for c in cols)
    result = TableMerge()
    numbered = _numbered_key(live, pk)
    orphans_before = _orphans(conn, table)  # the live table's own, not the merge's to judge
    for row in conn.execute(f'SELECT {quoted} FROM bk."{table}"').fetchall():
        result.rows += 1
        values = dict(zip(cols, row))
        key = {c: values[c] for c in pk} if pk else values
        where, match = _match(pk), [values[c] for c in pk]
        if numbered:
            where, match = _by_other_key(conn, table, values)
        exists = bool(where) and conn.execute(f'SELECT 1 FROM main."{table}" WHERE {where}', match).fetchone()
        conn.execute("SAVEPOINT merge_row")
        try:
            if exists:
                others = [c for c in cols if c not in pk]
                if others:
                    sets = ", ".join(f'"{c}" = ?' for c in others)
                    conn.execute(f'UPDATE OR ABORT main."{table}" SET {sets} WHERE {where}',
                                 [values[c] for c in others] + match)
            else:
                # In a numbered table the live database gives the row its number.
                put = [c for c in cols if not (numbered and c in pk)]
                names = ", ".join(f'"{c}"' for c in put)
                marks = ", ".join("?" for _ in put)
                conn.execute(f'INSERT OR ABORT INTO main."{table}" ({names}) VALUES ({marks})',
                             [values[c] for c in put])
            _check_parents(conn, table, orphans_before)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO merge_row")
            conn.execute("RELEASE merge_row")
            result.skipped += 1
            result.skipped_rows.append({"key": key, "reason": _reason(conn, table, exc, values, pk)})
            continue
        conn.execute("RELEASE merge_row")
        result.written += 1
        result.added += 0 if exists else 1
    return result


def _orphans(conn, table: str) -> set:
    """Rowids of the live table whose foreign key points at nothing."""
    return {r[1] for r in conn.execute(f'PRAGMA main.foreign_key_check("{table}")')}


def _check_parents(conn, table: str, before: set) -> None:
    """Foreign keys are checked only at COMMIT (tables go in any order), so a row whose parent
    the live database lacks would fail the whole merge there: find it now, inside its savepoint."""
    new = _orphans(conn, table) - before
    if new:
        raise sqlite3.IntegrityError("FOREIGN KEY constraint failed: it points at a row the live database lacks")


def _numbered_key(live_info: list, pk: list[str]) -> bool:
    """The live table numbers its rows: one INTEGER PRIMARY KEY column (SQLite's rowid)."""
    return len(pk) == 1 and any(r[1] == pk[0] and r[2].upper() == "INTEGER" for r in live_info)


def _by_other_key(conn, table: str, values: dict) -> tuple[str, list]:
    """A WHERE clause matching `values` on the first other unique key the live table has (all
    its columns present in the backup row); ('', []) when there is none."""
    for _seq, index, unique, origin, *_ in conn.execute(f'PRAGMA main.index_list("{table}")').fetchall():
        if not unique or origin == "pk":
            continue
        cols = [r[2] for r in conn.execute(f'PRAGMA main.index_info("{index}")')]
        if cols and None not in cols and all(c in values for c in cols):
            return _match(cols), [values[c] for c in cols]
    return "", []


def _match(cols: list[str]) -> str:
    return " AND ".join(f'"{c}" IS ?' for c in cols)


def _reason(conn, table: str, exc: sqlite3.IntegrityError, values: dict, pk: list[str]) -> str:
    """'command 'x' is taken by live row prm_1' for a unique clash; SQLite's words otherwise."""
    text = str(exc)
    prefix = "UNIQUE constraint failed: "
    if not text.startswith(prefix):
        return text
    cols = [part.strip().split(".", 1)[-1] for part in text[len(prefix):].split(",")]
    if not all(c in values for c in cols):
        return text
    shown = ", ".join(f"{c} {values[c]!r}" for c in cols)
    holder = None
    if pk:
        key_cols = ", ".join(f'"{c}"' for c in pk)
        found = conn.execute(f'SELECT {key_cols} FROM main."{table}" WHERE {_match(cols)}',
                             [values[c] for c in cols]).fetchone()
        holder = ", ".join(str(v) for v in found) if found else None
    return f"{shown} is taken by live row {holder}" if holder else f"{shown} is already taken"
