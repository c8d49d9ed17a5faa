"""start / stop / status / restart through the real `sparkq` command, with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import psutil
import pytest

from helpers import SPARKQ_BIN, wait_until


def _has_backup_engine() -> bool:
    try:
        from supervisor.backup.create import create_backup  # noqa: F401
    except ImportError:
        return False
    return True


def _pidfile(project) -> dict:
    return json.loads(project.pidfile.read_text())


def test_start_status_stop_round_trip(project, fake):
    args = [] if _has_backup_engine() else ["--skip-backup"]
    started = project.cli("start", *args)
    assert started.returncode == 0, started.stderr
    info = _pidfile(project)
    assert f"PID {info['pid']}" in started.stdout and project.url in started.stdout
    assert {"pid", "create_time", "argv", "host", "port", "started_at", "url"} <= info.keys()
    assert info["port"] == project.port and info["argv"][-1] == "ok"
    assert project.pidfile.stat().st_mode & 0o022 == 0  # not group/world writable
    if args == []:
        assert [p for p in project.backup_dir.iterdir() if not p.name.startswith(".")]

    st = project.cli("status")
    assert st.returncode == 0, st.stderr
    assert "running" in st.stdout and str(info["pid"]) in st.stdout and project.url in st.stdout
    as_json = json.loads(project.cli("status", "--json").stdout)
    assert as_json["running"] is True and as_json["pid"] == info["pid"]
    assert as_json["health"]["status"] == "ok" and as_json["health"]["pid"] == info["pid"]
    assert as_json["db_path"] == str(project.db) and as_json["db_size"] > 0
    if args == []:
        assert as_json["newest_backup"].startswith("sparkq_") and as_json["newest_backup_age_s"] < 60

    stopped = project.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (PID {info['pid']}" in stopped.stdout
    assert fake.gone(info["pid"]) and not project.pidfile.exists()

    st = project.cli("status")
    assert st.returncode == 3 and "stopped" in st.stdout
    again = project.cli("stop")
    assert again.returncode == 0 and "not running" in again.stdout


def test_status_json_keys_when_stopped(project, fake):
    result = project.cli("status", "--json")
    assert result.returncode == 3
    data = json.loads(result.stdout)
    assert set(data) == {"running", "state", "pid", "supervisor_pid", "restarts", "last_exit", "next_retry_in_s",
                         "reason", "started_at", "uptime_s", "url", "health", "db_path", "db_size",
                         "newest_backup", "newest_backup_age_s", "next_backup_in_s", "backup_running",
                         "last_backup_error", "last_backup_failed_at", "notice", "warnings"}
    assert data["running"] is False and data["pid"] is None and data["state"] == "stopped"
    assert data["health"]["ok"] is False  # always an object


def test_start_twice_gives_one_server(project, fake):
    first = project.cli("start", "--skip-backup")
    assert first.returncode == 0, first.stderr
    pid = _pidfile(project)["pid"]
    second = project.cli("start")  # no --skip-backup: backs up beside the running server
    assert second.returncode == 0, second.stderr
    assert f"already running (PID {pid}, {project.url})" in second.stdout
    assert "backup sparkq_" in second.stdout  # the first start skipped its backup
    assert fake.spawn_count() == 1 and len(fake.running()) == 1
    assert len(list(project.backup_dir.glob("sparkq_2*"))) == 1


def test_five_concurrent_starts_give_one_server(project, fake):
    procs = [project.popen(str(SPARKQ_BIN), "start", "--skip-backup", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for _ in range(5)]
    outs = [p.communicate(timeout=60) for p in procs]
    project.reaper.adopt_pidfile(project.pidfile)
    assert [p.returncode for p in procs] == [0] * 5, [err for _, err in outs]
    assert sum("started (PID" in out for out, _ in outs) == 1
    assert sum("already running" in out for out, _ in outs) == 4
    assert fake.spawn_count() == 1 and len(fake.running()) == 1
    # The four that found it running answered their `start` without touching the state file of
    # the supervisor in charge: status still sees that one.
    status = json.loads(project.cli("status", "--json").stdout)
    assert status["state"] == "running" and status["supervisor_pid"] is not None, status


def test_kill_9_then_status_cleans_stale_pidfile_then_start_works(project, fake):
    assert project.cli("start", "--skip-backup").returncode == 0
    pid, supervisor = _pidfile(project)["pid"], _pidfile(project)["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)  # first: a supervisor would clean up (and restart) itself
    wait_until(lambda: fake.gone(supervisor), what="supervisor gone after SIGKILL")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: fake.gone(pid), what="server gone after SIGKILL")

    st = project.cli("status")
    assert st.returncode == 3
    assert "stale pidfile" in st.stdout and not project.pidfile.exists()
    assert "stale" not in project.cli("status").stdout  # reported once

    again = project.cli("start", "--skip-backup")
    assert again.returncode == 0, again.stderr
    assert _pidfile(project)["pid"] != pid and len(fake.running()) == 1


@pytest.mark.parametrize("identity", ["real_create_time", "wrong_create_time"])
def test_pidfile_naming_an_unrelated_process_is_never_signalled(project, fake, identity):
    sleeper = project.popen("sleep", "600")
    created = psutil.Process(sleeper.pid).create_time()
    project.pidfile.parent.mkdir(parents=True, exist_ok=True)
    project.pidfile.write_text(json.dumps({
        "pid": sleeper.pid,
        "create_time": created if identity == "real_create_time" else created - 1000,
        "argv": ["python", "-P", "-m", "sparkq", "--port", str(project.port)],
        "host": "127.0.0.1", "port": project.port, "started_at": "2020-01-01T00:00:00+00:00",
        "url": project.url,
    }))
    stopped = project.cli("stop")
    assert stopped.returncode == 0 and "not running" in stopped.stdout
    assert sleeper.poll() is None, "an unrelated process was signalled"
    assert not project.pidfile.exists()
    assert project.cli("status").returncode == 3
    assert sleeper.poll() is None


def test_stop_kills_a_server_that_ignores_sigterm(project, fake):
    fake.configure("ignore-term", stop_timeout=2)
    assert project.cli("start", "--skip-backup").returncode == 0
    pid = _pidfile(project)["pid"]
    helper = wait_until(lambda: fake.logged_pids("helper"), what="helper pid")[0]
    project.reaper.add(helper)

    began = time.monotonic()
    stopped = project.cli("stop")
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stderr
    assert "SIGKILL" in stopped.stdout
    assert 2 <= took < 2 + 4  # with the supervisor asked to leave first
    assert fake.gone(pid) and fake.gone(helper)  # the whole group
    assert not project.pidfile.exists()


def test_server_that_exits_at_boot_fails_start_with_its_log(project, fake):
    fake.configure("boot-fail")
    result = project.cli("start", "--skip-backup")
    assert result.returncode == 1
    assert "exited with status 3" in result.stderr
    assert "boom: cannot open the widget store" in result.stderr
    assert not project.pidfile.exists()
    assert all(fake.gone(pid) for pid in fake.logged_pids()) and not fake.running()


def test_server_that_never_answers_times_out(project, fake):
    fake.configure("mute", start_timeout=2)
    began = time.monotonic()
    result = project.cli("start", "--skip-backup")
    assert result.returncode == 1
    assert time.monotonic() - began < 2 + 5
    assert "did not answer GET" in result.stderr and "within 2s" in result.stderr
    assert "mode=mute" in result.stderr  # the log tail
    assert not project.pidfile.exists() and not fake.running()


def test_sigterm_to_a_waiting_start_leaves_no_server(project, fake):
    fake.configure("mute", start_timeout=30)
    cli = project.popen(str(SPARKQ_BIN), "start", "--skip-backup", stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    server = wait_until(fake.running, what="the server to be spawned")[0]
    project.reaper.add(server.pid)
    cli.terminate()
    cli.communicate(timeout=20)
    assert cli.returncode == 130
    wait_until(lambda: fake.gone(server.pid), timeout=5, what="the half-started server to be killed")
    assert not project.pidfile.exists()


def test_port_taken_by_another_program_fails_fast(project, fake):
    with socket.socket() as other:
        other.bind(("127.0.0.1", project.port))
        other.listen()
        result = project.cli("start", "--skip-backup")
    assert result.returncode == 1 and "already in use" in result.stderr
    assert fake.spawn_count() == 0 and not project.pidfile.exists()


def test_a_start_refused_for_a_taken_port_sets_nothing_up(project):
    assert project.config.exists() and not project.db.exists()
    with socket.socket() as other:
        other.bind(("127.0.0.1", project.port))
        other.listen()
        result = project.cli("start")
    assert result.returncode == 1 and "already in use" in result.stderr
    assert not project.db.exists()  # no first-run database seeded for a start that never ran


def test_restart_leaves_one_server_on_the_same_port(project, fake):
    assert project.cli("start", "--skip-backup").returncode == 0
    old = _pidfile(project)["pid"]
    result = project.sh("restart", "--skip-backup")
    assert result.returncode == 0, result.stderr
    new = _pidfile(project)["pid"]
    assert new != old and fake.gone(old)
    assert f"stopped (PID {old})" in result.stdout and f"started (PID {new}, {project.url})" in result.stdout
    assert [p.pid for p in fake.running()] == [new]
    status = json.loads(project.sh("status", "--json").stdout)
    assert status["health"]["pid"] == new and status["url"] == project.url
    assert project.sh("stop").returncode == 0


def test_env_file_reaches_the_server_and_bad_lines_warn_without_values(project, fake):
    fake.configure(host="0.0.0.0")
    (project.root / ".env").write_bytes(
        b"# comment\nFAKE_PLAIN=plain value\nexport FAKE_QUOTED=\"with # hash\"\n"
        b"FAKE_SINGLE='single'\nthis line is wrong SECRET1\nFAKE_BAD\xff=SECRET2\n"
    )
    result = project.cli("start", "--skip-backup")
    assert result.returncode == 0, result.stderr
    assert ('"FAKE_PLAIN": "plain value", "FAKE_QUOTED": "with # hash", "FAKE_SINGLE": "single"'
            in fake.log_text())
    assert "env_file_lines_skipped" in result.stderr and "[5, 6]" in result.stderr
    assert "SECRET" not in result.stderr + result.stdout
    assert "reachable from other machines" in result.stdout
    assert "pre_start_backup_skipped" in result.stderr
    assert project.cli("stop").returncode == 0
