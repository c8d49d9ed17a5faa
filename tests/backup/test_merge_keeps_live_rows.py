"""`backup-restore N --tables ...` never deletes a live row (issue 11 item 3).

The class: every mergeable table with a unique key besides its primary key (`prompts.command`,
`agent_roles.key`, and whatever the schema gains later, read from SQLite, not listed here). For
each one, a backup row that clashes with a *different* live row on that key must be skipped and
reported, never replace (delete) the live row; the same for a backup row whose own primary key
matches but whose unique value another live row holds. Tables that number their rows
(`agent_roles`) match rows by that unique key instead, so there it is no clash: see
tests/backup/test_cross_origin_members.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from supervisor import config
from supervisor.backup import create, restore, restore_plan
from supervisor.initialize import run_setup


def _settings():
    return config.load(lenient=True)


def _unique_keys(conn, table: str) -> list[list[str]]:
    """Column lists of the UNIQUE constraints of `table` that are not its primary key."""
    keys = []
    for _seq, name, unique, origin, *_ in conn.execute(f'PRAGMA index_list("{table}")'):
        if unique and origin != "pk":
            cols = [r[2] for r in conn.execute(f'PRAGMA index_info("{name}")')]
            if None not in cols:
                keys.append(cols)
    return keys


def _pk(conn, table: str) -> list[str]:
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    return [r[1] for r in sorted((r for r in info if r[5] > 0), key=lambda r: r[5])]


def _numbered(conn, table: str, pk: list[str]) -> bool:
    kind = {r[1]: (r[2] or "").upper() for r in conn.execute(f'PRAGMA table_info("{table}")')}
    return len(pk) == 1 and kind[pk[0]] == "INTEGER"


def _fresh(conn, table: str, col: str, tag: str):
    """A value for `col` that no row has: text, or a large integer for integer columns."""
    kind = {r[1]: (r[2] or "").upper() for r in conn.execute(f'PRAGMA table_info("{table}")')}[col]
    if "INT" in kind:
        top = conn.execute(f'SELECT coalesce(max("{col}"), 0) FROM "{table}"').fetchone()[0]
        return int(top if isinstance(top, int) else 0) + 1000 + abs(hash(tag)) % 1000
    return f"{tag}-{col}"


def _copy_row(conn, table: str, changes: dict) -> dict:
    """Insert a copy of the table's first row with `changes`; returns the new row."""
    cur = conn.execute(f'SELECT * FROM "{table}" LIMIT 1')
    cols = [d[0] for d in cur.description]
    row = dict(zip(cols, cur.fetchone()))
    row.update(changes)
    marks = ", ".join("?" for _ in row)
    conn.execute(f'INSERT INTO "{table}" ({", ".join(row)}) VALUES ({marks})', list(row.values()))
    return row


def _get(db: Path, table: str, where: dict) -> dict | None:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        clause = " AND ".join(f'"{c}" IS ?' for c in where)
        row = conn.execute(f'SELECT * FROM "{table}" WHERE {clause}', list(where.values())).fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


def _all_rows(db: Path, table: str) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f'SELECT * FROM "{table}"')]
    finally:
        conn.close()


@pytest.fixture
def clashes(project):
    """A live DB and backup 1 that clash on every secondary unique key of every merge table.

    Per table and unique key: the backup holds row B (key kB, value V) and row A (key kA, value W);
    afterwards the live DB holds L (another key kL, value V: B must be skipped), A with value W2,
    and M (key kM, value W: A's update to W must be skipped)."""
    run_setup(_settings())
    conn = sqlite3.connect(project.db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    cases = []
    for table in restore_plan.MERGE_TABLES:
        pk = _pk(conn, table)
        for cols in _unique_keys(conn, table):
            if not pk or set(cols) & set(pk) or _numbered(conn, table, pk):
                continue
            tag = f"{table}-{'-'.join(cols)}"

            def key(name):
                return {c: _fresh(conn, table, c, f"{tag}-{name}") for c in pk}

            def val(name):
                return {c: _fresh(conn, table, c, f"{tag}-{name}-val") for c in cols}

            kb, ka, kl, km = key("b"), key("a"), key("l"), key("m")
            v, w, w2 = val("v"), val("w"), val("w2")
            _copy_row(conn, table, {**kb, **v})
            _copy_row(conn, table, {**ka, **w})
            cases.append({"table": table, "cols": cols, "kb": kb, "ka": ka, "kl": kl, "km": km,
                          "v": v, "w": w, "w2": w2})
    conn.close()
    assert {c["table"] for c in cases} >= {"prompts"}, cases
    create.create_backup(_settings(), trigger="manual")

    conn = sqlite3.connect(project.db, isolation_level=None)
    for c in cases:
        t = c["table"]
        where = " AND ".join(f'"{k}" = ?' for k in c["kb"])
        conn.execute(f'DELETE FROM "{t}" WHERE {where}', list(c["kb"].values()))
        where = " AND ".join(f'"{k}" = ?' for k in c["ka"])
        sets = ", ".join(f'"{k}" = ?' for k in c["w2"])
        conn.execute(f'UPDATE "{t}" SET {sets} WHERE {where}', [*c["w2"].values(), *c["ka"].values()])
        c["live_l"] = _copy_row(conn, t, {**c["kl"], **c["v"]})
        c["live_m"] = _copy_row(conn, t, {**c["km"], **c["w"]})
    conn.close()
    return project, cases


def test_merge_skips_every_unique_clash_and_deletes_no_live_row(clashes):
    project, cases = clashes
    tables = sorted({c["table"] for c in cases})
    before = {t: _all_rows(project.db, t) for t in tables}
    plans: list = []

    result = restore.restore_backup(_settings(), "1", tables=tables,
                                    confirm=lambda plan: plans.append(plan) or True)

    for t in tables:  # no live row is gone: every primary key of before is still there
        conn = sqlite3.connect(project.db)
        pk = _pk(conn, t)
        conn.close()
        for row in before[t]:
            assert _get(project.db, t, {c: row[c] for c in pk}) is not None, (t, row)
    for c in cases:
        t = c["table"]
        assert _get(project.db, t, c["kl"]) == c["live_l"], "the live-only row changed or vanished"
        assert _get(project.db, t, c["km"]) == c["live_m"]
        assert _get(project.db, t, c["kb"]) is None, "the clashing backup row was written anyway"
        assert _get(project.db, t, c["ka"])[c["cols"][0]] == c["w2"][c["cols"][0]]
        skipped = [s["key"] for s in result.merged[t]["skipped_rows"]]
        assert c["kb"] in skipped and c["ka"] in skipped
    for t in tables:
        info = result.merged[t]
        assert info["rows"] == info["written"] + info["skipped"]
    text = result.text()
    assert "skipped" in text and "the live row is kept" in text
    # The rule is in the plan, before the question.
    assert "no live row is ever deleted" in plans[0].text()
    assert "clashes with a different live row" in plans[0].text()


def test_merge_through_the_cli_reports_written_new_and_skipped(clashes):
    project, cases = clashes
    proc = project.cli("backup-restore", "1", "--tables", "prompts", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "rule: " in proc.stdout
    assert "written" in proc.stdout and "new)" in proc.stdout and "skipped" in proc.stdout
    c = next(c for c in cases if c["table"] == "prompts")
    assert f"is taken by live row {c['kl']['id']}" in proc.stdout
    assert _get(project.db, "prompts", c["kl"]) == c["live_l"]

    as_json = project.cli("backup-restore", "1", "--tables", "prompts", "--yes", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["merged"]["prompts"]["skipped"] >= 2
    assert data["plan"]["merge_rule"]
