"""`sparkq -v backup-restore` says where its time went, and the database copy made beside the
pre-restore bundle lands whole, with no temp file left (issue 17)."""

from __future__ import annotations

import sqlite3

from helpers import Project, sha256
from sparkq import storage


def _phases(stderr: str) -> dict[str, float]:
    lines = [line for line in stderr.splitlines() if "restore_phases (" in line]
    assert len(lines) == 1, stderr
    pairs = lines[0].split("restore_phases (", 1)[1].rstrip(")").split()
    return {key: float(value) for key, value in (pair.split("=", 1) for pair in pairs)}


def test_verbose_restore_prints_its_phase_times_and_places_the_staged_copy(project: Project):
    storage.setup_database(project.db)
    assert project.cli("backup").returncode == 0
    bundle = sorted(project.backup_dir.glob("sparkq_2*"))[-1]
    with sqlite3.connect(project.db) as conn:  # the live DB moves on after the backup
        conn.execute("INSERT INTO config (namespace, key, value) VALUES ('t', 'after', '1')")
    conn.close()

    out = project.cli("-v", "backup-restore", bundle.name, "--db-only", "--yes")
    assert out.returncode == 0, out.stderr
    phases = _phases(out.stderr)
    assert {"verify", "lock", "pre_restore", "copy", "fsync", "place"} <= set(phases), phases
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["lock"] >= phases["pre_restore"]  # pre_restore and place happen under the lock

    assert sha256(project.db) == sha256(bundle / "sparkq.db")
    assert not [p.name for p in project.db.parent.iterdir() if ".tmp-" in p.name]
    kept = sorted(project.backup_dir.glob("sparkq_preRestore_*"))[-1] / "sparkq.db"
    with sqlite3.connect(kept) as conn:  # the state before the restore is what was saved
        assert conn.execute("SELECT value FROM config WHERE namespace = 't'").fetchone() == ("1",)
    conn.close()

    quiet = project.cli("backup-restore", bundle.name, "--db-only", "--yes")
    assert quiet.returncode == 0 and "restore_phases" not in quiet.stderr
