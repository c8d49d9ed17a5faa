"""Counts and size of an original 2.1 bundle that carries a `-wal`: backup-show reads them from its
database with the WAL folded in (what a restore gives) without modifying the bundle; backup-list,
which reads manifests only, marks them as the manifest's (issue 12 item 7)."""

from __future__ import annotations

import json
import sqlite3

from helpers import tree_state
from original import make_original_bundle

WRONG_LIVE_COUNTS = {"config_entries": 9, "prompts": 99, "agent_roles": 9, "tools": 9, "task_classes": 9,
                     "sessions": 9, "queues": 9, "tasks": 9}


def _restored_prompts(bundle) -> int:
    """What a restore gives: the bundle's files copied, opened as SQLite opens a live database."""
    copy = bundle.parent.parent / "folded-check"
    copy.mkdir()
    for name in ("sparkq.db", "sparkq.db-wal"):
        (copy / name).write_bytes((bundle / name).read_bytes())
    conn = sqlite3.connect(copy / "sparkq.db")
    try:
        return conn.execute("SELECT count(*) FROM prompts").fetchone()[0]
    finally:
        conn.close()


def test_counts_and_size_of_a_wal_bundle_come_from_the_folded_database(project):
    bundle = make_original_bundle(project.backup_dir, "20251120_091500", wal_rows=40, live_counts=WRONG_LIVE_COUNTS)
    before = tree_state(bundle)
    expected = _restored_prompts(bundle)
    assert expected == 1 + 40

    # backup-list reads manifests only (it must stay fast): the manifest's counts, marked as such
    listing = project.cli("backup-list", "--json")
    assert listing.returncode == 0, listing.stderr
    [entry] = json.loads(listing.stdout)["backups"]
    assert entry["counts"]["prompts"] == 99 and entry["counts_from"] == "live"
    assert "99*" in project.cli("backup-list").stdout

    # backup-show tells what a restore gives: the database with its WAL folded in
    show = json.loads(project.cli("backup-show", "1", "--json").stdout)
    assert show["counts"]["prompts"] == expected and show["counts"]["config_entries"] == 3
    assert show["counts_from"] == "database"
    assert show["size"] > (bundle / "sparkq.db").stat().st_size  # the WAL's pages count too
    text = project.cli("backup-show", "1").stdout
    assert f"prompts {expected}" in text
    assert tree_state(bundle) == before  # no -shm written, nothing checkpointed into the bundle


def test_counts_of_a_2_1_manifest_without_wal_are_marked_as_the_live_databases(project):
    make_original_bundle(project.backup_dir, "20251120_091500", live_counts=WRONG_LIVE_COUNTS)
    listing = json.loads(project.cli("backup-list", "--json").stdout)["backups"][0]
    assert listing["counts_from"] == "live"
    text = project.cli("backup-list").stdout
    assert "99*" in text and "* counts from an original 2.1 manifest" in text
