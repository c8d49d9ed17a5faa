"""A server started by the version before runtime files followed the database: its pidfile is at
ROOT/sparkq/data/sparkq.pid whatever database.path says. After the upgrade, `status` and `stop`
find it there by the `--db` in its command line; a pidfile there of another database is left
alone."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from helpers import listening, wait_serving


def _old_version_server(project, db) -> tuple[subprocess.Popen, dict]:
    """What the old `start` left: the bundled server in its own session and the old pidfile."""
    argv = [sys.executable, "-P", "-m", "sparkq", "--host", "127.0.0.1", "--port", str(project.port), "--db", str(db)]
    log = project.root / "old-server.err"
    with open(log, "w") as err:
        proc = project.popen(*argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    wait_serving(proc, project.url, log)
    old = project.root / "sparkq" / "data" / "sparkq.pid"
    old.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "argv": argv,
              "host": "127.0.0.1", "port": project.port, "started_at": "2026-11-30T10:00:00+00:00",
              "url": project.url}
    old.write_text(json.dumps(record))
    return proc, record


def test_stop_finds_the_old_versions_server_of_a_moved_database(project):
    db = project.root / "queues" / "work.db"
    project.write_config(f"database:\n  path: {db}\n")
    assert project.cli("setup").returncode == 0
    proc, _ = _old_version_server(project, db)
    status = project.cli("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == proc.pid, status.stdout + status.stderr
    assert db.with_suffix(".pid").exists()  # moved to where this version looks
    assert not (project.root / "sparkq" / "data" / "sparkq.pid").exists()
    stopped = project.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(timeout=20) is not None and not listening(project.port)


def test_an_old_pidfile_of_another_database_is_left_alone(project):
    default_db = project.root / "sparkq" / "data" / "sparkq.db"
    assert project.cli("setup").returncode == 0  # the default database, served by the "old" server
    proc, record = _old_version_server(project, default_db)
    other = project.root / "other.yml"
    other.write_text(project.config.read_text() + f"database:\n  path: {project.root / 'other' / 'q.db'}\n")
    status = project.cli("--config", str(other), "status")
    assert status.returncode == 3, status.stdout
    assert project.cli("--config", str(other), "stop").returncode == 0
    assert proc.poll() is None and json.loads(project.pidfile.read_text()) == record
    proc.terminate()
    proc.wait(timeout=20)


def test_an_unreadable_old_pidfile_does_not_break_status(project):
    """Whatever sits at the old place (here a folder), a config with its own database still
    answers `status` and `stop`."""
    db = project.root / "queues" / "work.db"
    project.write_config(f"database:\n  path: {db}\n")
    assert project.cli("setup").returncode == 0
    (project.root / "sparkq" / "data" / "sparkq.pid").mkdir(parents=True)
    assert project.cli("status").returncode == 3
    assert project.cli("stop").returncode == 0
