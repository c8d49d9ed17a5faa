"""issue 11.11, second shape: a server that answers first and forks into the background later.
Since issue 14 its supervisor notices the exit and stops what it left at once (the case of a
server that exits leaving processes with no supervisor around is in test_daemonizing_server)."""

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
    project.reaper.adopt_pidfile(project.pidfile)
    # Its supervisor sees the server it started exit, finds the copy by the spawn's token and
    # stops it: nothing serves unsupervised, and status says stopped.
    wait_until(lambda: _events(project, "server_leftovers_stopped"), timeout=30, what="the copy stopped")
    wait_until(lambda: not _pids(script), what="the forked server to be gone")
    assert not listening(project.port) and not project.pidfile.exists()
    status = wait_until(lambda: (st := project.cli("status")).returncode == 3 and st, what="the supervisor gone")
    assert status.stdout.startswith("stopped"), status.stdout
    assert "status 0" in status.stdout  # its last exit


def _events(project, name: str) -> list:
    log = project.root / "sparkq" / "logs" / "supervisor.log"
    return [line for line in log.read_text().splitlines() if f'"event": "{name}"' in line]


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
