"""Off-site copies to a REST backend (`rclone serve restic` on loopback, with a user:password in
the URL): restore into a new machine after the first project folder is deleted; a backend that
is down leaves backups local and pending until `backup-push`; secrets never printed."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import time

import httpx

from helpers import Project, base_env, free_port
from offsite_helpers import PASSWORD, background_pushers, offsite_config, reap_pushers


def _mark(db, value: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS dr_marker(v TEXT)")
        conn.execute("INSERT INTO dr_marker VALUES (?)", (value,))
    conn.close()


def _secrets_absent(rest_server, *procs) -> None:
    for proc in procs:
        out = proc.stdout + proc.stderr
        assert PASSWORD not in out and rest_server.secret not in out, out


def test_new_machine_recovery(hermetic_cache, rest_server, password_file, tmp_path, reaper):
    first = hermetic_cache
    offsite_config(first, rest_server.url, password_file)
    assert first.cli("setup").returncode == 0
    _mark(first.db, "before-the-disk-died")
    env_text = (first.root / ".env").read_bytes()
    made = first.cli("backup")
    assert made.returncode == 0 and "-> snapshot" in made.stdout, made.stdout + made.stderr
    shutil.rmtree(first.root)  # the machine is gone

    root = tmp_path / "new-machine"
    root.mkdir()
    fresh = Project(root=root, port=free_port(), env=base_env(root), reaper=reaper)
    fresh.env["RESTIC_CACHE_DIR"] = str(tmp_path / "cache-2")
    # Only server.port in sparkq.yml; the repository and password come from the environment.
    fresh.config.write_text(f"server:\n  port: {fresh.port}\n")
    fresh.env.update(RESTIC_REPOSITORY=rest_server.url, RESTIC_PASSWORD_FILE=str(password_file))
    restored = fresh.sh("backup-restore", "--offsite", "latest", "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    # The recovery's normal case, said as a note: no WARNING about another project or host.
    assert "WARNING" not in restored.stdout and "as on a new machine" in restored.stdout, restored.stdout
    assert stat.S_IMODE((root / ".env").stat().st_mode) == 0o600
    assert (root / ".env").read_bytes() == env_text
    fresh.config.write_text(f"server:\n  port: {fresh.port}\n")  # the restored yml names the old port
    # The fetched bundle is stored off-site already: not pending, never pushed a second time.
    assert json.loads(fresh.cli("status", "--json").stdout)["offsite"]["pending"] == 0
    started = fresh.sh("start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert httpx.get(f"{fresh.url}/health", timeout=5).status_code == 200
        with sqlite3.connect(f"file:{fresh.db}?mode=ro", uri=True) as conn:
            assert conn.execute("SELECT v FROM dr_marker").fetchall() == [("before-the-disk-died",)]
        conn.close()
    finally:
        fresh.sh("stop")
        reap_pushers(root)
    listed = json.loads(fresh.cli("backup-list", "--offsite", "--json").stdout)["snapshots"]
    assert len(listed) == len({s["bundle"] for s in listed}), listed  # each bundle stored once
    _secrets_absent(rest_server, made, restored, started)


def test_backend_down_keeps_backups_pending(hermetic_cache, rest_server, password_file):
    project = hermetic_cache
    offsite_config(project, rest_server.url, password_file)
    assert project.cli("setup").returncode == 0
    assert "-> snapshot" in project.cli("backup").stdout
    rest_server.stop()
    down = [project.cli("backup") for _ in range(2)]
    for proc in down:
        assert proc.returncode == 0, proc.stderr  # the local backup succeeded
        assert "off-site: push failed" in proc.stdout and "pending" in proc.stdout
    info = json.loads(project.cli("status", "--json").stdout)["offsite"]
    assert info["pending"] == 2 and info["last_error"]
    shown = project.cli("status")
    assert "off-site: 2 pending, last push failed" in shown.stdout
    assert len(list(project.backup_dir.glob("sparkq_*"))) == 3
    unchecked = project.cli("backup-verify", "--offsite")  # no verdict on copies it cannot reach
    assert unchecked.returncode == 1 and len(unchecked.stderr.strip().splitlines()) == 1, unchecked.stderr
    rest_server.start()
    pushed = project.cli("backup-push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert pushed.stdout.count("-> snapshot") == 2
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 0
    listed = json.loads(project.cli("backup-list", "--offsite", "--json").stdout)
    assert len(listed["snapshots"]) == 3 and rest_server.secret not in json.dumps(listed)
    _secrets_absent(rest_server, *down, shown, pushed)
    log = project.root / "sparkq" / "logs" / "supervisor.log"
    assert rest_server.secret not in log.read_text() and PASSWORD not in log.read_text()


def test_restore_by_bundle_name_with_the_offsite_flag(hermetic_cache, rest_server, password_file):
    project = hermetic_cache
    offsite_config(project, rest_server.url, password_file)
    assert project.cli("setup").returncode == 0
    _mark(project.db, "one")
    name = project.cli("backup").stdout.split()[1]
    _mark(project.db, "two")
    shutil.rmtree(project.backup_dir / name)
    restored = project.cli("backup-restore", "--offsite", name, "--db-only", "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    with sqlite3.connect(f"file:{project.db}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT v FROM dr_marker").fetchall() == [("one",)]
    conn.close()
    assert (project.backup_dir / name).is_dir()
    assert not [p for p in project.backup_dir.iterdir() if p.name.startswith(".offsite-")]
    missing = project.cli("backup-restore", "--offsite", "sparkq_20000101_000000", "--yes")
    assert missing.returncode == 4 and missing.stderr.count("\n") == 1


def test_the_supervisor_loop_pushes_again_once_the_backoff_is_over(hermetic_cache, rest_server, password_file,
                                                                    monkeypatch):
    """The loop's look at failed pushes (every minute while the server runs) starts a background
    push only when the failure's backoff is over. The two waits are skipped by moving their
    deadlines, the only thing not real here."""
    from supervisor import config
    from supervisor.backup import offsite_state
    from supervisor.signals import StopSignals
    from supervisor.supervise import Supervisor
    from supervisor.systemd import Notifier

    project = hermetic_cache
    offsite_config(project, rest_server.url, password_file)
    assert project.cli("setup").returncode == 0
    rest_server.stop()
    assert "pending" in project.cli("backup").stdout
    rest_server.start()
    monkeypatch.setenv("RESTIC_CACHE_DIR", project.env["RESTIC_CACHE_DIR"])  # the push child's env
    settings = config.load()
    loop = Supervisor(settings, "run", Notifier(None), StopSignals(Notifier(None)))
    from supervisor.backup.offsite import repository_of

    state = offsite_state.load(settings.paths, repository_of(settings))
    assert state.failures == 1 and not state.retry_due()

    loop.next_offsite_check = 0.0  # the loop's minute is over, the backoff's is not
    loop.periodic()
    assert not background_pushers(project.root)
    assert loop.next_offsite_check > time.monotonic() + 50  # the next look is a minute away

    state.retry_at = time.time() - 1  # now the backoff is over too
    offsite_state.save(settings.paths, state)
    loop.next_offsite_check = 0.0
    loop.periodic()
    reap_pushers(project.root)
    info = json.loads(project.cli("status", "--json").stdout)["offsite"]
    assert info["pending"] == 0 and offsite_state.load(settings.paths, repository_of(settings)).failures == 0, info
