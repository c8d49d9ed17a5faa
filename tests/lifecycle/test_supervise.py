"""issue 14: the resident supervisor keeps the server up (restart, backoff, fatal, liveness),
`status` shows its state, `stop` ends both, a killed supervisor leaves `unsupervised`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime

import psutil
import pytest
from helpers import SPARKQ_BIN, assert_no_server, listening, wait_until


def _configure(fake, mode: str = "ok", **server) -> None:
    fake.configure(mode, stop_timeout=2)
    extra = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in server.items())
    text = fake.project.config.read_text()
    fake.project.config.write_text(text + extra)


def _status(project) -> dict:
    result = project.cli("status", "--json")
    data = json.loads(result.stdout)
    data["exit"] = result.returncode
    return data


def _started(project) -> dict:
    result = project.cli("start", "--skip-backup")
    assert result.returncode == 0, result.stderr
    project.reaper.adopt_pidfile(project.pidfile)
    status = _status(project)
    assert status["state"] == "running" and status["supervisor_pid"], status
    return status


def _events(project, name: str) -> list[dict]:
    log = project.root / "sparkq" / "logs" / "supervisor.log"
    events = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            events.append(event)
    return events


def _stop_and_check(project, supervisor_pid: int) -> None:
    result = project.cli("stop")
    assert result.returncode == 0, result.stderr
    assert not psutil.pid_exists(supervisor_pid) or psutil.Process(supervisor_pid).status() == "zombie"
    assert_no_server(project)
    assert _status(project)["state"] == "stopped"


def test_start_leaves_a_supervisor_and_stop_ends_both(project, fake):
    _configure(fake)
    status = _started(project)
    assert status["health"]["ok"] and status["restarts"] == 0 and status["exit"] == 0
    text = project.cli("status").stdout
    assert text.startswith("running (PID ") and f"supervisor PID {status['supervisor_pid']}" in text
    _stop_and_check(project, status["supervisor_pid"])


def test_status_right_after_start_says_running_even_on_a_slow_disk(project, fake, tmp_path):
    # Every fsync of the supervisor takes 0.3 s (a busy disk): `start` returns on the supervisor's
    # report, and the state saved with that report must already be "running", not "starting".
    (tmp_path / "sitecustomize.py").write_text(
        "import os, time\n_fsync = os.fsync\n"
        "os.fsync = lambda fd: (time.sleep(0.3), _fsync(fd))[1]\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), project.env.get("PYTHONPATH")]))
    result = project.cli("start", "--skip-backup", env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stderr
    project.reaper.adopt_pidfile(project.pidfile)
    status = _status(project)
    assert status["state"] == "running", status


def test_kill_9_of_the_server_brings_a_new_healthy_one_with_the_data(project, fake):
    _configure(fake, health_interval=0)
    first = _started(project)
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_until(lambda: (s := _status(project))["restarts"] == 1 and s["state"] == "running"
                       and s["health"]["ok"] and s, timeout=30, what="a restarted server")
    assert again["pid"] != first["pid"] and again["supervisor_pid"] == first["supervisor_pid"]
    assert again["last_exit"]["signal"] == "SIGKILL"
    assert project.db.exists()
    project.reaper.adopt_pidfile(project.pidfile)
    _stop_and_check(project, first["supervisor_pid"])


def test_a_crash_loop_ends_fatal_with_growing_gaps_and_no_new_bundles(project, fake):
    _configure(fake, "crash-after=1.5", start_retries=3, health_interval=0, backoff_max=60)
    result = project.cli("start")  # with the pre-start backup: one bundle
    assert result.returncode == 0, result.stderr
    project.reaper.adopt_pidfile(project.pidfile)
    bundles = sorted(p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_"))
    status = wait_until(lambda: (s := _status(project))["state"] == "fatal" and s, timeout=60, what="fatal")
    assert status["exit"] == 3 and "server.start_retries" in status["reason"]
    assert "last exit: status 9 at " in status["reason"] and "{" not in status["reason"].splitlines()[0]
    assert status["last_exit"]["code"] == 9 and status["last_exit"]["at"]
    # Gaps between an exit and the next spawn, from the supervisor log's own timestamps.
    exits = [datetime.fromisoformat(e["timestamp"]) for e in _events(project, "server_exited_unexpectedly")]
    spawns = [datetime.fromisoformat(e["timestamp"]) for e in _events(project, "server_spawned")]
    gaps = [(min(s for s in spawns if s > t) - t).total_seconds() for t in exits if any(s > t for s in spawns)]
    assert len(gaps) == 2 and gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[1] > gaps[0], gaps
    after = sorted(p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_"))
    assert after == bundles  # restarts of an unchanged state wrote no new bundle
    assert project.cli("status").stdout.startswith("fatal")
    wait_until(lambda: not fake.running(), timeout=10, what="no server left")
    assert project.cli("stop").returncode == 0  # a person has seen it: the next start begins afresh
    assert _status(project)["state"] == "stopped"


def test_a_crash_loop_that_writes_never_prunes_older_backups(project, fake):
    """Each restart's server gets healthy, the data changes, it crashes: every restart writes a
    bundle, and none of them may push the older backups out (keep: 2)."""
    import sqlite3

    def change(i: int) -> None:
        conn = sqlite3.connect(project.db, isolation_level=None)
        conn.execute("INSERT INTO config (namespace, key, value) VALUES ('loop', ?, '1')", (f"k{i}",))
        conn.close()

    _configure(fake, "crash-after=1.5", start_retries=50, health_interval=0, backoff_max=2)
    project.config.write_text(project.config.read_text() + "backup:\n  keep: 2\n")
    for i in range(2):
        change(i)
        assert project.cli("backup").returncode == 0
    older = sorted(p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_"))
    assert len(older) == 2
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    for restarts in range(1, 4):
        wait_until(lambda: _status(project)["restarts"] >= restarts, timeout=60, what=f"restart {restarts}")
        change(10 + restarts)  # the next restart's backup has something new to keep
    supervisor = _status(project)["supervisor_pid"]
    project.reaper.add(supervisor)
    _stop_and_check(project, supervisor)
    after = sorted(p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_"))
    assert set(older) <= set(after), after
    assert len(after) >= 4  # the restarts did write their bundles
    assert not _events(project, "backups_pruned")


def test_a_sigstopped_server_is_replaced(project, fake):
    _configure(fake, health_interval=0.3, health_failures=2)
    first = _started(project)
    os.kill(first["pid"], signal.SIGSTOP)
    again = wait_until(lambda: (s := _status(project))["restarts"] == 1 and s["health"]["ok"] and s,
                       timeout=40, what="a replacement")
    assert again["pid"] != first["pid"] and fake.gone(first["pid"])
    assert _events(project, "server_hung")
    assert again["last_exit"].get("hung") is True
    assert "stopped for not answering its health checks" in project.cli("status").stdout
    project.reaper.adopt_pidfile(project.pidfile)
    _stop_and_check(project, first["supervisor_pid"])


def test_stop_resumes_a_suspended_supervisor_instead_of_waiting_on_it(project, fake):
    _configure(fake)
    status = _started(project)
    supervisor = status["supervisor_pid"]
    project.reaper.add(supervisor)
    os.kill(supervisor, signal.SIGSTOP)
    began = time.monotonic()
    _stop_and_check(project, supervisor)
    assert time.monotonic() - began < 8  # not the stop_timeout + 10 s of a SIGKILL
    assert _events(project, "supervisor_released") and not _events(project, "supervisor_killed")


def test_a_killed_supervisor_leaves_unsupervised_and_stop_cleans_up(project, fake):
    _configure(fake)
    first = _started(project)
    os.kill(first["supervisor_pid"], signal.SIGKILL)
    status = wait_until(lambda: (s := _status(project))["state"] == "unsupervised" and s, what="unsupervised")
    assert status["exit"] == 0 and status["pid"] == first["pid"] and status["health"]["ok"]
    result = project.cli("stop")
    assert result.returncode == 0 and f"stopped (PID {first['pid']}" in result.stdout
    assert_no_server(project)


def test_start_replaces_an_unsupervised_server(project, fake):
    _configure(fake)
    first = _started(project)
    os.kill(first["supervisor_pid"], signal.SIGKILL)
    wait_until(lambda: _status(project)["state"] == "unsupervised", what="unsupervised")
    result = project.cli("start", "--skip-backup")
    assert result.returncode == 0 and "lost its supervisor" in result.stdout, result.stderr
    project.reaper.adopt_pidfile(project.pidfile)
    status = _status(project)
    assert status["state"] == "running" and status["pid"] != first["pid"] and fake.gone(first["pid"])
    assert len(fake.running()) == 1
    _stop_and_check(project, status["supervisor_pid"])


def test_restore_and_start_are_refused_while_a_supervisor_is_in_backoff(project, fake):
    _configure(fake, "crash-after=0.5", health_interval=0, backoff_max=30, start_retries=50)
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    # A long enough backoff for both commands to meet it even on a slow machine: the delays
    # double from 1 s (supervise.py), so the fourth, 8 s (or, if status looked too late, the 16 s one).
    wait_until(lambda: (s := _status(project))["state"] == "backoff" and s["next_retry_in_s"] >= 7,
               timeout=120, what="a backoff of 8 s or more")
    result = project.cli("backup-restore", "1", "--db-only", "--yes")
    assert result.returncode == 6 and "supervisor" in result.stderr, result.stderr
    again = project.cli("start", "--skip-backup")  # never a second server beside the one it will start
    assert again.returncode == 1 and "is in backoff and starts the server itself" in again.stderr, again.stderr
    supervisor = _status(project)["supervisor_pid"]
    project.reaper.add(supervisor)
    _stop_and_check(project, supervisor)


def test_logs_show_the_server_log_and_supervisor_events(project, fake):
    _configure(fake)
    status = _started(project)
    out = project.cli("logs", "-n", "5").stdout
    assert "fake server pid=" in out
    events = project.cli("logs", "--supervisor", "-n", "200").stdout
    assert " server_started " in events and not events.lstrip().startswith("{")
    _stop_and_check(project, status["supervisor_pid"])


def test_run_pings_the_watchdog(project, fake, tmp_path):
    import socket

    _configure(fake)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(10)
        proc = project.popen(str(SPARKQ_BIN), "run", "--skip-backup", stderr=subprocess.PIPE,
                             env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        messages = []

        def pings_after_ready() -> int:
            ready = next((i for i, m in enumerate(messages) if m.startswith("READY=1")), None)
            return 0 if ready is None else messages[ready:].count("WATCHDOG=1")

        # Pings while it serves (they come during the start too, before READY=1).
        wait_until(lambda: messages.append(sock.recv(4096).decode()) or pings_after_ready() >= 3,
                   timeout=30, what="three watchdog pings after READY=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert any(m.startswith("READY=1") for m in messages)
    assert_no_server(project)


def test_run_as_pid_1_reaps_orphans_and_stops_on_sigterm(project, fake, tmp_path):
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a pid namespace")
    # The server leaves an orphan that exits at once: re-parented to PID 1 (our `run`).
    _configure(fake, "orphan")
    proc = project.popen("unshare", "--pid", "--fork", "--mount-proc", str(SPARKQ_BIN), "run", "--skip-backup",
                         stderr=subprocess.PIPE, text=True)
    wait_until(lambda: listening(project.port), timeout=30, what="the server in the namespace")
    runner = next(p for p in psutil.Process(proc.pid).children() if "sparkq" in " ".join(p.cmdline()))

    def zombies() -> list:
        return [c for c in runner.children() if c.status() == psutil.STATUS_ZOMBIE]

    wait_until(lambda: not zombies(), timeout=10, what="the orphans reaped")
    runner.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stderr.read()
    wait_until(lambda: not fake.running(), timeout=10, what="no server left")


@pytest.mark.parametrize("before,appended,shown", [
    ("older\nold line\n", "new line\n", "new line\n"),
    ("old line\npart", "ial-end\n", "partial-end\n"),  # the server was in the middle of a line
], ids=["whole lines", "a line being written"])
def test_logs_follow_prints_lines_as_they_are_appended(project, before, appended, shown):
    import select

    log = project.root / "sparkq" / "logs" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(before)
    proc = project.popen(str(SPARKQ_BIN), "logs", "-f", "-n", "1", stdout=subprocess.PIPE, text=True)

    def next_line() -> str:
        assert select.select([proc.stdout], [], [], 20)[0], "no line within 20 s"
        return proc.stdout.readline()

    try:
        assert next_line() == "old line\n"
        with open(log, "a") as fh:
            fh.write(appended)
        assert next_line() == shown
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_restart_backup_is_pruned_once_the_server_stayed_up(project):
    """The other half of the crash-loop rule: once the restarted server has stayed up, its
    backup's retention runs (the loop calls this after STABLE_S); while a restore or stop holds
    the lock it waits for a later pass."""
    from supervisor import config
    from supervisor.backup.create import create_backup
    from supervisor.locking import file_lock
    from supervisor.signals import StopSignals
    from supervisor.supervise import Supervisor
    from supervisor.systemd import Notifier

    assert project.cli("setup").returncode == 0
    project.config.write_text(project.config.read_text() + "backup:\n  keep: 1\n")
    settings = config.load()
    for _ in range(2):
        create_backup(settings, trigger="manual", prune=False)
    newest = create_backup(settings, trigger="restart", prune=False)
    notifier = Notifier.from_env()
    sup = Supervisor(settings, "run", notifier, StopSignals(notifier))
    sup.unpruned = newest
    with file_lock(settings.paths.lockfile):  # a restore holds it: nothing is pruned yet
        sup._prune_restart_backup()
    assert sup.unpruned is newest
    assert len([p for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_")]) == 3
    sup._prune_restart_backup()
    assert sup.unpruned is None
    assert [p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_")] == [newest.name]
