"""A database file deleted while the server runs: the server writes its data back when it stops,
so a `stop` or `restart` after an `rm` loses nothing (sparkq/rescue.py)."""

from __future__ import annotations

import json
import os
import signal
import stat
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from helpers import wait_serving

KEY = "rescued"


def _put(url: str, value: str) -> None:
    req = urllib.request.Request(f"{url}/api/config/test/{KEY}", method="PUT",
                                 data=json.dumps({"value": value}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _value(db) -> str | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM config WHERE namespace = 'test' AND key = ?", (KEY,)).fetchone()
    finally:
        conn.close()
    return row and json.loads(row[0])


@pytest.fixture
def server(project):
    """A bundled server on its own database, stopped with SIGTERM by the test."""
    db = project.root / "data" / "sparkq.db"
    log = project.root / "server.err"
    with open(log, "w") as err:
        proc = project.popen(sys.executable, "-m", "sparkq", "--host", "127.0.0.1", "--port", str(project.port),
                             "--db", str(db), stdout=subprocess.DEVNULL, stderr=err)
    project.reaper.add(proc.pid)
    wait_serving(proc, project.url, log)
    return project, proc, db, log


def _stop(proc, log) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.mark.parametrize("removed", ["the file alone", "with its WAL"])
def test_a_deleted_database_is_written_back_on_stop(server, removed):
    project, proc, db, log = server
    _put(project.url, "before the rm")
    os.chmod(db, 0o640)  # the mode the user chose comes back with the data
    for name in os.listdir(db.parent) if removed == "with its WAL" else [db.name]:
        os.unlink(db.parent / name)
    _put(project.url, "after the rm")  # SQLite goes on writing the unlinked file
    _stop(proc, log)
    assert sorted(os.listdir(db.parent)) == ["sparkq.db"]  # no temp copy, no stale WAL
    assert stat.S_IMODE(db.stat().st_mode) == 0o640
    assert _value(db) == "after the rm"
    assert "written back to" in log.read_text()
    ok = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]
    assert ok == "ok"


def test_a_deleted_then_replaced_database_is_written_beside_the_new_file(server):
    project, proc, db, log = server
    _put(project.url, "served")
    os.unlink(db)
    db.write_bytes(b"")  # something new took the name: never overwritten
    _stop(proc, log)
    assert db.read_bytes() == b""
    rescued = [p for p in db.parent.iterdir() if ".rescued-" in p.name]
    assert len(rescued) == 1 and _value(rescued[0]) == "served", os.listdir(db.parent)


def test_a_moved_database_stays_where_it_was_moved(server):
    project, proc, db, log = server
    _put(project.url, "moved")
    moved = db.with_name("elsewhere.db")
    os.rename(db, moved)
    _stop(proc, log)
    assert not db.exists() and _value(moved) == "moved"
    assert "was moved" in log.read_text()


def test_a_deleted_database_behind_a_symlink_comes_back_where_the_link_points(project):
    real = project.root / "disk" / "q.db"
    real.parent.mkdir()
    link = project.root / "data" / "sparkq.db"
    link.parent.mkdir()
    storage_db = sqlite3.connect(real)
    storage_db.close()
    os.symlink(real, link)
    log = project.root / "server.err"
    with open(log, "w") as err:
        proc = project.popen(sys.executable, "-m", "sparkq", "--host", "127.0.0.1", "--port", str(project.port),
                             "--db", str(link), stdout=subprocess.DEVNULL, stderr=err)
    project.reaper.add(proc.pid)
    wait_serving(proc, project.url, log)
    _put(project.url, "behind a link")
    os.unlink(real)
    _stop(proc, log)
    assert sorted(os.listdir(real.parent)) == ["q.db"]  # no stale WAL beside the real file
    assert link.is_symlink() and _value(link) == "behind a link"
