"""issue 11.11, second shape: a server that answers first and forks into the background later.
`status` must not call it stopped without a word, `start` must not start a second one over it,
and `stop` stops what it left."""

from __future__ import annotations

import json
import sys
import textwrap

import psutil

from helpers import listening, wait_until

LATE_DAEMON = textwrap.dedent('''
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    answered = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            answered.append(1)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    while not answered:
        server.handle_request()
    if os.fork():
        os._exit(0)          # the process the supervisor knows exits
    os.setsid()              # the copy leaves its process group and keeps serving
    print(f"late daemon pid={os.getpid()}", flush=True)
    server.serve_forever()
''')


def _pids(script) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline", "status"])
            if str(script) in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]


def test_a_server_that_forks_away_after_answering_is_reported_and_stopped(project, tmp_path):
    script = tmp_path / "late_daemon.py"
    script.write_text(LATE_DAEMON)
    command = [sys.executable, "-I", str(script), str(project.port)]
    project.write_config(f"  command: {json.dumps(command)}\n")
    from sparkq import storage

    project.db.parent.mkdir(parents=True, exist_ok=True)
    storage.setup_database(project.db)

    started = project.cli("start", "--skip-backup")
    assert started.returncode == 0, started.stderr
    first = json.loads(project.pidfile.read_text())["pid"]
    wait_until(lambda: any(pid != first for pid in _pids(script)) and not psutil.pid_exists(first)
               or _zombie(first), what="the server to fork away")
    for pid in _pids(script):
        project.reaper.add(pid)
    assert listening(project.port)

    status = project.cli("status")
    assert status.returncode == 3
    assert "left PID" in status.stdout and "./sparkq.sh stop" in status.stdout, status.stdout

    again = project.cli("start", "--skip-backup")
    assert again.returncode != 0 and "left PID" in again.stderr, (again.stdout, again.stderr)

    stopped = project.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped them" in stopped.stdout, stopped.stdout
    wait_until(lambda: not _pids(script), what="the forked server to be gone")
    assert not listening(project.port) and not project.pidfile.exists()
    assert project.cli("status").stdout.startswith("stopped")


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
