"""supervisor.pidfile identity, supervisor.process, ports and log tails, .env parsing, exit statuses."""

from __future__ import annotations

import json
import os
import socket
import sys

import psutil
from structlog.testing import capture_logs

from supervisor import config, logs, pidfile, ports, process
from supervisor.envfile import read_env_file
from supervisor.errors import exit_status


def _paths(project):
    return config.load(root=project.root).paths


def _write(project, **data) -> None:
    project.pidfile.parent.mkdir(parents=True, exist_ok=True)
    project.pidfile.write_text(json.dumps(data))


def test_no_pidfile_is_simply_not_running(project):
    assert pidfile.identify(_paths(project)) == (None, None)


def _session_leader(project):
    """A child in a session of its own, as the supervisor starts the server."""
    child = project.popen(sys.executable, "-c", "import time; time.sleep(600)", start_new_session=True)
    return child, psutil.Process(child.pid)


def test_own_process_with_its_identity_is_alive(project):
    child, proc = _session_leader(project)
    _write(project, pid=child.pid, create_time=proc.create_time(), argv=proc.cmdline(), host="127.0.0.1",
           port=project.port, started_at="x", url=project.url)
    info = pidfile.identify(_paths(project))[0]
    assert info is not None and info.pid == child.pid
    assert project.pidfile.exists()


def test_identity_survives_exec(project):
    """Recorded right after the spawn, the command line may still be the pre-exec one
    (`env python3 server.py`); the server is still ours after the exec."""
    child, proc = _session_leader(project)
    _write(project, pid=child.pid, create_time=proc.create_time(), argv=["/usr/bin/env", "python3", "x.py"],
           cmdline=["/usr/bin/env", "python3", "x.py"], host="127.0.0.1", port=project.port,
           started_at="x", url=project.url)
    assert pidfile.identify(_paths(project))[0] is not None


def test_a_live_process_that_does_not_lead_its_session_is_not_ours(project):
    me = psutil.Process()
    _write(project, pid=me.pid, create_time=me.create_time(), argv=me.cmdline(), host="127.0.0.1",
           port=project.port, started_at="x", url=project.url)
    info, notice = pidfile.identify(_paths(project))
    assert info is None and "not a server we started" in notice
    assert not project.pidfile.exists()


def test_stale_pidfiles_are_reported_once_and_removed(project):
    cases = {
        "not json": None,
        "gone": {"pid": 2**22 + 12345, "create_time": 1.0},
        "reused": {"pid": os.getpid(), "create_time": psutil.Process().create_time() - 50},
        "other command": {"pid": os.getpid(), "create_time": psutil.Process().create_time(), "argv": ["x"]},
    }
    for label, data in cases.items():
        project.pidfile.parent.mkdir(parents=True, exist_ok=True)
        project.pidfile.write_text("garbage" if data is None else json.dumps(data))
        with capture_logs() as events:
            info, notice = pidfile.identify(_paths(project))
        assert info is None and notice and "stale pidfile" in notice, label
        assert [e["event"] for e in events] == ["stale_pidfile_removed"], label
        assert not project.pidfile.exists(), label
        assert pidfile.identify(_paths(project)) == (None, None), label


def test_pidfile_is_written_atomically_and_not_world_writable(project):
    paths = _paths(project)
    info = pidfile.PidInfo(pid=1, create_time=2.0, argv=["a"], host="h", port=3, started_at="s", url="u")
    pidfile.write_pidfile(paths, info)
    assert json.loads(paths.pidfile.read_text())["create_time"] == 2.0
    assert paths.pidfile.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in paths.pidfile.parent.iterdir()] == ["sparkq.pid"]
    pidfile.remove_pidfile(paths, pid=99)  # names another process: left alone
    assert paths.pidfile.exists()
    pidfile.remove_pidfile(paths, pid=1)
    assert not paths.pidfile.exists()


def test_env_file_parsing(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(
        b"# comment\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\"\nD='single'\n"
        b"E=value # trailing comment\nF=\n=nokey\nG\n1H=x\nI=\"unclosed\nJ=\xff\xfe\nK=last\n"
        b"L=\"x y\" # a comment after the quotes\nM='a' junk\n"
    )
    with capture_logs() as events:
        parsed = read_env_file(env)
    assert parsed == {"A": "1", "B": "two words", "C": "quoted # not a comment", "D": "single",
                      "E": "value", "F": "", "K": "last", "L": "x y"}
    assert len(events) == 1 and events[0]["lines"] == [9, 10, 11, 12, 13, 16]
    assert "unclosed" not in repr(events) and "nokey" not in repr(events)
    assert read_env_file(tmp_path / "missing") == {}


def test_child_env_real_environment_wins_and_no_notify_socket(project, monkeypatch):
    (project.root / ".env").write_text("FROM_FILE=file\nBOTH=file\n")
    monkeypatch.setenv("BOTH", "real")
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    env = process.child_env(config.load(root=project.root))
    assert env["FROM_FILE"] == "file" and env["BOTH"] == "real"
    assert "NOTIFY_SOCKET" not in env
    assert env["SPARKQ_ROOT"] == str(project.root) and env["SPARKQ_CONFIG"] == str(project.root / "sparkq.yml")
    assert "SPARKQ_PORT" not in env  # host, port and database reach the server as flags


def test_bundled_server_argv(project):
    argv = process.server_argv(config.load(root=project.root))
    assert argv[:4] == [sys.executable, "-P", "-m", "sparkq"]
    assert argv[4:] == ["--host", "127.0.0.1", "--port", str(project.port), "--db", str(project.db)]


def test_port_in_use(project):
    assert not ports.port_in_use("127.0.0.1", project.port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", project.port))
        s.listen()
        assert ports.port_in_use("127.0.0.1", project.port)
        assert ports.port_in_use("0.0.0.0", project.port)
        assert not ports.wait_port_free("127.0.0.1", project.port, 0.2)
    assert ports.wait_port_free("127.0.0.1", project.port, 1)


def test_log_tail_starts_at_offset(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("old run\n" * 5)
    offset = log.stat().st_size
    with log.open("a") as fh:
        fh.writelines(f"line {i}\n" for i in range(30))
    tail = logs.log_tail(log, offset)
    assert tail == [f"line {i}" for i in range(10, 30)]
    assert logs.log_tail(log, log.stat().st_size) == []
    assert logs.log_tail(tmp_path / "missing") == []


def test_exit_status_mapping():
    assert exit_status(0) == 0 and exit_status(7) == 7
    assert exit_status(-15) == 143 and exit_status(-9) == 137


def test_probe_health_reports_refusal(project):
    ok, why = process.probe_health(project.url + "/health", timeout=0.5)
    assert not ok and isinstance(why, str) and why
