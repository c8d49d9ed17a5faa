"""backup-verify re-reads the counts from the bundled database: a hand-edited manifest fails our
2.0 bundles, and an original 2.1 manifest (counted from the live database) gets a note."""

from __future__ import annotations

import json

from helpers import make_bundle, no_traceback
from original import make_original_bundle


def test_hand_edited_counts_fail_verification_of_a_2_0_bundle(project, seed_db):
    bundle = make_bundle(project.backup_dir, "sparkq_20251120_091500", seed_db)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["counts"]["prompts"] += 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = project.cli("backup-verify", "1")
    assert proc.returncode == 5, proc.stdout
    assert "prompts 34 in the manifest, 33 in the database" in proc.stdout
    no_traceback(proc)
    restore = project.cli("backup-restore", "1", "--yes")
    assert restore.returncode == 5 and not project.db.exists()


def test_untouched_2_0_bundle_still_verifies(project, seed_db):
    make_bundle(project.backup_dir, "sparkq_20251120_091500", seed_db)
    proc = project.cli("backup-verify", "1", "--json")
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["results"][0]["notes"] == []


def test_live_counts_of_a_2_1_bundle_are_a_note_not_a_failure(project):
    make_original_bundle(project.backup_dir, "20251120_091500", wal_rows=3,
                         live_counts={"prompts": 99, "config_entries": 3})
    proc = project.cli("backup-verify", "1")
    assert proc.returncode == 0, proc.stdout
    assert "note: manifest counts differ" in proc.stdout
    assert "prompts 99 in the manifest, 4 in the database" in proc.stdout
