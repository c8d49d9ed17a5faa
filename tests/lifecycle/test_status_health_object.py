"""`status --json`: `health` is an object whether the server answers or not, so a script reads
`health.ok` without checking its type."""

from __future__ import annotations

import json
import os
import signal


def test_health_is_an_object_when_healthy_and_when_not(project, fake):
    assert project.cli("start", "--skip-backup").returncode == 0
    healthy = json.loads(project.cli("status", "--json").stdout)
    assert healthy["health"]["ok"] is True and healthy["health"]["status"] == "ok"

    pid = healthy["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, but it answers nothing
    try:
        result = project.cli("status", "--json")
    finally:
        os.kill(pid, signal.SIGCONT)
    sick = json.loads(result.stdout)
    assert sick["running"] is True
    assert isinstance(sick["health"], dict), sick["health"]
    assert sick["health"]["ok"] is False and "no healthy answer" in sick["health"]["error"]
    text = project.cli("status").stdout
    assert "health:   ok" in text
    assert project.cli("stop").returncode == 0
