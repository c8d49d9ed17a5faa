"""The recovery scenarios of docs/BACKUP.md, end to end through ./sparkq.sh with a real server."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO, ok

RESTORE_SH = REPO / "sparkq" / "scripts" / "restore_database.sh"
COMPLETE = "Restore complete. Start the server: ./sparkq.sh start"


def _api(project, path: str, body: dict | None = None, method: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(project.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pre_restores(project) -> list[Path]:
    return sorted(project.backup_dir.glob("sparkq_preRestore_*"))


def _started(project) -> None:
    """setup + start: the start takes backup 1 of the freshly set-up state."""
    ok(project.sh("setup"))
    ok(project.sh("start"))


def test_scenario_1_deleted_sparkq_yml(project):
    _started(project)
    ok(project.sh("stop"))
    good = project.config.read_bytes()
    project.config.unlink()

    listing = ok(project.sh("backup-list"))
    assert "notice" in listing.stderr and "sparkq.yml" in listing.stderr
    assert "sparkq_" in listing.stdout

    out = ok(project.sh("backup-restore", "1", "--config-only", "--yes"))
    assert project.config.read_bytes() == good
    assert out.stdout.strip().splitlines()[-1] == COMPLETE
    assert "undo: ./sparkq.sh backup-restore sparkq_preRestore_" in out.stdout


def test_scenario_2_database_corruption(project):
    _started(project)
    _api(project, "/api/prompts", {"command": "after-backup", "label": "x", "template_text": "t"}, "POST")

    # While the server runs the restore is refused and the DB is left exactly as it was.
    before = _sha(project.db)
    busy = project.sh("backup-restore", "1", "--yes")
    assert busy.returncode == 6, busy.stderr
    assert "the server is running (PID" in busy.stderr and "./sparkq.sh stop" in busy.stderr
    assert _sha(project.db) == before
    assert _pre_restores(project) == []

    ok(project.sh("stop"))
    data = bytearray(project.db.read_bytes())
    data[:100] = b"\x5a" * 100  # the header is gone: "file is not a database"
    project.db.write_bytes(bytes(data))
    broken = _sha(project.db)

    # No terminal and no --yes: the plan is shown, then refused with exit 2; nothing changes.
    asked = project.sh("backup-restore", "1")
    assert asked.returncode == 2, asked.stderr
    assert "--yes" in asked.stderr and "Restore plan" in asked.stdout
    assert _sha(project.db) == broken and _pre_restores(project) == []

    ok(project.sh("backup-restore", "1", "--yes"))
    assert len(_pre_restores(project)) == 1
    ok(project.sh("start"))
    assert _api(project, "/health")["db"] == "ok"
    commands = {p["command"] for p in _api(project, "/api/prompts")}
    assert len(commands) == 33 and "after-backup" not in commands
    ok(project.sh("stop"))


def test_scenario_3_lost_custom_prompts_export(project):
    _started(project)
    ok(project.sh("stop"))
    db_sha = _sha(project.db)

    for proc in (project.sh("backup-restore", "1", "export-prompts"),
                 project._run([str(RESTORE_SH), "export-prompts", "1"], None, 60, None)):
        prompts = json.loads(ok(proc).stdout)
        assert len(prompts) >= 33
        assert {"command", "label", "template_text"} <= set(prompts[0])
    assert _sha(project.db) == db_sha
    assert _pre_restores(project) == []


def test_scenario_4_rollback_after_a_bad_config_change(project):
    _started(project)  # backup of the good state
    good_yml = project.config.read_bytes()
    theme = _api(project, "/api/config/ui/theme")["value"]
    _api(project, "/api/config/ui/theme", {"value": "broken"}, "PUT")
    project.config.write_text(good_yml.decode() + "purge:\n  keep_days: 0\n")
    ok(project.sh("restart"))  # backs up the bad state: it is number 1 now, the good one 2

    show = ok(project.sh("backup-show", "2"))
    assert "manifest.json" in show.stdout and "sparkq.yml" in show.stdout
    ok(project.sh("stop"))
    out = ok(project.sh("backup-restore", "2", "--yes"))
    assert "sparkq.yml" in out.stdout
    ok(project.sh("restart"))

    assert project.config.read_bytes() == good_yml
    assert _api(project, "/api/config/ui/theme")["value"] == theme
    ok(project.sh("stop"))


def test_scenario_5_settings_from_an_old_backup(project):
    _started(project)
    ok(project.sh("stop"))
    listing = json.loads(ok(project.sh("backup-list", "--json")).stdout)
    bundle = Path(listing["backups"][0]["path"])

    config_rows = json.loads((bundle / "config_export.json").read_text())
    assert config_rows and {"namespace", "key", "value"} <= set(config_rows[0])
    roles = json.loads((bundle / "agent_roles_export.json").read_text())
    assert len(roles) == 8 and all("key" in r and "label" in r for r in roles)


def test_restore_refused_while_a_process_holds_the_db(project, reaper):
    ok(project.sh("setup"))
    ok(project.sh("backup"))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(project.db)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE'); print('ready', flush=True); sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reaper.add(holder.pid)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = _sha(project.db)
        proc = project.sh("backup-restore", "1", "--yes")
        assert proc.returncode == 6, proc.stderr
        assert "another process" in proc.stderr and "sparkq.db" in proc.stderr
        assert not project.pidfile.exists()
        assert _sha(project.db) == before
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_usage_errors_change_nothing(project):
    ok(project.sh("setup"))
    ok(project.sh("backup"))
    both = project.sh("backup-restore", "1", "--db-only", "--config-only", "--yes")
    assert both.returncode == 2 and "cannot be combined" in both.stderr

    legacy = project.backup_dir / "sparkq_20200101_000000.db"
    shutil.copyfile(project.db, legacy)
    proc = project.sh("backup-restore", legacy.name, "--config-only", "--yes")
    assert proc.returncode == 2
    assert "legacy backup sparkq_20200101_000000.db has no sparkq.yml; use --db-only" in proc.stderr

    bad = project.sh("backup-restore", "1", "--tables", "tasks", "--yes")
    assert bad.returncode == 2 and "prompts" in bad.stderr
    missing = project.sh("backup-restore", "7", "--yes")
    assert missing.returncode == 4
    assert _pre_restores(project) == []


def test_tables_merge_through_the_cli(project):
    ok(project.sh("setup"))
    ok(project.sh("backup"))
    ok(project.sh("start"))
    victim = _api(project, "/api/prompts")[0]
    _api(project, f"/api/prompts/{victim['id']}", method="DELETE")
    session = _api(project, "/api/sessions", {"name": "work"}, "POST")
    queue = _api(project, "/api/queues", {"session_id": session["id"], "name": "q"}, "POST")
    task = _api(project, "/api/tasks", {"queue_id": queue["id"], "tool_name": "llm-sonnet", "payload": {}}, "POST")
    ok(project.sh("stop"))

    out = ok(project.sh("backup-restore", "1", "--tables", "prompts", "--yes"))
    assert "prompts" in out.stdout and "--db-only --yes" in out.stdout
    ok(project.sh("start"))
    assert victim["command"] in {p["command"] for p in _api(project, "/api/prompts")}
    assert _api(project, f"/api/tasks/{task['id']}")["id"] == task["id"]
    ok(project.sh("stop"))


@pytest.mark.parametrize("scope", ["--db-only", "--config-only"])
def test_pre_restore_bundle_links_or_snapshots(project, scope):
    ok(project.sh("setup"))
    ok(project.sh("backup"))
    inode = project.db.stat().st_ino
    ok(project.sh("backup-restore", "1", scope, "--yes"))
    [pre] = _pre_restores(project)
    kept = (pre / "sparkq.db").stat()
    if scope == "--db-only":
        assert kept.st_ino == inode and project.db.stat().st_ino != inode
    else:
        assert kept.st_ino != inode and project.db.stat().st_ino == inode
