"""Scheduled backups while `run` serves (issue 15): a real server, real child backups, a 2 s interval."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone

import psutil
import pytest

from helpers import SPARKQ_BIN, config_value, put_config, tree_state, wait_until
from supervisor.process import probe_health

INTERVAL = 2


def _config(project, interval=INTERVAL, extra: str = "") -> None:
    project.env.pop("SPARKQ_BACKUP_INTERVAL", None)  # helpers turn the schedule off for other tests
    project.write_config(f"backup:\n  interval: {interval}\n{extra}")


def _run(project, tmp_path, *args: str) -> subprocess.Popen:
    err = open(tmp_path / "run.err", "w")
    proc = project.popen(str(SPARKQ_BIN), "run", *args, stdout=subprocess.DEVNULL, stderr=err, text=True)
    err.close()

    def ready():
        assert proc.poll() is None, (tmp_path / "run.err").read_text()
        return project.pidfile.exists() and probe_health(project.url + "/health", timeout=0.5)[0]

    wait_until(ready, timeout=60, what="run's server to answer health")
    project.reaper.adopt_pidfile(project.pidfile)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def _tree(backup_dir) -> dict[str, str]:
    """Every bundle in the backup dir: not retention's lock file (it holds a PID), nor a backup's
    temp dir (`.tmp-*`: even a check that finds the state unchanged makes one and removes it)."""
    return {k: v for k, v in tree_state(backup_dir).items()
            if k != ".retention.lock" and not k.split("/")[0].startswith(".tmp-")}


def _no_temp_dir(backup_dir) -> bool:
    return not list(backup_dir.glob(".tmp-*"))


def _bundles(project) -> dict[str, dict]:
    out = {}
    for d in sorted(project.backup_dir.glob("sparkq_2*")):
        out[d.name] = json.loads((d / "manifest.json").read_text())
    return out


def _status(project) -> dict:
    return json.loads(project.cli("status", "--json").stdout)


def _schedule_events(project, event: str) -> list[dict]:
    log = project.root / "sparkq" / "logs" / "supervisor.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == event and e.get("trigger") == "scheduled"]


def test_an_idle_server_writes_no_bundle_over_several_intervals(project, tmp_path):
    _config(project)
    proc = _run(project, tmp_path)
    try:
        before = _tree(project.backup_dir)
        assert len(_bundles(project)) == 1  # the pre-start backup
        # Three scheduled checks, each found the state unchanged and wrote nothing.
        wait_until(lambda: len(_schedule_events(project, "backup_unchanged")) >= 3, timeout=40,
                   what="three scheduled checks")
        assert _tree(project.backup_dir) == before
        assert not _schedule_events(project, "backup_created")
        status = _status(project)
        assert status["last_backup_error"] is None
        assert 0 <= status["next_backup_in_s"] <= INTERVAL
    finally:
        _stop(proc)


def test_a_config_change_is_in_a_verified_scheduled_bundle_within_one_interval(project, tmp_path):
    _config(project)
    proc = _run(project, tmp_path)
    try:
        first = set(_bundles(project))
        checks_before = len(_schedule_events(project, "backup_unchanged"))
        put_config(project.url, "colour", "teal")
        changed = time.monotonic()

        def scheduled():
            return [n for n, m in _bundles(project).items() if n not in first and m["trigger"] == "scheduled"]

        names = wait_until(scheduled, timeout=30, what="a scheduled bundle")
        took = time.monotonic() - changed
        name = names[0]
        bundle = project.backup_dir / name
        # The first check that starts after the change writes it: at most one check (one that
        # was already under way) found the state unchanged since. So it takes about one interval
        # plus two backups' own time (each a Python child: start-up and the bundle), ~3 s here;
        # the bound leaves room for a slow machine.
        assert len(_schedule_events(project, "backup_unchanged")) - checks_before <= 1
        assert took <= INTERVAL + 20, took
        assert config_value(bundle / "sparkq.db", "colour") == "teal"
        verified = project.cli("backup-verify", name)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        listed = project.cli("backup-list", "--json")
        assert {b["name"]: b["trigger"] for b in json.loads(listed.stdout)["backups"]}[name] == "scheduled"
        assert "scheduled" in project.cli("backup-list").stdout
    finally:
        _stop(proc)


def test_a_missed_schedule_is_made_up_soon_after_start(project, tmp_path):
    _config(project, interval="1h")
    assert project.cli("setup").returncode == 0
    assert project.cli("backup").returncode == 0
    (old,) = project.backup_dir.glob("sparkq_2*")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["created_at"] = (datetime.now(timezone.utc) - timedelta(hours=3)).isoformat()
    (old / "manifest.json").write_text(json.dumps(manifest))
    conn = sqlite3.connect(project.db)  # a change the old bundle does not hold
    with conn:
        conn.execute("INSERT INTO config (namespace, key, value, updated_at) VALUES "
                     "('test', 'missed', '\"yes\"', '2026-01-01T00:00:00Z')")
    conn.close()

    started = time.monotonic()
    proc = _run(project, tmp_path, "--skip-backup")  # no pre-start backup: only the schedule
    try:
        def made_up():
            return [n for n, m in _bundles(project).items() if m["trigger"] == "scheduled"]

        (name,) = wait_until(made_up, timeout=30, what="the missed scheduled backup")
        assert time.monotonic() - started < 30
        assert config_value(project.backup_dir / name / "sparkq.db", "missed") == "yes"
        # Once the supervisor has reaped it, the next one is an interval away.
        wait_until(lambda: 3000 < (_status(project)["next_backup_in_s"] or 0) <= 3600, timeout=10,
                   what="the next backup an hour away")
        assert "next backup: in " in project.cli("status").stdout
    finally:
        _stop(proc)


@pytest.fixture
def tiny_backup_disk(project, tmp_path):
    """backup.dir on a 2 MiB tmpfs of its own (we run as root in the test sandbox)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount / "backups"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_failing_scheduled_backup_leaves_the_server_and_old_bundles_alone(project, tmp_path, tiny_backup_disk):
    _config(project, extra=f"  dir: {tiny_backup_disk}\n")
    proc = _run(project, tmp_path)
    try:
        old = _tree(tiny_backup_disk)
        assert len([k for k in old if "/" not in k]) == 1  # the pre-start bundle
        filler = tiny_backup_disk.parent / "filler"
        with open(filler, "wb") as out:  # fill the disk to the last block
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        put_config(project.url, "colour", "red")  # something to back up

        status = wait_until(lambda: (s := _status(project))["last_backup_error"] and s, timeout=30,
                            what="status to show the failed backup")
        assert "disk full" in status["last_backup_error"] or "No space" in status["last_backup_error"]
        assert status["health"]["ok"] is True
        text = project.cli("status").stdout
        assert "last backup failed " in text and " ago: " in text
        put_config(project.url, "colour", "blue")  # the server still writes
        # A failed backup leaves no temp dir (retries, every interval, each make one for a moment) ...
        wait_until(lambda: _no_temp_dir(tiny_backup_disk), timeout=30, what="no temp dir between retries")
        assert _tree(tiny_backup_disk) == old  # ... nor a new bundle, and the old ones are as they were

        filler.unlink()  # the next retry succeeds and clears the error
        wait_until(lambda: _status(project)["last_backup_error"] is None, timeout=30,
                   what="a retry to succeed")
        newest = sorted(tiny_backup_disk.glob("sparkq_2*"))[-1]
        assert config_value(newest / "sparkq.db", "colour") == "blue"
        assert {k: v for k, v in _tree(tiny_backup_disk).items() if k in old} == old
    finally:
        _stop(proc)


def test_the_scheduler_stops_with_the_supervisor_and_leaves_no_process(project, tmp_path):
    # The first check is due an interval after the pre-start backup: long enough to take the
    # lock below first even on a slow machine (start to health takes under 1 s here).
    _config(project, interval=12)
    proc = _run(project, tmp_path)
    # Hold the supervisor lock before the first scheduled backup is due: it starts and waits
    # for the lock, still running when the supervisor is told to stop.
    fd = os.open(project.root / "sparkq" / "data" / "sparkq.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert not _schedule_events(project, "backup_unchanged"), "the first check came too soon"
        backup = wait_until(lambda: [c for c in psutil.Process(proc.pid).children()
                                     if "--trigger" in c.cmdline()], timeout=60, what="a scheduled backup")[0]
        server = json.loads(project.pidfile.read_text())["pid"]
        # (the supervisor records it just after the child started)
        wait_until(lambda: _status(project)["backup_running"] is True, timeout=30, what="status to show the backup")
        _stop(proc)
        assert proc.returncode == 0
        for pid in (backup.pid, server):
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        os.close(fd)
    assert not list(project.backup_dir.glob(".tmp-*"))
    assert _status(project)["next_backup_in_s"] is None
