"""Fixtures for lifecycle tests: a tiny fake server (stdlib only, starts fast) and projects using it."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

FAKE_SERVER = textwrap.dedent('''
    import json, os, signal, socket, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    port, mode = int(sys.argv[1]), sys.argv[2]
    env = {k: v for k, v in os.environ.items() if k.startswith("FAKE_")}
    print(f"fake server pid={os.getpid()} mode={mode} env={json.dumps(env, sort_keys=True)}", flush=True)
    if mode == "boot-fail":
        print("boom: cannot open the widget store", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode.startswith("daemonize"):  # double fork + setsid: the process started exits 0 at once
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
        if mode == "daemonize-clear-env":
            os.environ.clear()
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        helper = os.fork()
        if helper == 0:  # a second process in the group, also deaf to SIGTERM
            time.sleep(600)
            os._exit(0)
        print(f"helper pid={helper}", flush=True)
    elif mode.startswith("exit-on-term="):
        code = int(mode.split("=")[1])
        signal.signal(signal.SIGTERM, lambda *a: os._exit(code))
    else:
        def stop(signum, frame):
            print(f"fake server got signal {signum}", flush=True)
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    if mode == "mute":  # listens but never answers
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        time.sleep(600)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            # A daemon's answer names no PID, as a third-party server's would not: the
            # supervisor cannot tell it from its own by the answer.
            daemon = mode.startswith(("daemonize", "fork-after-answer"))
            body = json.dumps({"status": "ok", "mode": mode, **({} if daemon else {"pid": os.getpid()})}).encode()
            type(self).answered = True
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    if mode == "orphan":  # a grandchild that exits at once, its parent gone: re-parented to PID 1
        if os.fork() == 0:
            if os.fork() == 0:
                os._exit(0)
            os._exit(0)
    if mode.startswith("crash-after="):  # serves, then dies (exit 9) this many seconds after start
        import threading
        threading.Timer(float(mode.split("=")[1]), lambda: os._exit(9)).start()
    server = HTTPServer(("127.0.0.1", port), Handler)
    if mode == "fork-after-answer":  # healthy first, then into the background
        while not getattr(Handler, "answered", False):
            server.handle_request()
        if os.fork():
            os._exit(0)
        os.setsid()
    server.serve_forever()
''')


class Fake:
    """A project whose server.command is the fake server in a given mode."""

    def __init__(self, project, script: Path):
        self.project = project
        self.script = script

    def configure(self, mode: str = "ok", *, start_timeout: float = 15, stop_timeout: float = 5,
                  host: str = "127.0.0.1", make_db: bool = True) -> None:
        p = self.project
        command = [sys.executable, "-I", str(self.script), str(p.port), mode]
        p.config.write_text(
            "server:\n"
            f"  host: {json.dumps(host)}\n"
            f"  port: {p.port}\n"
            f"  start_timeout: {start_timeout}\n"
            f"  stop_timeout: {stop_timeout}\n"
            f"  command: {json.dumps(command)}\n"
        )
        if make_db and not p.db.exists():
            from sparkq import storage

            p.db.parent.mkdir(parents=True, exist_ok=True)
            storage.setup_database(p.db)

    @property
    def server_log(self) -> Path:
        return self.project.root / "sparkq" / "logs" / "server.log"

    def log_text(self) -> str:
        try:
            return self.server_log.read_text()
        except FileNotFoundError:
            return ""

    def logged_pids(self, what: str = "fake server") -> list[int]:
        """PIDs the fake servers (or their helpers) printed to the server log."""
        key = "helper" if what == "helper" else "fake server"
        return [int(m) for m in re.findall(rf"^{key} pid=(\d+)", self.log_text(), re.M)]

    def spawn_count(self) -> int:
        return self.log_text().count("sparkq supervisor starting:")

    @staticmethod
    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def running(self) -> list[psutil.Process]:
        """Live fake-server processes of this project (by their command line)."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmd = proc.info["cmdline"] or []
            if str(self.script) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found


@pytest.fixture
def fake(project, tmp_path) -> Fake:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    f = Fake(project, script)
    f.configure()
    yield f
    for proc in f.running():  # belt and braces: the reaper knows them by pidfile already
        project.reaper.add(proc.pid)
