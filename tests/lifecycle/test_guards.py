"""Guards around the lifecycle: no fresh DB over existing backups, stop despite a broken config,
and manual backups kept out while an exclusive command (start, setup, restore) runs."""

from __future__ import annotations

import json

import subprocess
import threading

import psutil

from helpers import SPARKQ_BIN, one_line_error, wait_until
from supervisor import config
from supervisor.locking import file_lock
from supervisor.initialize import run_setup


def test_start_refuses_to_seed_a_fresh_db_over_existing_backups(project, fake):
    run_setup(config.load())
    assert project.cli("backup").returncode == 0
    project.db.unlink()
    proc = project.cli("start")
    assert proc.returncode == 2
    assert "is missing but 1 backup(s) exist" in proc.stderr and "backup-restore 1 --db-only" in proc.stderr
    assert not project.db.exists() and not project.pidfile.exists()


def test_a_bad_value_does_not_hide_a_server_with_another_database_path(project, fake):
    """stop and status load sparkq.yml leniently: a typo in one value must not make them look for
    the server beside the default database path and call it stopped."""
    good = project.config.read_text() + "database:\n  path: mydata/q.db\n"
    project.config.write_text(good)
    assert project.cli("setup").returncode == 0
    assert project.cli("start").returncode == 0
    pid = json.loads(project.cli("status", "--json").stdout)["pid"]
    project.config.write_text(good.replace("stop_timeout: 5", "stop_timeout: ten"))
    st = project.cli("status")
    assert st.returncode == 0 and f"PID {pid}" in st.stdout, (st.stdout, st.stderr)
    assert "'server.stop_timeout' must be" in st.stderr
    proc = project.cli("stop")
    assert proc.returncode == 0 and f"stopped (PID {pid}" in proc.stdout, (proc.stdout, proc.stderr)
    assert fake.gone(pid)


def test_stop_works_with_a_broken_sparkq_yml(project, fake):
    assert project.cli("start").returncode == 0
    good = project.config.read_text()
    project.config.write_text(good + "server: [\n")
    proc = project.cli("stop")
    assert proc.returncode == 0, proc.stderr
    assert "stopped (PID" in proc.stdout and "using default paths" in proc.stderr
    assert not project.pidfile.exists()


def test_manual_backup_waits_for_an_exclusive_command(project):
    run_setup(config.load())
    settings = config.load()
    release = threading.Event()
    held = threading.Event()

    def hold():
        with file_lock(settings.paths.lockfile):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        backup = project.popen(str(SPARKQ_BIN), "backup", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def waiting_on_lock():
            assert backup.poll() is None, "the backup did not wait for the exclusive holder"
            files = [f.path for f in psutil.Process(backup.pid).open_files()]
            return str(settings.paths.lockfile) in files

        wait_until(waiting_on_lock, what="the backup to wait on the supervisor lock")
        assert not any(project.backup_dir.glob("sparkq_*")), "a bundle was written under an exclusive lock"
    finally:
        release.set()
        holder.join()
    out, err = backup.communicate(timeout=60)
    assert backup.returncode == 0, err
    wait_until(lambda: any(project.backup_dir.glob("sparkq_*")), what="the bundle after the lock was released")


def test_a_server_of_another_database_path_is_named_with_how_to_stop_it(project):
    """database.path edited while the (bundled) server runs: this config no longer finds its
    pidfile, so status, start and stop name that server and say how to stop it, instead of
    "stopped", "another program" and "not running"."""
    good = project.config.read_text()
    assert project.cli("start").returncode == 0
    project.reaper.adopt_pidfile(project.pidfile)
    pid = json.loads(project.pidfile.read_text())["pid"]
    project.config.write_text(good + "database:\n  path: elsewhere/q.db\n")
    said = f"a SparkQ server started with other settings (PID {pid}, database "
    status = project.cli("status")
    assert status.returncode == 3 and said in status.stdout, status.stdout
    line = one_line_error(project.cli("start", "--skip-backup"), codes={1})
    assert said in line and "./sparkq.sh stop" in line
    stopped = project.cli("stop")
    assert stopped.returncode == 0 and said in stopped.stdout and "not running" in stopped.stdout
    project.config.write_text(good)  # what the message says to do
    assert f"stopped (PID {pid}" in project.cli("stop").stdout
