"""Shared test helpers: temp project roots, free ports, deadline waits, and process reaping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SPARKQ_SH = REPO / "sparkq.sh"
VENV_BIN = Path(sys.executable).parent
SPARKQ_BIN = VENV_BIN / "sparkq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Project:
    """A temp project root: sparkq.yml with a free port, its own data dir, env pointing at it."""

    root: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    reaper: "Reaper | None" = None

    @property
    def db(self) -> Path:
        return self.root / "sparkq" / "data" / "sparkq.db"

    @property
    def backup_dir(self) -> Path:
        return self.root / "sparkq" / "data" / "backups"

    @property
    def config(self) -> Path:
        return self.root / "sparkq.yml"

    @property
    def pidfile(self) -> Path:
        return self.root / "sparkq" / "data" / "sparkq.pid"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f"server:\n  host: 127.0.0.1\n  port: {self.port}\n  start_timeout: 30\n  stop_timeout: 10\n{extra}"
        )

    def cli(self, *args: str, input: str | None = None, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
        """Run the installed `sparkq` console script against this project."""
        return self._run([str(SPARKQ_BIN), *args], input, timeout, env)

    def sh(self, *args: str, input: str | None = None, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
        """Run `sparkq.sh` (the user's door) against this project."""
        return self._run([str(SPARKQ_SH), *args], input, timeout, env)

    def _run(self, argv, input, timeout, env) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            argv,
            cwd=self.root,
            env={**self.env, **(env or {})},
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if self.reaper is not None:
            self.reaper.adopt_pidfile(self.pidfile)
        return proc

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(args, cwd=self.root, env={**self.env, **kw.pop("env", {})}, **kw)
        if self.reaper is not None:
            self.reaper.add(proc.pid)
        return proc


class Reaper:
    """Remembers every PID a test started and kills it (and its children) at teardown."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def add(self, pid: int) -> None:
        self.pids.add(pid)

    def adopt_pidfile(self, pidfile: Path) -> None:
        import json

        try:
            self.pids.add(int(json.loads(pidfile.read_text())["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def kill_all(self) -> None:
        procs = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                procs.extend(p.children(recursive=True))
                procs.append(p)
            except psutil.Error:
                continue
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARKQ_", "NOTIFY_SOCKET", "PYTEST_"))}
    env["SPARKQ_ROOT"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"
    return env
