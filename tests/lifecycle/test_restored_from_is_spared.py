"""Issue 12.10: the first start after restoring from an old bundle does not prune that bundle.
The restore notes where it came from; retention spares it until the next restore."""

from __future__ import annotations

from datetime import timedelta

from helpers import T0, make_bundle, stamp


def test_first_start_after_restoring_an_old_bundle_keeps_it(project, fake, seed_db):
    names = [f"sparkq_{stamp(T0 - timedelta(days=i))}" for i in range(4)]  # newest first
    for name in names:
        make_bundle(project.backup_dir, name, seed_db)
    oldest = names[-1]
    proc = project.cli("backup-restore", "4", "--db-only", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    started = project.cli("start", env={"SPARKQ_BACKUP_KEEP": "2"})
    assert started.returncode == 0, started.stderr
    assert project.cli("stop").returncode == 0
    left = sorted(p.name for p in project.backup_dir.glob("sparkq_2*"))
    assert oldest in left, left
    assert len(left) == 3  # keep 2, plus the bundle restored from

    # The next restore moves the mark: the earlier source is an ordinary old bundle again.
    proc = project.cli("backup-restore", "1", "--db-only", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert project.cli("start", env={"SPARKQ_BACKUP_KEEP": "2"}).returncode == 0
    assert project.cli("stop").returncode == 0
    assert oldest not in {p.name for p in project.backup_dir.glob("sparkq_2*")}
