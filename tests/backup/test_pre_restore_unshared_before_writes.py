"""Issue 11.6: a pre-restore bundle left hard-linked to the live database (a restore killed
between linking and replacing) gets its own copy before any command may write the database:
start, run and restart with or without --skip-backup, and setup."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import pytest

from helpers import SPARKQ_BIN, wait_until
from supervisor import config
from supervisor.backup.create import write_bundle
from supervisor.backup.layout import PRE_RESTORE_PREFIX


def _linked_pre_restore(project):
    """What a restore killed after its pre-restore step leaves: the bundle's sparkq.db is the
    live database's inode."""
    assert project.cli("setup").returncode == 0
    bundle = write_bundle(config.load(root=project.root), trigger="pre-restore",
                          prefix=PRE_RESTORE_PREFIX, link_db=True)
    assert os.stat(bundle / "sparkq.db").st_ino == os.stat(project.db).st_ino
    return bundle


def _post(project, path: str, body: dict) -> None:
    req = urllib.request.Request(project.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)


@pytest.mark.parametrize("command", [["start", "--skip-backup"], ["restart", "--skip-backup"]])
def test_writes_through_the_server_leave_the_pre_restore_bundle_valid(project, command):
    bundle = _linked_pre_restore(project)
    started = project.cli(*command)
    assert started.returncode == 0, started.stderr
    try:
        _post(project, "/api/prompts", {"command": "after-link", "label": "x", "template_text": "t"})
    finally:
        assert project.cli("stop").returncode == 0
    assert os.stat(bundle / "sparkq.db").st_ino != os.stat(project.db).st_ino
    verify = project.cli("backup-verify", bundle.name)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("command", [["run", "--skip-backup"], ["setup", "--reseed"]])
def test_run_and_setup_unshare_first(project, command):
    bundle = _linked_pre_restore(project)
    if command[0] == "run":
        proc = project.popen(str(SPARKQ_BIN), *command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: project.pidfile.exists() or proc.poll() is not None, timeout=60, what="run to start")
        proc.terminate()
        proc.communicate(timeout=30)
    else:
        assert project.cli(*command).returncode == 0
    assert os.stat(bundle / "sparkq.db").st_ino != os.stat(project.db).st_ino
    verify = project.cli("backup-verify", bundle.name)
    assert verify.returncode == 0, verify.stdout + verify.stderr
