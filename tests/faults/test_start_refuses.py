"""When the pre-start backup cannot be taken, `start` fails with one line and no server runs.

Disk full (a 2 MB tmpfs when this machine lets us mount one, and RLIMIT_FSIZE anywhere), a
read-only backup dir, a backup dir that is a file, a DB that is not SQLite, a DB locked past
backup.lock_timeout. Each: one line on stderr, non-zero exit, no partial bundle, older bundles
and live data untouched, no pidfile, nothing listening.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import SPARKQ_BIN, assert_no_server, grow_db, live_state, one_line_error, tree_state


def _setup(project, extra_config: str = "") -> None:
    assert project.cli("setup").returncode == 0
    project.write_config(extra_config)


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    return proc.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs directory, unmounted at teardown; skips when not allowed."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        if not _mount_tmpfs(where, options):
            pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _refused_start(project, preexec=None) -> str:
    before = live_state(project)
    proc = project.cli("start") if preexec is None else _run_with(project, preexec)
    line = one_line_error(proc)
    assert "server not started" in line, line
    print(line)
    assert_no_server(project)
    after = live_state(project)
    assert after == before, "a refused start changed live data or the backups"
    return line


def _run_with(project, preexec) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPARKQ_BIN), "start"], cwd=project.root, env=project.env, capture_output=True,
                          text=True, timeout=120, preexec_fn=preexec, stdin=subprocess.DEVNULL)


# --- disk full --------------------------------------------------------------------------------


def test_disk_full_on_a_small_tmpfs(project, tmpfs):
    fs = tmpfs("size=2m,mode=0700")
    _setup(project, f"backup:\n  dir: {fs / 'backups'}\n")
    for _ in range(2):  # older bundles, small enough to fit
        assert project.cli("backup").returncode == 0
    grow_db(project.db, 3)
    backup_dir = fs / "backups"
    old = tree_state(backup_dir)

    proc = project.cli("backup")
    line = one_line_error(proc, codes={1})
    assert line.startswith("sparkq: backup failed:") and "disk" in line and "df -h" in line, line
    assert tree_state(backup_dir) == old, "a failed backup left something or changed an older bundle"

    line = _refused_start(project)
    assert "disk" in line and "df -h" in line, line
    assert tree_state(backup_dir) == old
    assert not [n for n in os.listdir(backup_dir) if n.startswith(".tmp-")]
    listed = project.cli("backup-list")
    assert listed.returncode == 0 and listed.stdout.count("sparkq_2") == 2


def _fsize_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_file_size_limit_during_the_pre_start_backup(project):
    _setup(project)
    assert project.cli("backup").returncode == 0
    grow_db(project.db, 3)
    old = tree_state(project.backup_dir)
    line = _refused_start(project, preexec=_fsize_limit(1 << 20))
    assert "backup failed" in line and "df -h" in line, line
    assert tree_state(project.backup_dir) == old


# --- unusable backup dir, unusable database -----------------------------------------------------


def test_read_only_backup_dir(project, tmpfs):
    fs = tmpfs("size=1m,ro")
    _setup(project, f"backup:\n  dir: {fs}\n")
    line = _refused_start(project)
    assert "backup failed" in line and ("read-only" in line.lower() or "permission" in line.lower()), line
    proc = project.cli("backup")
    one_line_error(proc, codes={1})
    assert os.listdir(fs) == []


def test_backup_dir_is_a_file(project):
    _setup(project)
    project.backup_dir.parent.mkdir(parents=True, exist_ok=True)
    project.backup_dir.write_text("in the way\n")
    line = _refused_start(project)
    assert "not a directory" in line, line
    assert project.backup_dir.read_text() == "in the way\n"


def test_database_is_not_sqlite(project):
    _setup(project)
    for suffix in ("-wal", "-shm"):
        project.db.with_name(project.db.name + suffix).unlink(missing_ok=True)
    project.db.write_bytes(b"definitely not a database\n" * 500)
    line = _refused_start(project)
    assert "not a SQLite database" in line, line
    assert project.db.read_bytes() == b"definitely not a database\n" * 500
    assert not project.backup_dir.exists() or not os.listdir(project.backup_dir)


_LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=DELETE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(120)
"""


def test_database_locked_past_the_backup_timeout(project):
    _setup(project, "backup:\n  lock_timeout: 1\n")
    locker = project.popen(sys.executable, "-c", _LOCKER, str(project.db), stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        began = time.monotonic()
        line = _refused_start(project)
        elapsed = time.monotonic() - began
    finally:
        locker.kill()
        locker.wait()
    assert "locked" in line and "lock_timeout" in line, line
    assert 0.9 <= elapsed < 30
    started = project.cli("start")  # fine once the lock is gone
    assert started.returncode == 0, started.stderr
    assert project.cli("stop").returncode == 0
