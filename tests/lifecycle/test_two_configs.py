"""issue 11.8: runtime files (pidfile, lock, logs) follow the database of the config in use, so
two configs in one checkout are two independent servers."""

from __future__ import annotations

import json
import sys

from helpers import listening


def _second_config(project, fake, port: int):
    """other/sparkq.yml: own port, own database and backup dir, the same fake server."""
    other = project.root / "other"
    (other / "data").mkdir(parents=True)
    command = [sys.executable, "-I", str(fake.script), str(port), "ok"]
    yml = other / "sparkq.yml"
    yml.write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  start_timeout: 15\n  stop_timeout: 5\n"
        f"  command: {json.dumps(command)}\n"
        "database:\n  path: data/queue.db\nbackup:\n  dir: data/backups\n"
    )
    from sparkq import storage

    storage.setup_database(other / "data" / "queue.db")
    return yml


def _status(project, env=None) -> dict:
    result = project.cli("status", "--json", env=env)
    return json.loads(result.stdout)


def test_two_configs_are_two_servers(project, fake):
    from helpers import free_port

    port_b = free_port()
    yml_b = _second_config(project, fake, port_b)
    b = {"SPARKQ_CONFIG": str(yml_b)}

    started_a = project.cli("start", "--skip-backup")
    assert started_a.returncode == 0, started_a.stderr
    started_b = project.cli("start", "--skip-backup", env=b)
    assert started_b.returncode == 0, started_b.stderr
    assert "already running" not in started_b.stdout, started_b.stdout
    for pidfile in (project.pidfile, project.root / "other" / "data" / "queue.pid"):
        project.reaper.adopt_pidfile(pidfile)

    status_a, status_b = _status(project), _status(project, b)
    assert status_a["running"] and status_b["running"]
    assert status_a["pid"] != status_b["pid"]
    assert str(project.port) in status_a["url"] and str(port_b) in status_b["url"]
    assert (project.root / "other" / "data" / "logs" / "queue-server.log").is_file()

    # stopping B leaves A alone, and the other way round
    stopped_b = project.cli("stop", env=b)
    assert stopped_b.returncode == 0 and f"PID {status_b['pid']}" in stopped_b.stdout, stopped_b.stdout
    assert not listening(port_b) and listening(project.port)
    assert _status(project)["running"] and not _status(project, b)["running"]
    assert project.cli("stop", env=b).stdout.strip() == "not running"

    stopped_a = project.cli("stop")
    assert stopped_a.returncode == 0 and f"PID {status_a['pid']}" in stopped_a.stdout
    assert not listening(project.port)


def test_default_config_keeps_the_documented_paths(project):
    from supervisor import config

    paths = config.load().paths
    data = project.root / "sparkq" / "data"
    assert (paths.pidfile, paths.lockfile) == (data / "sparkq.pid", data / "sparkq.lock")
    assert paths.server_log == project.root / "sparkq" / "logs" / "server.log"
    assert paths.supervisor_log == project.root / "sparkq" / "logs" / "supervisor.log"
