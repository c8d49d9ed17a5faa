"""Issue 12.4: a backup's time is its manifest's created_at (with offset) when present, else its
name read as local time (the original names backups in local time; legacy pairs have no
manifest). backup-list numbering and retention use that one order. Run with TZ set in the
child's environment to a zone west of UTC, where reading names as UTC sorts the newest oldest."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

from helpers import make_bundle

NEW_YORK = {"TZ": "EST5"}  # POSIX form: UTC-5 all year, no zone files needed


def _history(project, seed_db):
    """Three backups, oldest first: a bundle at 10:00Z, a legacy pair named 08:00 local (13:00Z),
    an original-style bundle named 09:00 local (14:00Z) whose manifest is not JSON."""
    bd = project.backup_dir
    bd.mkdir(parents=True, exist_ok=True)
    at10 = make_bundle(bd, "sparkq_20251203_100000", seed_db,
                       created_at=datetime(2025, 12, 3, 10, 0, tzinfo=timezone.utc)).name
    legacy = bd / "sparkq_20251203_080000.db"
    shutil.copyfile(seed_db, legacy)
    (bd / "sparkq_20251203_080000.yml").write_text("server:\n  port: 5005\n")
    damaged = make_bundle(bd, "sparkq_20251203_090000", seed_db).name
    (bd / damaged / "manifest.json").write_text('{"integrity_check": "*** in database main ***\n')
    return at10, legacy.name, damaged


def test_listing_orders_by_manifest_time_then_local_name_time(project, seed_db):
    at10, legacy, damaged = _history(project, seed_db)
    proc = project.cli("backup-list", "--json", env=NEW_YORK)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)["backups"]
    assert [b["name"] for b in listed] == [damaged, legacy, at10]
    assert [b["number"] for b in listed] == [1, 2, 3]
    assert datetime.fromisoformat(listed[1]["created_at"]) == datetime(2025, 12, 3, 13, 0, tzinfo=timezone.utc)


def test_retention_keeps_the_newest_by_that_order(project, seed_db):
    at10, legacy, damaged = _history(project, seed_db)
    assert project.cli("setup").returncode == 0
    proc = project.cli("backup", env={**NEW_YORK, "SPARKQ_BACKUP_KEEP": "3"})
    assert proc.returncode == 0, proc.stderr
    left = {p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_2")}
    assert legacy in left and damaged in left and at10 not in left, left
    # The legacy pair's .yml goes with it or stays with it, never alone.
    assert ("sparkq_20251203_080000.yml" in left) == (legacy in left)
    assert len([n for n in left if not n.endswith(".yml")]) == 3


def test_restore_by_number_follows_the_same_order(project, seed_db):
    at10, legacy, damaged = _history(project, seed_db)
    proc = project.cli("backup-show", "2", "--json", env=NEW_YORK)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == legacy
