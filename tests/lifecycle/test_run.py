"""`sparkq run`: the server as a foreground child, signals forwarded, sd_notify to systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

from helpers import SPARKQ_BIN, wait_until
from supervisor.process import probe_health


def _run(project, env=None) -> subprocess.Popen:
    return project.popen(str(SPARKQ_BIN), "run", "--skip-backup", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env or {})


def _wait_ready(project, fake, proc) -> int:
    def ready():
        assert proc.poll() is None, proc.communicate()
        # The pidfile is written at the spawn; the server is ready once it answers health.
        if not project.pidfile.exists() or not probe_health(project.url + "/health", timeout=0.5)[0]:
            return None
        return json.loads(project.pidfile.read_text())["pid"]

    pid = wait_until(ready, what="run's server to answer health")
    project.reaper.add(pid)
    return pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_forwards_the_signal_and_exits_with_the_servers_status(project, fake, sig):
    proc = _run(project)
    pid = _wait_ready(project, fake, proc)
    info = json.loads(project.pidfile.read_text())
    assert info["mode"] == "run" and info["supervisor_pid"] == proc.pid

    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"fake server got signal {int(sig)}" in fake.log_text()
    assert fake.gone(pid) and not project.pidfile.exists()


def test_run_returns_the_childs_own_exit_status(project, fake):
    fake.configure("exit-on-term=7")
    proc = _run(project)
    _wait_ready(project, fake, proc)
    proc.terminate()
    proc.communicate(timeout=20)
    assert proc.returncode == 7


def test_sd_notify_ready_and_stopping_and_stop_from_another_shell(project, fake):
    name = f"sparkq-test-{os.getpid()}-{project.port}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(20)
        proc = _run(project, env={"NOTIFY_SOCKET": "@" + name})
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in messages)
        ready = next(m for m in messages if "READY=1" in m)
        assert f"MAINPID={proc.pid}" in ready.split("\n")
        server = json.loads(project.pidfile.read_text())["pid"]
        project.reaper.add(server)

        # The lock is released once healthy: status and stop work from another shell.
        status = project.cli("status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == server
        stopped = project.cli("stop")
        assert stopped.returncode == 0 and f"stopped (PID {server}" in stopped.stdout
        proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert sock.recv(4096).decode() == "STOPPING=1"
    assert not project.pidfile.exists()


def test_run_refuses_when_already_running(project, fake):
    assert project.cli("start", "--skip-backup").returncode == 0
    result = project.cli("run", "--skip-backup", timeout=30)
    assert result.returncode == 1 and "already running" in result.stderr
    assert fake.spawn_count() == 1


def test_run_with_a_server_failing_at_boot(project, fake):
    fake.configure("boot-fail")
    result = project.cli("run", "--skip-backup", timeout=30)
    assert result.returncode == 1
    assert "boom: cannot open the widget store" in result.stderr
    # One line says what failed, then the log's tail: the same as `start` prints.
    said = [line for line in result.stderr.splitlines()
            if line.startswith("sparkq: ") and not line.startswith("sparkq: warning: pre_start_backup_skipped")]
    assert len(said) == 1 and "while starting" in said[0], result.stderr
    assert not project.pidfile.exists()


def test_restart_refuses_a_server_run_in_the_foreground(project, fake):
    proc = _run(project)
    pid = _wait_ready(project, fake, proc)
    result = project.cli("restart", "--skip-backup")
    assert result.returncode == 1 and "systemctl restart" in result.stderr
    assert not fake.gone(pid)
    proc.terminate()
    proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_run_bundled_server_through_sparkq_sh_first_run(project):
    """The real thing: first run sets up, backs up, serves; SIGTERM shuts down cleanly (exit 0)."""
    from helpers import SPARKQ_SH

    proc = project.popen(str(SPARKQ_SH), "run", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def healthy():
        assert proc.poll() is None, proc.communicate()
        st = project.cli("status", "--json")
        return st.returncode == 0 and json.loads(st.stdout)["health"]["ok"] and st

    status = json.loads(wait_until(healthy, timeout=60, what="the bundled server").stdout)
    project.reaper.add(status["pid"])
    assert status["health"]["status"] == "ok" and status["health"]["pid"] == status["pid"]
    assert project.db.exists() and (project.root / ".env").exists()
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "first run" in err and not project.pidfile.exists()
    bundles = [p for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_")]
    assert len(bundles) == 1
    assert json.loads((bundles[0] / "manifest.json").read_text())["trigger"] == "run"
