"""A full restore whose bundled sparkq.yml names another `database.path` (issue 11 item 5): the
plan shows both paths, the database goes where the restored config looks for it, and the next
`start` serves the restored data. Where that path is already taken, the restore refuses."""

from __future__ import annotations

import json
import shutil
import sqlite3
import urllib.request
from pathlib import Path

from helpers import live_state, ok, one_line_error


def _mark(db: Path, command: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("INSERT INTO prompts (id, command) VALUES (?, ?)", (f"prm_{command}", command))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _backup_with_db_at(project, rel: str) -> Path:
    """Backup 1 taken while sparkq.yml said database.path: rel (with a marker prompt); then the
    project moved back to the default path, with a database of its own there."""
    project.write_config(f"database:\n  path: {rel}\n")
    ok(project.cli("setup"))
    old = project.root / rel
    _mark(old, "from-the-backup")
    ok(project.cli("backup"))
    project.write_config()
    ok(project.cli("setup"))
    _mark(project.db, "current-only")
    return old


def test_full_restore_places_the_db_where_the_restored_config_looks(project):
    old = _backup_with_db_at(project, "other/place.db")
    old.unlink()  # moved away since: the path the backup's config names is free
    current = project.db.read_bytes()

    out = ok(project.cli("backup-restore", "1", "--yes"))
    assert f"database.path to {old}" in out.stdout and f"(now {project.db})" in out.stdout
    assert old.is_file()
    assert project.db.read_bytes() == current  # the old path is left alone
    assert "--config-only --yes" in out.stdout  # undo: the config files are all that moved

    ok(project.cli("start"))
    try:
        with urllib.request.urlopen(project.url + "/api/prompts", timeout=10) as resp:
            commands = {p["command"] for p in json.loads(resp.read())}
        assert "from-the-backup" in commands and "current-only" not in commands
    finally:
        ok(project.cli("stop"))

    undo = out.stdout.split("undo: ", 1)[1].splitlines()[0].split()
    ok(project.cli(*undo[1:]))
    assert "other/place.db" not in project.config.read_text()
    assert project.db.read_bytes() == current


def test_refused_when_the_other_path_is_taken(project):
    old = _backup_with_db_at(project, "other/place.db")  # still there
    before = live_state(project)
    old_bytes = old.read_bytes()
    proc = project.cli("backup-restore", "1", "--yes")
    line = one_line_error(proc, codes={2})
    assert str(old) in line and str(project.db) in line
    assert live_state(project) == before and old.read_bytes() == old_bytes


def test_config_only_says_which_database_the_server_will_use(project):
    old = _backup_with_db_at(project, "other/place.db")
    old.unlink()
    out = ok(project.cli("backup-restore", "1", "--config-only", "--yes"))
    assert f"after this restore the server uses {old}" in out.stdout
    assert "--db-only" in out.stdout


def test_a_failed_verification_leaves_no_folder_for_the_moved_db(project):
    """With --yes the copy into the new place starts beside the verification; when the backup
    then fails it, the folders made for that copy go too: nothing was changed, as the error says."""
    old = _backup_with_db_at(project, "other/deeper/place.db")
    shutil.rmtree(project.root / "other")
    bundle_db = next(project.backup_dir.glob("sparkq_*/sparkq.db"))
    data = bytearray(bundle_db.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    bundle_db.write_bytes(bytes(data))
    before = live_state(project)

    proc = project.cli("backup-restore", "1", "--yes")
    line = one_line_error(proc, codes={5})
    assert "nothing was changed" in line
    assert not (project.root / "other").exists()
    assert live_state(project) == before
