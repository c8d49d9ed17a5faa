"""supervisor/backup/exports.py on a real database: rows in the order BACKUP.md shows, both export
file forms read back, and what makes an export unreadable."""

from __future__ import annotations

import json
import sqlite3

import pytest

from supervisor.backup import exports
from supervisor.backup.layout import EXPORT_FILES


def test_every_export_kind_has_its_bundle_file():
    assert {spec[0] for spec in exports.EXPORTS.values()} == set(EXPORT_FILES.values())


def test_rows_show_the_documented_columns_first_sorted_by_the_first(seed_db):
    conn = sqlite3.connect(seed_db.absolute().as_uri() + "?mode=ro&immutable=1", uri=True)
    try:
        prompts = exports.rows(conn, "prompts")
        rendered = exports.render_exports(conn)
    finally:
        conn.close()
    assert len(prompts) == 33
    assert list(prompts[0])[:4] == ["id", "command", "label", "template_text"]
    assert [p["id"] for p in prompts] == sorted(p["id"] for p in prompts)
    assert set(rendered) == set(EXPORT_FILES.values())
    assert json.loads(rendered["prompts_export.json"]) == json.loads(exports.to_json(prompts))


def test_a_missing_table_exports_as_an_empty_list(tmp_path):
    conn = sqlite3.connect(tmp_path / "empty.db")
    try:
        assert exports.rows(conn, "tools") == []
    finally:
        conn.close()


@pytest.mark.parametrize("text, expected", [
    ("", "[]"),  # the original's output for an empty table
    ("  \n", "[]"),
    ('[\n{"a": 1},\n{"a": 2}\n]\n', '[\n{"a": 1},\n{"a": 2}\n]'),  # the original's one object per line
    ('[{"a": 1}]', '[{"a": 1}]'),
])
def test_read_export_takes_both_forms(tmp_path, text, expected):
    (tmp_path / "e.json").write_text(text)
    assert exports.read_export(tmp_path / "e.json") == expected


@pytest.mark.parametrize("data", [b'{"a": 1}', b'[{"a": ', b"\xff\xfe["])
def test_read_export_refuses_what_is_not_a_json_array(tmp_path, data):
    (tmp_path / "e.json").write_bytes(data)
    with pytest.raises(ValueError):
        exports.read_export(tmp_path / "e.json")
