"""supervisor/backup/layout.py: the bundle format's names, clocks and read-only opener, checked
against real files and a real `sparkq backup`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from supervisor.backup import layout


def test_a_bundle_name_carries_utc_and_a_name_is_read_as_local_time():
    made = datetime(2026, 3, 1, 23, 30, 5, tzinfo=timezone(timedelta(hours=-5)))
    assert layout.bundle_name(layout.PREFIX, made) == "sparkq_20260302_043005"
    assert layout.bundle_name(layout.PRE_RESTORE_PREFIX, made) == "sparkq_preRestore_20260302_043005"
    local = datetime(2026, 3, 2, 4, 30, 5).astimezone(timezone.utc)  # naive = this machine's local time
    assert layout.name_time("20260302", "043005") == local
    assert layout.name_time("20261340", "250000") is None


def test_name_patterns():
    match = layout.BUNDLE_RE.fullmatch("sparkq_preRestore_20260302_043005_2")
    assert match is not None and match.groups() == ("sparkq_preRestore", "20260302", "043005", "2")
    assert layout.LEGACY_RE.fullmatch("sparkq_20260302_043005.db")
    for name in ("sparkq_2026030_043005", "other_20260302_043005", ".tmp-sparkq_20260302_043005-1"):
        assert not layout.BUNDLE_RE.fullmatch(name), name


def test_versions_say_which_is_older():
    assert (layout.BACKUP_VERSION, layout.ORIGINAL_VERSION) == ("2.0", "2.1")


def test_the_read_only_opener_leaves_nothing_beside_a_wal_database(tmp_path):
    db = tmp_path / "a b%.db"  # a name a URI must escape
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()  # the last close folds the WAL in and removes it
    before = sorted(os.listdir(tmp_path))
    ro = layout.open_readonly(db)
    try:
        assert ro.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        ro.close()
    assert sorted(os.listdir(tmp_path)) == before == ["a b%.db"]


def test_a_backup_removes_dead_writers_temp_dirs_of_either_form(project):
    assert project.cli("setup").returncode == 0
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    project.backup_dir.mkdir(parents=True, exist_ok=True)
    stale = [project.backup_dir / layout.temp_entry("sparkq_20200101_000000", dead),
             project.backup_dir / f".sparkq_20200101_000001.tmp-{dead}"]  # the older form
    for folder in stale:
        folder.mkdir()
        (folder / layout.DB_NAME).write_bytes(b"half")
    proc = project.cli("backup")
    assert proc.returncode == 0, proc.stderr
    assert not any(folder.exists() for folder in stale)
    assert [n for n in os.listdir(project.backup_dir) if n.startswith(".tmp-")] == []
