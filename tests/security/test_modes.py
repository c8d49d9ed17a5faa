"""File modes whatever the umask: bundles and pre-restore bundles are 0700 dirs of 0600 files, and
nothing the supervisor or its server creates (pidfile, locks, data and log dirs, logs, the DB) is
writable by others. Every command here runs with umask 000, the worst a user can have."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from helpers import SPARKQ_BIN


def _cli_umask0(project, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SPARKQ_BIN), *args], cwd=project.root, env=project.env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0))
    project.reaper.adopt_pidfile(project.pidfile)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _assert_private_tree(bundle: Path) -> None:
    assert _mode(bundle) == 0o700, f"{bundle}: {oct(_mode(bundle))}"
    for top, dirs, files in os.walk(bundle):
        for d in dirs:
            assert _mode(Path(top) / d) == 0o700, f"{top}/{d}: {oct(_mode(Path(top) / d))}"
        for f in files:
            assert _mode(Path(top) / f) == 0o600, f"{top}/{f}: {oct(_mode(Path(top) / f))}"


def test_bundles_and_pre_restore_bundles_are_private_under_umask_000(project):
    _cli_umask0(project, "setup")
    _cli_umask0(project, "backup")
    (project.root / ".env").write_text("SPARKQ_MODE_TEST=1\n")  # changed: the start writes a bundle
    _cli_umask0(project, "start")  # the pre-start backup
    _cli_umask0(project, "stop")
    _cli_umask0(project, "backup-restore", "2", "--yes")  # full: a hard-linked pre-restore DB
    _cli_umask0(project, "backup-restore", "1", "--config-only", "--yes")  # a snapshotted one
    assert _mode(project.backup_dir) == 0o700
    bundles = sorted(project.backup_dir.glob("sparkq_*"))
    assert len(bundles) == 4 and len([b for b in bundles if "preRestore" in b.name]) == 2
    for bundle in bundles:
        _assert_private_tree(bundle)
    assert _mode(project.root / ".env") == 0o600  # restored secrets stay private too


def test_runtime_files_are_not_writable_by_others_under_umask_000(project):
    _cli_umask0(project, "start")  # a first run: creates the dirs, .env, the DB, logs, locks
    _cli_umask0(project, "backup")
    data = project.root / "sparkq" / "data"
    pidfile, lock, retention = data / "sparkq.pid", data / "sparkq.lock", project.backup_dir / ".retention.lock"
    assert pidfile.exists() and lock.exists() and retention.exists()
    assert _mode(pidfile) & 0o022 == 0, oct(_mode(pidfile))
    assert _mode(lock) == 0o600 and _mode(retention) == 0o600
    _cli_umask0(project, "stop")
    shared = []
    for top, dirs, files in os.walk(project.root / "sparkq"):
        for name in dirs + files:
            path = Path(top) / name
            if _mode(path) & 0o022:
                shared.append(f"{path.relative_to(project.root)} {oct(_mode(path))}")
    for path in (project.root / "sparkq", project.root / ".env", project.config):
        if _mode(path) & 0o022:
            shared.append(f"{path.relative_to(project.root)} {oct(_mode(path))}")
    assert shared == [], "group/world-writable: " + ", ".join(shared)
    assert _mode(project.root / ".env") == 0o600
