"""kill -9 of the server while a client writes through the API.

The supervisor that `start` left restarts it: the pre-start backup of the crashed DB is whole
and holds every write the server acknowledged, and the new server serves them. With the
supervisor gone too, the stale pidfile is reported and removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from helpers import SPARKQ_BIN, bundle_problems, listening, server_processes, wait_until


def _pid(project) -> int:
    return int(json.loads(project.pidfile.read_text())["pid"])


def _get(project, path: str):
    with urllib.request.urlopen(project.url + path, timeout=10) as resp:
        return json.loads(resp.read())


def test_kill_9_server_during_writes_then_start(project, api_writer, counter, long, rng):
    started = project.cli("start")
    assert started.returncode == 0, started.stderr
    rounds = 5 if long else 1
    for round_ in range(rounds):
        namespace = f"crash{round_}"
        pid = _pid(project)
        writer = api_writer(project.port, namespace, stop_on_error=True)
        writer.wait_acked(30 + rng.randrange(200))
        time.sleep(rng.uniform(0, 0.05))  # the kill timing itself
        os.kill(pid, signal.SIGKILL)
        writer.join(30)
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                   what="the killed server to be gone")
        acked = list(writer.acked)
        assert writer.failures, "the writer saw no failure although its server was killed"

        # The supervisor restarts it (a pre-start backup first), with no one asking.
        wait_until(lambda: _restarted(project, pid), timeout=60, what="the supervisor's restart")
        assert len(server_processes(project)) == 1
        # The supervisor records the restart once the start returns, just after the server answers.
        status = wait_until(lambda: (s := json.loads(project.cli("status", "--json").stdout))["state"] == "running"
                            and s["restarts"] == round_ + 1 and s, timeout=30, what="status to show the restart")
        assert status["last_exit"]["signal"] == "SIGKILL", status

        # The pre-start backup is the crashed DB: whole, and every acknowledged write is in it.
        newest = max(project.backup_dir.glob("sparkq_2*"), key=lambda p: p.stat().st_mtime)
        manifest = json.loads((newest / "manifest.json").read_text())
        assert manifest["trigger"] == "restart" and manifest["integrity_check"] == "ok"
        assert bundle_problems(newest) == []
        count, low, high = counter(newest / "sparkq.db", namespace)
        assert count == high and (low == 1 or count == 0), (count, low, high)
        assert high >= acked[-1], f"acknowledged write {acked[-1]} lost (bundle holds up to {high})"

        served = {row["key"] for row in _get(project, f"/api/config?namespace={namespace}")}
        assert {f"k{n:07d}" for n in acked} <= served
        assert _get(project, "/health")["db"] == "ok"

    stopped = project.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not listening(project.port)
    verify = project.cli("backup-verify", "--all")
    assert verify.returncode == 0, verify.stdout


def _restarted(project, old_pid: int) -> int | None:
    """The new server's PID once the supervisor's restart answers health, else None."""
    try:
        pid = _pid(project)
        healthy = pid != old_pid and _get(project, "/health")["pid"] == pid
    except (OSError, ValueError, KeyError):
        return None
    return pid if healthy else None


def test_status_after_kill_9_reports_and_removes_the_stale_pidfile(project):
    assert project.cli("start").returncode == 0
    pid = _pid(project)
    supervisor = json.loads(project.pidfile.read_text())["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)  # no one left to restart it: the pidfile goes stale
    wait_until(lambda: not psutil.pid_exists(supervisor) or psutil.Process(supervisor).status() == psutil.STATUS_ZOMBIE,
               what="the supervisor to be gone")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not listening(project.port), what="the port to close")
    status = project.cli("status")
    assert status.returncode == 3, status.stdout + status.stderr
    assert "stale pidfile" in status.stdout + status.stderr and "Traceback" not in status.stderr
    assert not project.pidfile.exists()
    stopped = project.cli("stop")  # nothing to stop: not an error
    assert stopped.returncode == 0 and "not running" in stopped.stdout
    assert Path(project.db).exists()


def test_kill_9_of_start_while_it_waits_for_health(project, reaper):
    """`start` killed after it spawned the server but before the server answered: the server it
    left must still be one that status / stop / start know about, not an orphan holding the port."""
    assert project.cli("setup").returncode == 0
    project.write_config()
    log = project.root / "sparkq" / "logs" / "supervisor.log"
    proc = project.popen(str(SPARKQ_BIN), "start", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: log.exists() and "server_spawned" in log.read_text(), timeout=30, interval=0.001,
               what="the server to be spawned")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: listening(project.port), timeout=30, what="the spawned server to listen")
    for orphan in server_processes(project):
        reaper.add(orphan.pid)
    assert not listening(project.port) or project.pidfile.exists(), \
        "a server runs, but no pidfile names it: status/stop cannot see it and start finds its port taken"
    stopped = project.cli("stop")
    assert stopped.returncode == 0 and "stopped (PID" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not server_processes(project) and not listening(project.port)
    assert project.cli("start").returncode == 0
    assert project.cli("stop").returncode == 0
