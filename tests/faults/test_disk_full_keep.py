"""Issue 11.13: on a full disk, the advice works. The error says to free space or lower
SPARKQ_BACKUP_KEEP, and lowering it does free space: a backup short of room prunes past keep
before it writes (sparing the newest good backup). A real small filesystem: a tmpfs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import grow_db, one_line_error, tree_state


@pytest.fixture
def small_fs(tmp_path):
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _bundles(backup_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(backup_dir) if n.startswith("sparkq_2"))


def test_lowering_keep_frees_room_for_the_next_backup(project, small_fs):
    backup_dir = small_fs / "backups"
    assert project.cli("setup").returncode == 0
    project.write_config(f"backup:\n  dir: {backup_dir}\n")
    grow_db(project.db, 1)
    failed = None
    for _ in range(12):  # fill the disk with bundles (keep is 7: retention frees nothing yet)
        proc = project.cli("backup")
        if proc.returncode != 0:
            failed = proc
            break
    assert failed is not None, "the 8 MB tmpfs never filled up"
    line = one_line_error(failed, codes={1})
    assert "disk full" in line and "df -h" in line and "SPARKQ_BACKUP_KEEP=2 ./sparkq.sh backup" in line, line
    full = tree_state(backup_dir)
    before = _bundles(backup_dir)
    assert 2 < len(before) <= 7

    # A start says the same, and changes nothing.
    start = project.cli("start")
    assert "SPARKQ_BACKUP_KEEP" in one_line_error(start, codes={1})
    assert tree_state(backup_dir) == full

    # Following the advice works: the old bundles past 2 go first, then the new one is written.
    proc = project.cli("backup", env={"SPARKQ_BACKUP_KEEP": "2"})
    assert proc.returncode == 0, proc.stderr
    after = _bundles(backup_dir)
    assert len(after) == 2 and after[0] == before[-1] and after[1] not in before, (before, after)
    assert not [n for n in os.listdir(backup_dir) if n.startswith(".tmp-")]
