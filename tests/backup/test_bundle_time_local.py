"""Issue 12.4: a backup's time is its manifest's created_at (with offset) when present, else its
name read as local time (the original names backups in local time; legacy pairs have no
manifest), or as UTC for one of ours whose mtime says so. backup-list numbering and retention use that one order. Run with TZ set in the
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


def test_a_damaged_bundle_of_ours_keeps_its_utc_name_east_of_utc(project, seed_db):
    """A manifest that is not JSON leaves only the name. One of ours is named in UTC, the
    original's in local time: the entry's mtime tells which. East of UTC, reading our name as
    local time would sort it two hours too old, behind an original bundle made since."""
    import os
    from datetime import timedelta

    bd = project.backup_dir
    bd.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ours = make_bundle(bd, "sparkq_" + now.strftime("%Y%m%d_%H%M%S"), seed_db)
    earlier = now - timedelta(minutes=30)
    theirs = make_bundle(bd, "sparkq_" + (earlier + timedelta(hours=2)).strftime("%Y%m%d_%H%M%S"), seed_db)
    for bundle, when in ((ours, now), (theirs, earlier)):
        (bundle / "manifest.json").write_text('{"integrity_check": "*** in database main ***\n')
        os.utime(bundle, (when.timestamp(), when.timestamp()))
    proc = project.cli("backup-list", "--json", env={"TZ": "EET-2"})  # UTC+2 all year
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)["backups"]
    assert [b["name"] for b in listed] == [ours.name, theirs.name]
    assert datetime.fromisoformat(listed[0]["created_at"]) == now
    assert datetime.fromisoformat(listed[1]["created_at"]) == earlier


def test_a_manifest_damaged_but_json_still_orders_by_its_created_at(project, seed_db):
    """Listing (from its cache, twice) and a restore ref (manifests read afresh) agree."""
    bd = project.backup_dir
    bd.mkdir(parents=True, exist_ok=True)
    at10 = make_bundle(bd, "sparkq_20251203_100000", seed_db,
                       created_at=datetime(2025, 12, 3, 10, 0, tzinfo=timezone.utc))
    at11 = make_bundle(bd, "sparkq_20251203_110000", seed_db,
                       created_at=datetime(2025, 12, 3, 11, 0, tzinfo=timezone.utc))
    manifest = json.loads((at11 / "manifest.json").read_text())
    (at11 / "manifest.json").write_text(json.dumps({**manifest, "files": 7}))  # a key of the wrong type
    east = {"TZ": "EET-2"}
    for _ in range(2):
        listed = json.loads(project.cli("backup-list", "--json", env=east).stdout)["backups"]
        assert [b["name"] for b in listed] == [at11.name, at10.name] and listed[0]["damaged"]
    shown = project.cli("backup-show", "2", "--json", env=east)
    assert json.loads(shown.stdout)["name"] == at10.name, shown.stdout + shown.stderr
