"""The database file deleted under a running server (a careless `rm`, a cleanup script): status
and backup say so instead of "no database yet", and a restart brings every row back, because the
server writes its open file back as it stops (sparkq/rescue.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request

from helpers import config_value, one_line_error, put_config


def _get(project) -> str:
    with urllib.request.urlopen(f"{project.url}/api/config/test/kept", timeout=10) as resp:
        return json.loads(resp.read())["value"]


def test_restart_after_the_database_was_deleted_loses_nothing(project):
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    put_config(project.url, "kept", "written before the rm")
    db = project.root / "sparkq" / "data" / "sparkq.db"
    for name in ("sparkq.db", "sparkq.db-wal", "sparkq.db-shm"):
        os.unlink(db.with_name(name))

    status = project.cli("status")
    assert status.returncode == 0 and "missing while the server runs" in status.stdout, status.stdout
    line = one_line_error(project.cli("backup"))
    assert "missing while the server runs (deleted while in use)" in line and "restart brings it back" in line

    restarted = project.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    project.reaper.adopt_pidfile(project.pidfile)
    assert _get(project) == "written before the rm"
    newest = sorted(p for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_"))[-1]
    conn = sqlite3.connect(f"file:{newest / 'sparkq.db'}?mode=ro&immutable=1", uri=True)
    try:  # the restart's backup holds the written-back rows
        assert conn.execute("SELECT COUNT(*) FROM config WHERE key = 'kept'").fetchone()[0] == 1
    finally:
        conn.close()
    assert project.cli("stop").returncode == 0


def test_a_database_moved_under_the_server_is_named_as_moved(project):
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    put_config(project.url, "kept", "written before the move")
    db = project.root / "sparkq" / "data" / "sparkq.db"
    moved = db.with_name("elsewhere.db")
    os.rename(db, moved)
    said = f"the server's database is now {moved}, not {db}"
    status = project.cli("status")
    assert said in status.stdout and f"put it back at {db}" in status.stdout, status.stdout
    line = one_line_error(project.cli("backup"))
    assert said in line
    # A restart stops it and says where the rows are, instead of starting and offering a backup.
    line = one_line_error(project.cli("restart"), codes={2})
    assert said in line and "then ./sparkq.sh start" in line and "backup-restore" not in line
    os.rename(moved, db)  # what it says to do
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    assert _get(project) == "written before the move"
    assert "database is now" not in project.cli("status").stdout
    assert project.cli("stop").returncode == 0


def test_a_stop_waits_for_the_write_back_not_just_the_stop_timeout(tmp_path):
    # The copy of a large database can outlast server.stop_timeout: a SIGKILL half-way would
    # lose every row, so while the file is missing under the bundled server a stop waits longer.
    from supervisor import config
    from supervisor.serverdb import RESCUE_STOP_S
    from supervisor.serverdb import stop_timeout as graceful_stop_timeout

    (tmp_path / "sparkq.yml").write_text("server:\n  stop_timeout: 7\n")
    settings = config.load(root=tmp_path)
    assert not settings.paths.db.exists() and graceful_stop_timeout(settings) == RESCUE_STOP_S
    settings.paths.db.parent.mkdir(parents=True)
    settings.paths.db.write_bytes(b"")
    assert graceful_stop_timeout(settings) == 7
    settings.paths.db.unlink()
    (tmp_path / "sparkq.yml").write_text("server:\n  stop_timeout: 7\n  command: [\"my-server\"]\n")
    assert graceful_stop_timeout(config.load(root=tmp_path)) == 7  # no write-back to wait for


def test_a_database_replaced_under_the_server_is_never_mixed_up_with_its_rows(project):
    """rm and a new file at the path (a `setup`, a copy from elsewhere) while the server runs:
    nothing may back up or seed the new file as if it were the server's, the stop waits for the
    rows to be written beside it, and the next start makes the user choose."""
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    put_config(project.url, "kept", "the server's rows")
    db = project.root / "sparkq" / "data" / "sparkq.db"
    os.unlink(db)
    refused = one_line_error(project.cli("setup"), codes={2})  # would seed a new file at the path
    assert "missing while the server runs" in refused and "setup changed nothing" in refused
    assert not db.exists()
    sqlite3.connect(db).close()  # something else takes the name
    said = f"the database {db} was replaced while the server runs"
    assert said in project.cli("status").stdout
    assert said in one_line_error(project.cli("backup"))

    stopped = project.cli("stop")
    assert stopped.returncode == 0 and "the server's rows were written to" in stopped.stdout, stopped.stdout
    [copy] = [p for p in db.parent.iterdir() if ".rescued-" in p.name]
    assert config_value(copy, "kept") == "the server's rows" and db.stat().st_size == 0
    line = one_line_error(project.cli("start"), codes={2})
    assert str(copy) in line and "keep one" in line
    os.replace(copy, db)  # what it says: keep the server's rows
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    assert _get(project) == "the server's rows"
    assert project.cli("stop").returncode == 0


def test_a_pidfile_naming_a_reused_pid_is_never_read_as_the_server(project, tmp_path):
    """After a crash or reboot the pidfile can name a PID another program now has. Its open
    files are not the server's: no "moved" database, no refusal, a normal backup."""
    assert project.cli("setup").returncode == 0
    other = tmp_path / "other.db"
    holder = project.popen(sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                           "c.execute('CREATE TABLE t (x)'); c.commit(); print('ready', flush=True); time.sleep(60)",
                           str(other), stdout=subprocess.PIPE, text=True)
    project.reaper.add(holder.pid)
    assert holder.stdout.readline() == "ready\n"
    project.pidfile.write_text(json.dumps({"pid": holder.pid, "create_time": 1.0, "argv": ["python", "-m", "sparkq"]}))
    backed_up = project.cli("backup")
    assert backed_up.returncode == 0 and "backup sparkq_" in backed_up.stdout, backed_up.stdout + backed_up.stderr
    assert str(other) not in project.cli("status").stdout
    holder.kill()
    holder.wait()
