"""Restores and backups in situations a new user met: a live database that is not one, our own
backup still running, a .env that is a FIFO."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import SPARKQ_BIN, grow_db, ok, wait_until


def test_config_only_restore_keeps_a_damaged_live_database_as_it_is(project):
    ok(project.cli("setup"))
    ok(project.cli("backup"))
    with open(project.db, "r+b") as fh:
        fh.write(b"JUNKJUNKJUNKJUNK")  # no longer starts like an SQLite database
    damaged = project.db.read_bytes()
    project.config.write_text("# lost\n")
    out = ok(project.cli("backup-restore", "1", "--config-only", "--yes"))
    assert "# lost" not in project.config.read_text()
    pre = next(p for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_preRestore_"))
    assert (pre / "sparkq.db").read_bytes() == damaged == project.db.read_bytes()
    assert (pre / "sparkq.yml").read_text() == "# lost\n"
    assert pre.name in out.stdout


def test_a_restore_waits_for_our_own_backup_instead_of_refusing(project):
    """A `sparkq backup` holds the supervisor lock (shared) and reads the database: the restore
    waits for the lock, as it says, then goes on; it does not call our backup a foreign program."""
    from supervisor import config

    ok(project.cli("setup"))
    ok(project.cli("backup"))
    lockfile = config.load().paths.lockfile
    code = ("import fcntl, os, sqlite3, sys\n"
            f"fd = os.open({str(lockfile)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_SH)\n"
            f"c = sqlite3.connect({str(project.db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN'); c.execute('SELECT count(*) FROM prompts').fetchall()\n"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    like_a_backup = project.popen(sys.executable, "-c", code, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert like_a_backup.stdout.readline().strip() == "ready"
    restore = project.popen(str(SPARKQ_BIN), "backup-restore", "1", "--db-only", "--yes", stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    wait_until(lambda: restore.poll() is not None or bool(err_lines.append(restore.stderr.readline()) or
                                                          "waiting for" in "".join(err_lines)),
               timeout=60, what="the restore to wait for the lock")
    assert restore.poll() is None, (restore.returncode, err_lines)  # not refused
    like_a_backup.stdin.close()
    like_a_backup.wait(10)
    out, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, "".join(err_lines) + err
    assert "Restored from" in out


def test_a_fifo_env_never_blocks_a_backup_or_a_restore(project):
    ok(project.cli("setup"))
    env = project.root / ".env"
    env.unlink()
    os.mkfifo(env)
    made = project.cli("backup", timeout=60)
    assert made.returncode == 0, made.stderr
    assert "backup_member_skipped" in made.stderr and "not a regular file" in made.stderr
    bundle = next(p for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_2"))
    assert not (bundle / ".env").exists()
    ok(project.cli("backup-restore", "1", "--db-only", "--yes", timeout=60))


def _undo(out: str) -> str:
    return out.split("undo: ", 1)[1].splitlines()[0]


def test_the_printed_undo_works_when_the_restored_config_reads_another_backup_dir(project):
    from helpers import SPARKQ_SH

    ok(project.cli("setup"))
    before = project.config.read_text()
    project.config.write_text(before + "backup:\n  dir: sparkq/data/backups2\n")
    ok(project.cli("backup"))  # its sparkq.yml reads backups2
    project.config.write_text(before)
    other = project.root / "sparkq/data/backups2"
    project.backup_dir.mkdir(parents=True, exist_ok=True)
    for bundle in other.iterdir():
        if bundle.name.startswith("sparkq_"):
            os.rename(bundle, project.backup_dir / bundle.name)
    out = ok(project.cli("backup-restore", "1", "--yes")).stdout
    assert "backups2" in project.config.read_text()
    undo = _undo(out).replace("./sparkq.sh", str(SPARKQ_SH))
    done = subprocess.run(["bash", "-c", undo], cwd=project.root, env=project.env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (undo, done.stderr)
    assert project.config.read_text() == before


def test_the_undo_of_a_restore_into_an_empty_project_says_there_is_nothing_to_put_back(project):
    ok(project.cli("setup"))
    ok(project.cli("backup"))
    for path in (project.db, project.config, project.root / ".env"):
        path.unlink()
    out = ok(project.cli("backup-restore", "1", "--yes")).stdout
    assert "nothing to put back by a restore" in _undo(out)
