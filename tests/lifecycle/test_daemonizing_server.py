"""issue 11.11: a server command that daemonizes (double fork + setsid, the first process exits 0)
is detected, said so in one line, and what it left is stopped: never an unknown server left behind."""

from __future__ import annotations

import json
import sys
import textwrap

import psutil

from helpers import listening, wait_until

DAEMON = textwrap.dedent('''
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    port, clear_env = int(sys.argv[1]), sys.argv[2] == "clear-env"
    if os.fork():
        os._exit(0)          # the process the supervisor started exits at once, status 0
    os.setsid()              # a new session: out of the supervisor's process group
    if os.fork():
        os._exit(0)
    if clear_env:
        os.environ.clear()
    print(f"daemon pid={os.getpid()}", flush=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
''')


def _daemon_pids(script) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if str(script) in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def _configure(project, tmp_path, mode: str):
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    command = [sys.executable, "-I", str(script), str(project.port), mode]
    project.write_config(f"  command: {json.dumps(command)}\n")
    from sparkq import storage

    project.db.parent.mkdir(parents=True, exist_ok=True)
    storage.setup_database(project.db)
    return script


def _check_refused_and_cleaned(project, script, result):
    for pid in _daemon_pids(script):  # belt and braces for teardown
        project.reaper.add(pid)
    assert result.returncode != 0, result.stdout
    said = [line for line in result.stderr.splitlines() if "daemonizes" in line]
    assert len(said) == 1 and said[0].startswith("sparkq: the server command exited with status 0 but left PID"), \
        result.stderr
    assert "exited with status 0 while starting" not in result.stderr
    wait_until(lambda: not _daemon_pids(script), timeout=20, what="the daemonized server to be stopped")
    assert not listening(project.port)
    assert not project.pidfile.exists()
    status = project.cli("status")
    assert status.returncode == 3


def test_start_detects_a_daemonizing_server_and_stops_it(project, tmp_path):
    script = _configure(project, tmp_path, "keep-env")
    result = project.cli("start", "--skip-backup")
    _check_refused_and_cleaned(project, script, result)


def test_a_daemon_that_clears_its_environment_is_found_by_its_port(project, tmp_path):
    script = _configure(project, tmp_path, "clear-env")
    result = project.cli("start", "--skip-backup")
    _check_refused_and_cleaned(project, script, result)


def test_run_detects_a_daemonizing_server_too(project, tmp_path):
    script = _configure(project, tmp_path, "keep-env")
    result = project.cli("run", "--skip-backup", timeout=60)
    _check_refused_and_cleaned(project, script, result)
