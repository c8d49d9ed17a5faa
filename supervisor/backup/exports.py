"""The JSON exports of a bundle: one array of row objects per configuration table.

They are written from the snapshot (so they agree with the bundled DB) and read back for
`backup-export` / `export-prompts`; a legacy `.db` backup has no exports, so they are read
from the database inside it. The original SparkQ wrote its exports with sqlite3's `.mode json`:
one object per line inside `[...]`, and an empty file (not `[]`) for an empty table; `read_export`
takes both, and backup-verify uses it too, so the two commands always agree on an export.
"""

from __future__ import annotations

import json
import sqlite3

from ..errors import VerificationFailed
from .layout import EXPORT_FILES

# kind -> (table, columns BACKUP.md shows first; the rest follow)
_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "config": ("config", ("namespace", "key", "value")),
    "tools": ("tools", ("name", "description", "task_class")),
    "task-classes": ("task_classes", ("name", "timeout")),
    "prompts": ("prompts", ("id", "command", "label", "template_text", "description", "category", "active")),
    "agent-roles": ("agent_roles", ("key", "label", "description", "active")),
    "projects": ("projects", ("id", "name", "repo_path", "prd_path")),
}
# kind -> (file in the bundle, table, shown columns)
EXPORTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    kind: (EXPORT_FILES[kind], table, shown) for kind, (table, shown) in _TABLES.items()
}


def rows(conn: sqlite3.Connection, kind: str) -> list[dict]:
    """All rows of the table behind `kind`, shown columns first; a missing table gives []."""
    _file, table, shown = EXPORTS[kind]
    try:
        cur = conn.execute(f'SELECT * FROM "{table}"')
    except sqlite3.OperationalError:
        return []
    names = [d[0] for d in cur.description]
    order = [c for c in shown if c in names] + [c for c in names if c not in shown]
    out = []
    for row in cur:
        record = dict(zip(names, row))
        out.append({c: record[c] for c in order})
    key = shown[0] if shown[0] in names else None
    if key:
        out.sort(key=lambda r: (str(r.get(key)), str(r.get(order[1])) if len(order) > 1 else ""))
    return out


def to_json(data: list[dict]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def render_exports(conn: sqlite3.Connection) -> dict[str, bytes]:
    """Render every export from `conn`: {file name in the bundle: content}."""
    return {spec[0]: (to_json(rows(conn, kind)) + "\n").encode() for kind, spec in EXPORTS.items()}


def read_export(path) -> str:
    """The JSON text of an export file: a JSON array; an empty or blank file reads as `[]`.

    Raises ValueError (UnicodeDecodeError included) when the text is not a JSON array, OSError
    when the file cannot be read.
    """
    with open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    if not text.strip():
        return "[]"  # the original's output for an empty table
    if not isinstance(json.loads(text), list):
        raise ValueError("not a JSON array of rows")
    return text.rstrip("\n")


def export_problems(entry) -> list[str]:
    """Why the exports of bundle `entry` cannot be read, one line each (empty: all readable)."""
    problems = []
    for filename in EXPORT_FILES.values():
        try:
            path = entry.member(filename)
            if path is not None:
                read_export(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{filename}: not readable JSON ({exc})")
        except VerificationFailed as exc:  # a symlink or not a file; its message says so
            problems.append(str(exc))
    return problems


def _check_sum(entry, filename: str, path) -> None:
    """An export must be the file the backup wrote: an emptied or edited one would print other
    rows than the backup holds. The original's bundles carry no checksums; ours always do."""
    from ..fsutil import sha256_file

    expected = ((entry.manifest or {}).get("checksums") or {}).get(filename)
    if expected is None and not entry.ours:
        return
    if expected is None:
        problem = "is not part of the backup (its manifest has no checksum for it)"
    elif sha256_file(path) != str(expected).lower():
        problem = "checksum mismatch (the file changed since the backup was taken)"
    else:
        return
    raise VerificationFailed(f"{entry.name}/{filename}: {problem}; try another backup or ./sparkq.sh backup-verify")


def export_json(settings, ref: str, kind: str) -> str:
    """The export `kind` of backup `ref`, as JSON text: the bundle's file, else read from its DB."""
    from .catalog import resolve
    from .dbfiles import open_backup_db

    entry = resolve(settings, ref)
    filename = EXPORTS[kind][0]
    if entry.format == "bundle":
        if entry.unusable:
            raise VerificationFailed(f"backup {entry.name} cannot be trusted ({entry.unusable}); try another "
                                     "backup or ./sparkq.sh backup-verify")
        path = entry.member(filename)
        if path is not None:
            _check_sum(entry, filename, path)
            try:
                return read_export(path)
            except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                raise VerificationFailed(f"{path}: not readable JSON ({exc}); try another backup "
                                         "or ./sparkq.sh backup-verify") from None
    db = entry.db_file
    if db is None:
        raise VerificationFailed(f"backup {entry.name} has neither {filename} nor a database to read it from")
    try:
        with open_backup_db(db, entry.wal_file) as conn:
            return to_json(rows(conn, kind))
    except sqlite3.DatabaseError as exc:
        raise VerificationFailed(f"{db}: cannot be read ({exc}); try another backup") from None
