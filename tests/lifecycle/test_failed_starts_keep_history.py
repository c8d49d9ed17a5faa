"""Issue 11.1: no start, run or restart, failed or not, pushes good backup history out.

Two rules, both checked through the real `sparkq` command: a pre-start backup of a state the
newest bundle already holds writes nothing (and says so), and retention runs only once the
server is healthy.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta

from helpers import T0, make_bundle, stamp, tree_state


def _regular(project) -> list[str]:
    return sorted(p.name for p in project.backup_dir.glob("sparkq_2*"))


def _old_bundles(project, seed_db, n: int = 7) -> dict:
    names = [f"sparkq_{stamp(T0 - timedelta(days=i + 1))}" for i in range(n)]
    for name in names:
        make_bundle(project.backup_dir, name, seed_db)
    return {name: tree_state(project.backup_dir / name) for name in names}


def _touch_db(project, command: str = "touched") -> None:
    conn = sqlite3.connect(project.db)
    conn.execute("INSERT INTO prompts (id, command, label, template_text) VALUES (?, ?, 'x', 't')",
                 (f"prm_{command}", command))
    conn.commit()
    conn.close()


def test_failed_starts_and_runs_keep_every_old_bundle(project, fake, seed_db):
    fake.configure("boot-fail")
    old = _old_bundles(project, seed_db)
    _touch_db(project)  # the live state differs from every old bundle: the first start backs it up
    outputs = []
    for command in ["start"] * 7 + ["run"] * 7:
        proc = project.cli(command)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        outputs.append(proc.stdout + proc.stderr)  # start says it on stdout, run on stderr
    for name, state in old.items():
        assert tree_state(project.backup_dir / name) == state, f"{name} changed or was pruned"
    new = sorted(set(_regular(project)) - set(old))
    assert len(new) == 1, new  # the first failed start wrote one; the other 13 found it unchanged
    # Every failed start still says what its backup did.
    assert f"backup {new[0]} (" in outputs[0]
    for text in outputs[1:]:
        assert f"backup: unchanged since {new[0]}, none written" in text, text


def test_unchanged_state_writes_nothing_and_any_change_does(project, fake):
    first = project.cli("start")
    assert first.returncode == 0, first.stderr
    assert project.cli("stop").returncode == 0
    [written] = _regular(project)

    again = project.cli("start")
    assert again.returncode == 0, again.stderr
    assert f"backup: unchanged since {written}, none written" in again.stdout
    assert project.cli("stop").returncode == 0
    assert _regular(project) == [written]

    # One byte more in .env is a new state: a bundle is written.
    env = project.root / ".env"
    env.write_text((env.read_text() if env.exists() else "") + "#\n")
    assert project.cli("restart").returncode == 0
    assert project.cli("stop").returncode == 0
    assert len(_regular(project)) == 2

    # So is one row more in the database.
    _touch_db(project)
    assert project.cli("start").returncode == 0
    assert project.cli("stop").returncode == 0
    assert len(_regular(project)) == 3

    # The newest bundle damaged on disk cannot stand in for the state: write a new one.
    newest = project.backup_dir / _regular(project)[-1] / "sparkq.db"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    proc = project.cli("start")
    assert proc.returncode == 0 and "unchanged" not in proc.stdout, proc.stdout
    assert project.cli("stop").returncode == 0
    assert len(_regular(project)) == 4


def test_retention_waits_until_the_server_is_healthy(project, fake, seed_db):
    old = _old_bundles(project, seed_db, n=4)
    keep2 = {"SPARKQ_BACKUP_KEEP": "2"}
    fake.configure("boot-fail")
    _touch_db(project)
    assert project.cli("start", env=keep2).returncode != 0
    assert set(old) <= set(_regular(project)) and len(_regular(project)) == 5

    fake.configure("ok")
    proc = project.cli("start", env=keep2)  # sparkq.yml changed (server.command): a new bundle
    assert proc.returncode == 0, proc.stderr
    assert "; pruned 4 old backups" in proc.stdout, proc.stdout
    assert project.cli("stop").returncode == 0
    assert len(_regular(project)) == 2 and not set(old) & set(_regular(project))

    # Unchanged, a healthy start still applies retention: the newest bundle stands for it.
    proc = project.cli("start", env={"SPARKQ_BACKUP_KEEP": "1"})
    newest = _regular(project)[-1]
    assert f"backup: unchanged since {newest}, none written; pruned 1 old backup" in proc.stdout, proc.stdout
    assert project.cli("stop").returncode == 0
    assert _regular(project) == [newest]


def test_run_prunes_once_healthy(project, fake, seed_db, reaper):
    import subprocess

    from helpers import SPARKQ_BIN, wait_until

    _old_bundles(project, seed_db, n=4)
    _touch_db(project)
    proc = project.popen(str(SPARKQ_BIN), "run", env={"SPARKQ_BACKUP_KEEP": "2"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(_regular(project)) == 2, timeout=30, what="run to prune past keep")
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "backup: pruned 3 old backups" in err, err


def test_a_newest_bundle_with_a_damaged_export_does_not_stand_in(project):
    """The bundle that stands for an unchanged state must pass backup-verify whole, exports too."""
    assert project.cli("setup").returncode == 0
    first = project.cli("backup")
    assert first.returncode == 0, first.stderr
    newest = sorted(_regular(project))[-1]
    export = next((project.backup_dir / newest).glob("*_export.json"))
    os.chmod(export, 0o600)
    export.write_text("[]")
    started = project.cli("start")
    try:
        assert started.returncode == 0, started.stderr
        assert "unchanged" not in started.stdout, started.stdout
        assert len(_regular(project)) == 2
    finally:
        project.cli("stop")


def test_a_restore_served_again_unchanged_writes_no_bundle(project):
    # The bundled server: it opens the restored file in WAL mode, which rewrites the header's
    # change counter. The rows are the same, so no start or restart after it may write a bundle.
    assert project.cli("start").returncode == 0
    assert project.cli("stop").returncode == 0
    [newest] = _regular(project)
    restored = project.cli("backup-restore", "1", "--db-only", "--yes")
    assert restored.returncode == 0, restored.stderr
    for command in ("start", "restart", "restart"):
        proc = project.cli(command)
        assert proc.returncode == 0, proc.stderr
        assert f"backup: unchanged since {newest}, none written" in proc.stdout, (command, proc.stdout)
    assert project.cli("stop").returncode == 0
    assert _regular(project) == [newest]


def test_start_and_stop_after_a_config_change_backs_it_up_while_running(project):
    # The guide's way to take a backup after a config change: `start && stop`. With the server
    # already running, the start backs the new sparkq.yml up beside it before the stop.
    assert project.cli("start").returncode == 0
    [first] = _regular(project)
    project.config.write_text(project.config.read_text() + "# a major change\n")
    again = project.cli("start")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout and "backup sparkq_" in again.stdout, again.stdout
    assert project.cli("stop").returncode == 0
    [newest] = set(_regular(project)) - {first}
    assert (project.backup_dir / newest / "sparkq.yml").read_text().endswith("# a major change\n")
