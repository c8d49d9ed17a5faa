"""The server listens on 127.0.0.1 unless sparkq.yml says otherwise, and says so loudly when told
to listen on every interface; the pidfile and lock are not writable by others."""

from __future__ import annotations

import json
import os
import stat

import psutil

from helpers import descendants, listening


def _listen_addresses(pid: int) -> set[str]:
    """The local IPs the server process (and its children) listen on."""
    addresses = set()
    for proc in [psutil.Process(pid), *descendants(pid)]:
        try:
            conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections("inet")
        except psutil.NoSuchProcess:  # a short-lived child: it listened on nothing
            continue
        addresses |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return addresses


def _pid(project) -> int:
    return int(json.loads(project.pidfile.read_text())["pid"])


def test_binds_loopback_by_default(project):
    project.config.write_text(f"server:\n  port: {project.port}\n")  # no host: the default
    started = project.cli("start")
    assert started.returncode == 0, started.stderr
    assert _listen_addresses(_pid(project)) == {"127.0.0.1"}
    assert "0.0.0.0" not in started.stdout + started.stderr
    for path in (project.pidfile, project.root / "sparkq" / "data" / "sparkq.lock"):
        assert not stat.S_IMODE(os.stat(path).st_mode) & 0o022, path
    assert project.cli("stop").returncode == 0


def test_warns_when_told_to_listen_everywhere(project):
    project.config.write_text(project.config.read_text().replace("host: 127.0.0.1", "host: 0.0.0.0"))
    started = project.cli("start")
    assert started.returncode == 0, started.stderr
    assert _listen_addresses(_pid(project)) == {"0.0.0.0"}
    server_log = (project.root / "sparkq" / "logs" / "server.log").read_text()
    assert "server.host is 0.0.0.0" in started.stdout and "other machines" in started.stdout, started.stdout
    assert "WARNING: listening on 0.0.0.0" in server_log, server_log[-2000:]
    assert project.cli("stop").returncode == 0
    assert not listening(project.port)
