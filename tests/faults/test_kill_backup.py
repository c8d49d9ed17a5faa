"""kill -9 of `sparkq backup` at random moments over a ~28 MB database.

Each kill point is its own test on a fresh copy of one prepared project (a live DB of ~28 MB and
one older, small bundle). The moment is a stratified random fraction (see conftest.py) of the
backup's duration, measured once per module from the moment its temp dir appears (the anchor,
which removes Python's start-up jitter) to its exit, so the kills cover the snapshot, the
integrity check and hashing, the publish rename and the retention pass. Afterwards:
- the live data and the older bundle are untouched;
- `backup-list` shows only bundles that pass `backup-verify` (and an independent check);
- the next `backup` succeeds and removes the leftover `.tmp-*` dirs.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from helpers import SPARKQ_BIN, base_env, bundle_problems, grow_db, live_state, tree_state

DB_MB = 28


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPARKQ_BIN), *args], cwd=root, env=base_env(root), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A set-up project: one small older bundle, then the live DB grown to ~28 MB."""
    root = tmp_path_factory.mktemp("kill-backup-template")
    assert _run(root, "setup").returncode == 0
    (root / ".env").write_text("SPARKQ_FAULT_SECRET=kill-backup\n")
    proc = _run(root, "backup")
    assert proc.returncode == 0, proc.stderr
    grow_db(root / "sparkq" / "data" / "sparkq.db", DB_MB)
    return root


def _install(template: Path, project) -> None:
    shutil.copytree(template / "sparkq", project.root / "sparkq", dirs_exist_ok=True)
    shutil.copyfile(template / ".env", project.root / ".env")


@pytest.fixture(scope="module")
def duration(template, tmp_path_factory, killing):
    """Seconds from the backup's temp dir appearing to its exit: three runs to start with, then
    every complete backup the tests take; the last 10% (interpreter exit) is left out."""
    runs = []
    for i in range(3):
        root = tmp_path_factory.mktemp(f"calibrate{i}")
        shutil.copytree(template / "sparkq", root / "sparkq")
        anchor = killing.new_temp_dir_in(root / "sparkq" / "data" / "backups")
        runs.append(killing.measure([str(SPARKQ_BIN), "backup"], root, base_env(root), anchor))
    print(f"`sparkq backup` of {DB_MB} MB: {statistics.median(runs):.3f}s from its temp dir to its exit")
    return killing.Durations(runs, share=0.9)


def _phase(backup_dir: Path, before: set[str], returncode: int) -> str:
    new = set(os.listdir(backup_dir)) - before
    if returncode == 0:
        return "after exit"
    if any(n.startswith("sparkq_") for n in new):
        return "after publish (retention)"
    temps = [n for n in new if n.startswith(".tmp-")]
    if any((backup_dir / n / "manifest.json").exists() for n in temps):
        return "publish"
    if temps:
        return "snapshot/verify"
    return "start-up"


def test_kill_9_backup(project, template, duration, killing, kill_at, phases, rng):
    _install(template, project)
    backup_dir = project.backup_dir
    before = live_state(project)
    old_bundles = {n for n in os.listdir(backup_dir) if n.startswith("sparkq_")}
    assert len(old_bundles) == 1

    at = kill_at * duration.current
    proc = project.popen(str(SPARKQ_BIN), "backup", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert killing.kill(proc, killing.new_temp_dir_in(backup_dir), at), "the backup ended before writing"
    phase = _phase(backup_dir, set(before["backups"]), proc.returncode)
    phases("kill -9 backup, where the kills landed", phase)
    print(f"killed {at:.3f}s after the temp dir appeared, in phase {phase!r}, exit {proc.returncode}")

    after = live_state(project)
    assert {k: after[k] for k in ("db", "db-wal", "yml", "env")} == \
           {k: before[k] for k in ("db", "db-wal", "yml", "env")}, "a killed backup changed live data"
    for name in old_bundles:
        assert tree_state(backup_dir / name) == tree_state(template / "sparkq/data/backups" / name)

    listed = project.cli("backup-list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    names = [e["name"] for e in data["backups"] + data["pre_restore"]]
    assert old_bundles <= set(names)
    assert all(not e["damaged"] for e in data["backups"]), data
    verified = project.cli("backup-verify", "--all", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert sorted(r["name"] for r in report["results"]) == sorted(names)
    for name in names:
        assert bundle_problems(backup_dir / name) == [], name

    # The next backup succeeds (timed, to keep the kill moments in step with the machine's pace)
    # and removes the killed one's temp dir.
    known = set(os.listdir(backup_dir))
    duration.add(killing.measure([str(SPARKQ_BIN), "backup"], project.root, project.env,
                                 lambda _p: any(n.startswith(".tmp-sparkq_2") and n not in known
                                                for n in os.listdir(backup_dir))))
    (fresh,) = [backup_dir / n for n in set(os.listdir(backup_dir)) - known if n.startswith("sparkq_")]
    assert bundle_problems(fresh) == []
    leftovers = [n for n in os.listdir(backup_dir) if n.startswith(".tmp-")]
    assert leftovers == [], f"temp dirs left after the next backup: {leftovers}"
    final = json.loads(project.cli("backup-list", "--json").stdout)
    assert len(final["backups"]) == len(names) + 1
