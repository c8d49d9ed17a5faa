"""tests/original.py builds what ORIGINAL.md describes, and our catalog reads every shape of it."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import datetime, timezone

from original import (
    make_original_bundle, make_original_db, make_original_legacy, make_original_pre_restore, local_stamp,
)


def test_original_database_has_its_ids_values_and_constraints(tmp_path):
    db = tmp_path / "o.db"
    make_original_db(db)
    conn = sqlite3.connect(db)
    try:
        assert {r[0] for r in conn.execute("SELECT typeof(id) FROM agent_roles")} == {"integer"}
        assert json.loads(conn.execute("SELECT value FROM config WHERE key = 'theme'").fetchone()[0]) == "dark"
        audit = {r[1]: (r[2], r[3]) for r in conn.execute("PRAGMA table_info(audit_log)")}
        assert audit == {"id": ("TEXT", 0), "actor": ("TEXT", 0), "action": ("TEXT", 1), "details": ("TEXT", 0),
                         "created_at": ("TEXT", 1)}
        sessions = {r[1]: r[3] for r in conn.execute("PRAGMA table_info(sessions)")}
        assert sessions["started_at"] == 1 and sessions["project_id"] == 1 and "description" in sessions
        assert "active" in {r[1] for r in conn.execute("PRAGMA table_info(prompts)")}  # its start-up ALTER
    finally:
        conn.close()


def test_original_bundle_shapes(tmp_path):
    bd = tmp_path / "backups"
    good = make_original_bundle(bd, "20251120_091500", wal_rows=2, empty_tables=("tools",))
    manifest = json.loads((good / "manifest.json").read_text())
    assert manifest["backup_version"] == "2.1" and isinstance(manifest["files"], dict)
    assert manifest["database"]["size"] == "184K" and "checksums" not in manifest and "trigger" not in manifest
    assert manifest["created_at"].endswith("+01:00")
    assert (good / "tools_export.json").read_bytes() == b""
    assert (good / "sparkq.db-wal").stat().st_size > 0 and (good / "sparkq.db-shm").exists()
    for top, dirs, files in os.walk(good):
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o755
        assert {stat.S_IMODE(os.stat(os.path.join(top, f)).st_mode) for f in files} == {0o644}

    damaged = make_original_bundle(bd, "20251120_101500", damaged=True)
    text = (damaged / "manifest.json").read_text()
    try:
        json.loads(text)
        raise AssertionError("the damaged bundle's manifest must not be JSON")
    except ValueError:
        pass
    assert "Page 3" in text and (damaged / ".env").read_text().startswith("ORIGINAL_TOKEN=")
    try:
        sqlite3.connect(damaged / "sparkq.db").execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError:
        pass


def test_our_catalog_reads_every_original_shape(project):
    from supervisor import config
    from supervisor.backup import catalog

    bd = project.backup_dir
    make_original_bundle(bd, "20251120_091500", wal_rows=2)
    make_original_bundle(bd, "20251120_101500", damaged=True)
    legacy_stamp = local_stamp(datetime(2025, 11, 19, 8, 0, tzinfo=timezone.utc))
    make_original_legacy(bd, legacy_stamp)
    make_original_pre_restore(bd, "20251120_081500")
    regular, pre = catalog.scan(config.load().paths.backup_dir)
    by_name = {e.name: e for e in regular + pre}
    assert "not valid JSON" in by_name["sparkq_20251120_101500"].damaged
    assert by_name[f"sparkq_{legacy_stamp}.db"].legacy_yml is not None
    assert by_name["sparkq_20251120_091500"].damaged is None
    assert [e.name for e in pre] == ["sparkq_preRestore_20251120_081500.db"]
    listing = project.cli("backup-list")
    assert listing.returncode == 0 and "DAMAGED" in listing.stdout, listing.stderr
