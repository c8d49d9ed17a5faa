"""supervisor.backup.verify: checksums, symlinks and integrity_check, for every backup shape."""

from __future__ import annotations

import json
import os
import shutil
import threading
from datetime import timedelta

import pytest

from supervisor import config
from supervisor.backup import catalog, verify
from supervisor.errors import BackupNotFound

from helpers import T0, make_21_bundle, make_bundle, make_legacy, no_traceback, stamp


def settings():
    return config.load(lenient=True)


def flip_bytes(path, offset: int, count: int = 16) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def entry(name: str):
    return catalog.resolve(settings(), name)


def test_good_bundle_of_each_shape_passes(project, seed_db, tmp_path):
    bd = project.backup_dir
    new = make_bundle(bd, f"sparkq_{stamp(T0)}", seed_db)
    old_no_sums = make_bundle(bd, f"sparkq_{stamp(T0 - timedelta(hours=1))}", seed_db, checksums=False)
    wal21 = make_21_bundle(bd, f"sparkq_{stamp(T0 - timedelta(hours=2))}", tmp_path, checksums=True)
    legacy = make_legacy(bd, T0 - timedelta(days=1), seed_db, yml=True)
    pre = make_bundle(bd, f"sparkq_preRestore_{stamp(T0)}", seed_db)
    before = {p: sorted(os.listdir(p)) for p in (new, wal21)}
    for path in (new, old_no_sums, wal21, legacy, pre):
        assert verify.verify_entry(entry(path.name)) == [], path.name
    assert {p: sorted(os.listdir(p)) for p in (new, wal21)} == before, "verify must not write into bundles"

    report = verify.verify_backups(settings(), None)
    assert report.to_dict() == {"results": [{"name": new.name, "ok": True, "problems": [], "notes": []}], "checked": 1,
                                 "failed": 0}
    assert report.exit_code == 0 and report.text().splitlines() == [f"ok  {new.name}", "1 checked, 0 failed"]
    everything = verify.verify_backups(settings(), None, all_=True)
    assert everything.checked == 5 and everything.failed == 0
    assert pre.name in [r["name"] for r in everything.results]


def test_21_bundle_with_a_broken_wal_is_caught(project, tmp_path):
    d = make_21_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", tmp_path, checksums=True)
    flip_bytes(d / "sparkq.db-wal", 200)
    problems = verify.verify_entry(entry(d.name))
    assert any("sparkq.db-wal: checksum mismatch" in p for p in problems), problems


def test_flipped_bytes_in_bundle_db_fail_with_exit_5(project, seed_db):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    size = (d / "sparkq.db").stat().st_size
    flip_bytes(d / "sparkq.db", size // 2)
    problems = verify.verify_entry(entry(d.name))
    assert any(p.startswith("sparkq.db: checksum mismatch") for p in problems), problems
    proc = project.cli("backup-verify")
    assert proc.returncode == 5, proc.stderr
    assert f"FAILED {d.name}: sparkq.db: checksum mismatch" in proc.stdout
    assert "1 checked, 1 failed" in proc.stdout
    no_traceback(proc)
    data = json.loads(project.cli("backup-verify", "1", "--json").stdout)
    assert data["failed"] == 1 and data["results"][0]["ok"] is False


def test_corrupt_db_without_checksums_fails_integrity_check(project, seed_db):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db, checksums=False)
    page = 4096
    with open(d / "sparkq.db", "r+b") as fh:  # wreck the b-tree pages after the schema page
        fh.seek(page)
        fh.write(os.urandom(page * 4))
    problems = verify.verify_entry(entry(d.name))
    assert problems and all(f"{d.name}/sparkq.db" in p for p in problems), problems


def test_missing_and_extra_damage(project, seed_db):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    (d / "tools_export.json").unlink()
    (d / "prompts_export.json").write_text("[]\n")
    problems = verify.verify_entry(entry(d.name))
    assert "tools_export.json is missing (listed in the manifest's checksums)" in problems
    assert any(p.startswith("prompts_export.json: checksum mismatch") for p in problems)


def test_missing_database(project, seed_db):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db, checksums=False)
    (d / "sparkq.db").unlink()
    assert verify.verify_entry(entry(d.name)) == [f"{d.name}/sparkq.db is missing"]


def test_symlinked_db_is_refused(project, seed_db, tmp_path):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    outside = tmp_path / "outside.db"
    shutil.copyfile(seed_db, outside)  # identical bytes: only the link itself is wrong
    (d / "sparkq.db").unlink()
    (d / "sparkq.db").symlink_to(outside)
    problems = verify.verify_entry(entry(d.name))
    assert problems == [f"{d.name}/sparkq.db is a symlink; refusing it (pick another backup)"]
    proc = project.cli("backup-verify", d.name)
    assert proc.returncode == 5 and "sparkq.db is a symlink; refusing" in proc.stdout
    no_traceback(proc)


def test_symlink_anywhere_in_bundle_is_a_problem(project, seed_db, tmp_path):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db, checksums=False)
    (d / "setup_templates" / "evil").symlink_to("/etc/passwd")
    os.symlink(tmp_path, d / "dirlink")
    problems = verify.verify_entry(entry(d.name))
    assert any("setup_templates/evil is a symlink" in p for p in problems), problems
    assert any("dirlink is a symlink" in p for p in problems), problems


def test_fifo_listed_in_checksums_does_not_hang(project, seed_db):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    (d / "sparkq.yml").unlink()
    os.mkfifo(d / "sparkq.yml")
    problems = verify.verify_entry(entry(d.name))
    assert any("sparkq.yml" in p and "not a regular file" in p for p in problems), problems


def test_damaged_manifest_is_a_problem_but_db_still_checked(project, seed_db):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    (d / "manifest.json").write_text("{broken")
    problems = verify.verify_entry(entry(d.name))
    assert len(problems) == 1 and problems[0].startswith("manifest.json is not valid JSON")
    (d / "sparkq.db").write_bytes(b"garbage" * 100)
    problems = verify.verify_entry(entry(d.name))
    assert any("sparkq.db is not a readable SQLite database" in p for p in problems), problems


def test_truncated_legacy_fails_with_exit_5(project, seed_db):
    bd = project.backup_dir
    good = make_legacy(bd, T0 - timedelta(hours=1), seed_db)
    bad = make_legacy(bd, T0, seed_db)
    with open(bad, "r+b") as fh:
        fh.truncate(bad.stat().st_size // 3)
    assert verify.verify_entry(entry(good.name)) == []
    problems = verify.verify_entry(entry(bad.name))
    assert problems and bad.name in problems[0], problems
    listed = project.cli("backup-list")
    assert listed.returncode == 0 and bad.name in listed.stdout
    proc = project.cli("backup-verify", "--all")
    assert proc.returncode == 5 and f"FAILED {bad.name}" in proc.stdout and f"ok  {good.name}" in proc.stdout
    assert "2 checked, 1 failed" in proc.stdout
    no_traceback(proc)


def test_no_backups_and_unknown_ref(project):
    report = verify.verify_backups(settings(), None)
    assert report.text() == "No backups found" and report.exit_code == 0 and report.checked == 0
    assert verify.verify_backups(settings(), None, all_=True).exit_code == 0
    with pytest.raises(BackupNotFound, match="no backup 3; see ./sparkq.sh backup-list"):
        verify.verify_backups(settings(), "3")
    proc = project.cli("backup-verify", "sparkq_20200101_000000")
    assert proc.returncode == 4 and "no backup sparkq_20200101_000000" in proc.stderr
    no_traceback(proc)


def test_hashing_and_integrity_check_run_in_parallel_threads(project, seed_db, monkeypatch):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    barrier = threading.Barrier(2, timeout=10)  # each side waits for the other: only passes if concurrent
    seen = []
    real_sums, real_db = verify._check_checksums, verify._check_database

    def sums(*a):
        seen.append(threading.current_thread().name)
        barrier.wait()
        return real_sums(*a)

    def db(*a):
        seen.append(threading.current_thread().name)
        barrier.wait()
        return real_db(*a)

    monkeypatch.setattr(verify, "_check_checksums", sums)
    monkeypatch.setattr(verify, "_check_database", db)
    assert verify.verify_entry(entry(d.name)) == []
    assert len(set(seen)) == 2 and all(n.startswith("sparkq-verify") for n in seen)


def test_a_pre_restore_bundle_of_a_damaged_database_is_kept_not_failed(project):
    """Recovery scenario 2 (a corrupt database, restored from a backup): the pre-restore bundle
    keeps the damaged file as it was. `backup-verify --all` (a cron job) must not fail on it for
    as long as it is kept, while it stays unrestorable, and a change to it is still caught."""
    assert project.cli("setup").returncode == 0
    assert project.cli("backup").returncode == 0
    with open(project.db, "r+b") as fh:  # a page of the live database overwritten
        fh.seek(3 * 4096)
        fh.write(b"\x55" * 2000)
    assert project.cli("backup-restore", "1", "--db-only", "--yes").returncode == 0
    [pre] = [p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_preRestore_")]

    checked = project.cli("backup-verify", "--all")
    assert checked.returncode == 0, checked.stdout
    assert f"kept {pre}: whole, and holds the database as a restore found it, already damaged" in checked.stdout
    assert "2 checked, 0 failed" in checked.stdout
    assert json.loads(project.cli("backup-verify", "--all", "--json").stdout)["failed"] == 0
    refused = project.cli("backup-restore", pre, "--db-only", "--yes")
    assert refused.returncode == 5 and "failed verification" in refused.stderr

    wal = project.backup_dir / pre / "sparkq.db-wal"  # something added beside it: not as taken
    wal.write_bytes(b"junk")
    added = project.cli("backup-verify", pre)
    assert added.returncode == 5 and f"FAILED {pre}:" in added.stdout, added.stdout
    wal.unlink()
    flip_bytes(project.backup_dir / pre / "sparkq.db", 100)  # changed since: a backup gone bad
    tampered = project.cli("backup-verify", pre)
    assert tampered.returncode == 5 and f"FAILED {pre}:" in tampered.stdout and "checksum mismatch" in tampered.stdout
