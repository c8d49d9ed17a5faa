"""A server suspended with SIGSTOP (Ctrl-Z, a debugger) is not reported as "ignored SIGTERM":
`stop` says it was suspended, resumes it so it shuts down cleanly, and the server is gone."""

from __future__ import annotations

import os
import signal

import psutil

from helpers import listening, wait_until


def _pid(project) -> int:
    import json

    return json.loads(project.pidfile.read_text())["pid"]


def test_stop_resumes_a_suspended_server(project, fake):
    fake.configure(stop_timeout=5)
    assert project.cli("start", "--skip-backup").returncode == 0
    pid = _pid(project)
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, what="the server to be suspended")
    result = project.cli("stop")
    assert result.returncode == 0, result.stderr
    assert "ignored SIGTERM" not in result.stdout, result.stdout
    assert "suspended" in result.stdout and f"PID {pid}" in result.stdout, result.stdout
    assert "SIGKILL" not in result.stdout  # resumed, it handled SIGTERM itself
    assert "got signal 15" in fake.log_text()
    assert fake.gone(pid) and not listening(project.port)


def test_suspended_server_that_ignores_sigterm_is_killed_and_said_so(project, fake):
    fake.configure("ignore-term", stop_timeout=1)
    assert project.cli("start", "--skip-backup").returncode == 0
    pid = _pid(project)
    os.killpg(pid, signal.SIGSTOP)
    result = project.cli("stop")
    assert result.returncode == 0, result.stderr
    assert "SIGKILL" in result.stdout and "suspended" in result.stdout, result.stdout
    assert "ignored SIGTERM" not in result.stdout
    assert fake.gone(pid) and all(fake.gone(h) for h in fake.logged_pids("helper"))
