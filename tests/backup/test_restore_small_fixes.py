"""The smaller restore defects of issue 11, one test each, through the real `sparkq` command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import SPARKQ_BIN, grow_db, live_state, ok, one_line_error, wait_until


def test_ctrl_c_during_a_restore_prints_one_line(project):
    ok(project.cli("setup"))
    grow_db(project.db, 48)  # big enough that the pre-restore snapshot takes a while
    ok(project.cli("backup"))
    before = live_state(project)
    proc = project.popen(str(SPARKQ_BIN), "backup-restore", "1", "--config-only", "--yes",
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def writing() -> bool:
        return any(p.name.startswith(".tmp-sparkq_preRestore_") for p in project.backup_dir.iterdir())

    wait_until(writing, timeout=60, interval=0.002, what="the pre-restore bundle to be written")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sparkq: restore interrupted"), err
    assert "{" not in err and "Traceback" not in err
    left = {k: v for k, v in live_state(project)["backups"].items() if k.startswith(".tmp")}
    assert live_state(project) == before, left  # no half-written bundle left, nothing placed


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_restore_keeps_the_live_database_mode(ready, mode):
    project = ready
    os.chmod(project.db, mode)
    for args in (["1", "--db-only"], ["1"]):
        ok(project.cli("backup-restore", *args, "--yes"))
        assert stat.S_IMODE(project.db.stat().st_mode) == mode


def test_json_output(ready):
    project = ready
    out = ok(project.cli("backup-restore", "1", "--db-only", "--yes", "--json"))
    data = json.loads(out.stdout)  # nothing but JSON on stdout
    assert data["scope"] == "db" and data["pre_restore"].startswith("sparkq_preRestore_")
    assert data["plan"]["steps"][0]["kind"] == "db"
    assert "--db-only --yes" in data["undo"]

    before = live_state(project)
    line = one_line_error(project.cli("backup-restore", "1", "--json"), codes={2})
    assert "--json needs --yes" in line
    line = one_line_error(project.cli("backup-restore", "1", "--frobnicate", "--yes"), codes={2})
    assert "unknown option --frobnicate" in line
    assert live_state(project) == before


def test_a_ref_with_a_trailing_slash_is_accepted(ready):
    project = ready
    name = next(project.backup_dir.glob("sparkq_2*")).name
    ok(project.cli("backup-show", f"{name}/"))
    out = ok(project.cli("backup-restore", f"{name}/", "--db-only", "--yes"))
    assert f"Restored from {name}" in out.stdout
    one_line_error(project.cli("backup-restore", f"x/{name}/", "--yes"), codes={2})  # still no paths


def test_a_process_that_is_not_our_server_is_named(ready, reaper):
    project = ready
    code = ("import sqlite3, sys\n"
            f"c = sqlite3.connect({str(project.db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\nprint('ready', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reaper.add(holder.pid)
    try:
        assert holder.stdout.readline().strip() == "ready"
        line = one_line_error(project.cli("backup-restore", "1", "--yes"), codes={6})
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert f"PID {holder.pid} (python" in line
    assert "not the SparkQ server" in line and f"kill {holder.pid}" in line
    assert "stop it first" not in line


def test_plan_says_copied_when_the_backup_dir_is_on_another_filesystem(project):
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(project.root).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    other = Path(tempfile.mkdtemp(prefix="sparkq-test-", dir="/dev/shm"))
    try:
        project.write_config(f"backup:\n  dir: {other / 'backups'}\n")
        ok(project.cli("setup"))
        ok(project.cli("backup"))
        out = ok(project.cli("backup-restore", "1", "--yes"))
        assert "database hard-linked, not copied" not in out.stdout
        assert "database copied: the backup dir is on another filesystem" in out.stdout
        assert "(database copied, not hard-linked)" in out.stdout
    finally:
        shutil.rmtree(other, ignore_errors=True)
