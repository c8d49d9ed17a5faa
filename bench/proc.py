"""Process helpers: timed runs with the rusage of exactly one child, servers and health polls."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.paths import Paths

PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent
SPARKQ = str(VENV_BIN / "sparkq")
LAUNCH = Path(__file__).with_name("launch.py")


@dataclass
class ProjectRoot:
    """A throwaway project root with sparkq.yml on a free port; the benchmarks and the tests both
    build on it. Its paths are the supervisor's own (`Paths.default`), never built by hand."""

    root: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def paths(self) -> Paths:
        return Paths.default(self.root)

    @property
    def data_dir(self) -> Path:
        return self.paths.data_dir

    @property
    def db(self) -> Path:
        return self.paths.db

    @property
    def backup_dir(self) -> Path:
        return self.paths.backup_dir

    @property
    def config(self) -> Path:
        return self.paths.config_file

    @property
    def pidfile(self) -> Path:
        return self.paths.pidfile

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class BenchError(Exception):
    """A measured command failed; the case is reported as ERROR and the run goes on."""


@dataclass
class Run:
    argv: list[str]
    seconds: float
    returncode: int
    maxrss_mb: float  # peak RSS of this command (and the children it waited for), from os.wait4
    stdout: str
    stderr: str
    timed_out: bool = False

    def check(self) -> "Run":
        if self.returncode != 0:
            tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-3:]
            why = "timed out" if self.timed_out else f"exited {self.returncode}"
            raise BenchError(f"`{short(self.argv)}` {why}: {' | '.join(tail) or '(no output)'}")
        return self


def short(argv: list[str]) -> str:
    """The command as a reader knows it: `sparkq backup`, not the venv path."""
    shown = ["sparkq" if a == SPARKQ else ("python" if a == PYTHON else a) for a in argv]
    return " ".join(shown)


def run(argv, *, env=None, cwd=None, timeout: float = 900.0, check: bool = True) -> Run:
    """Run `argv` to completion through bench/launch.py; returns its wall time and peak RSS.

    The launcher times the command from before the fork until it is reaped and takes
    ru_maxrss from os.wait4 for that one child (see launch.py for why it is a separate process).
    """
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".json") as result:
        launched = subprocess.run([PYTHON, str(LAUNCH), result.name, str(timeout), *argv], cwd=cwd, env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout + 60)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        try:
            measured = json.loads(open(result.name).read())
        except ValueError:
            raise BenchError(f"`{short(argv)}` could not be launched (exit {launched.returncode}): "
                             f"{stderr.strip()[-300:]}") from None
    result = Run(
        argv=argv,
        seconds=measured["seconds"],
        returncode=measured["returncode"],
        maxrss_mb=measured["maxrss_kib"] / 1024.0,  # KiB on Linux
        stdout=stdout,
        stderr=stderr,
        timed_out=measured["timed_out"],
    )
    return result.check() if check else result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200 and json.loads(resp.read() or b"{}").get("status") == "ok"
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return False


def wait_healthy(url: str, *, timeout: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited {proc.returncode} before answering {url}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not answer {url} within {timeout:.0f} s")
        time.sleep(0.005)


def serve_alone(db: Path, port: int, *, env, cwd: Path, log: Path, timeout: float = 60.0):
    """Start the bundled server by itself; returns (seconds from exec to healthy, Popen)."""
    argv = [PYTHON, "-P", "-m", "sparkq", "--host", "127.0.0.1", "--port", str(port), "--db", str(db)]
    with open(log, "ab") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", timeout=timeout, proc=proc, what="python -m sparkq")
    except BaseException:
        stop_proc(proc)
        raise
    return time.perf_counter() - start, proc


def stop_proc(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; only this PID, which we started and still own."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def kill_pidfile_server(pidfile: Path) -> None:
    """Last resort at clean-up: SIGKILL the server a `sparkq start` left, if that PID is still it."""
    try:
        info = json.loads(pidfile.read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        import psutil

        p = psutil.Process(pid)
        created = info.get("create_time")
        if created is not None and abs(p.create_time() - float(created)) > 1.0:
            return  # the PID was reused by something that is not our server
        p.kill()
        p.wait(10)
    except Exception:  # noqa: BLE001 - clean-up must not fail the run
        pass
