"""A database file deleted while the server runs: the server writes its data back when it stops,
so a `stop` or `restart` after an `rm` loses nothing (sparkq/rescue.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys

import pytest
from helpers import config_value, put_config, wait_serving

KEY = "rescued"


def _serve(project, db):
    """A bundled server on `db`, stopped with SIGTERM by the test (_stop)."""
    log = project.root / "server.err"
    with open(log, "w") as err:
        proc = project.popen(sys.executable, "-m", "sparkq", "--host", "127.0.0.1", "--port", str(project.port),
                             "--db", str(db), stdout=subprocess.DEVNULL, stderr=err)
    project.reaper.add(proc.pid)
    wait_serving(proc, project.url, log)
    return proc, log


@pytest.fixture
def server(project):
    db = project.root / "data" / "sparkq.db"
    return (project, *_serve(project, db), db)


def _stop(proc, log) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.mark.parametrize("removed", ["the file alone", "with its WAL"])
def test_a_deleted_database_is_written_back_on_stop(server, removed):
    project, proc, log, db = server
    put_config(project.url, KEY, "before the rm")
    os.chmod(db, 0o640)  # the mode the user chose comes back with the data
    for name in os.listdir(db.parent) if removed == "with its WAL" else [db.name]:
        os.unlink(db.parent / name)
    put_config(project.url, KEY, "after the rm")  # SQLite goes on writing the unlinked file
    _stop(proc, log)
    assert sorted(os.listdir(db.parent)) == ["sparkq.db"]  # no temp copy, no stale WAL
    assert stat.S_IMODE(db.stat().st_mode) == 0o640
    assert config_value(db, KEY) == "after the rm"
    assert "written back to" in log.read_text()
    ok = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]
    assert ok == "ok"


def test_a_deleted_then_replaced_database_is_written_beside_the_new_file(server):
    project, proc, log, db = server
    put_config(project.url, KEY, "served")
    os.unlink(db)
    db.write_bytes(b"")  # something new took the name: never overwritten
    _stop(proc, log)
    assert db.read_bytes() == b""
    rescued = [p for p in db.parent.iterdir() if ".rescued-" in p.name]
    assert len(rescued) == 1 and config_value(rescued[0], KEY) == "served", os.listdir(db.parent)


def test_a_moved_database_stays_where_it_was_moved(server):
    project, proc, log, db = server
    put_config(project.url, KEY, "moved")
    moved = db.with_name("elsewhere.db")
    os.rename(db, moved)
    _stop(proc, log)
    assert not db.exists() and config_value(moved, KEY) == "moved"
    assert "was moved" in log.read_text()


def test_a_deleted_database_behind_a_symlink_comes_back_where_the_link_points(project):
    real = project.root / "disk" / "q.db"
    real.parent.mkdir()
    sqlite3.connect(real).close()
    link = project.root / "data" / "sparkq.db"
    link.parent.mkdir()
    os.symlink(real, link)
    proc, log = _serve(project, link)
    put_config(project.url, KEY, "behind a link")
    os.unlink(real)
    _stop(proc, log)
    assert sorted(os.listdir(real.parent)) == ["q.db"]  # no stale WAL beside the real file
    assert link.is_symlink() and config_value(link, KEY) == "behind a link"
