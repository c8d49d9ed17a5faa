"""Every operation on a process: alive, spawn, readiness, signal, and stop with escalation.

Which process is our server is the pidfile's job (pidfile.py); this module acts on PIDs and
process groups. The server is always started as the leader of its own session, so its process
group holds it and whatever it starts, and one signal reaches them all.

Stopping with escalation (a signal, a wait, then SIGKILL) lives here only: `stop` for the
server's group, `stop_procs` for what left it (leftovers.py finds those), `stop_child` for a
child we started alone (a backup, a detached supervisor), `signal_then_kill` for a process asked
to leave with another signal (the supervisor, by `stop`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import leftovers, log
from .errors import SparkqError, StartFailed
from .fsutil import rotate_log
from .config import Settings
from .envfile import explain_e2big, read_env_file
from .logs import log_tail
from .pidfile import now_iso


# --- spawning and readiness ------------------------------------------------------------------


@dataclass
class Spawned:
    proc: subprocess.Popen
    argv: list[str]
    log_offset: int
    log_path: Path
    token: str  # in the server's environment: finds what it leaves behind (leftovers.py)
    started: float  # time.time() just before the spawn
    port: int


def server_argv(settings: Settings) -> list[str]:
    command = settings.command
    if command:
        return command
    return [sys.executable, "-P", "-m", "sparkq", "--host", settings.host, "--port", str(settings.port),
            "--db", str(settings.paths.db)]


def child_env(settings: Settings, token: str = "") -> dict[str, str]:
    paths = settings.paths
    env = {**read_env_file(paths.env_file), **os.environ}  # the real environment wins over .env
    if token:
        env[leftovers.SPAWN_ENV] = token
    env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
    env.update(
        SPARKQ_ROOT=str(paths.root),
        SPARKQ_CONFIG=str(paths.config_file),
        PYTHONUNBUFFERED="1",
    )
    return env


def spawn(settings: Settings) -> Spawned:
    """Start the server in its own session (so it is its own process group) with its output
    appended to the server log."""
    paths = settings.paths
    argv = server_argv(settings)
    token = leftovers.new_token()
    env = child_env(settings, token)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    rotate_log(paths.server_log)
    with open(paths.server_log, "ab") as out:
        out.write(f"--- {now_iso()} sparkq supervisor starting: {' '.join(argv)}\n".encode())
        out.flush()
        offset = out.tell()
        started = time.time()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=paths.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise StartFailed(explain_e2big(argv, env, paths.env_file)) from None
            raise StartFailed(
                f"cannot run the server command {argv[0]!r}: {exc.strerror}; check server.command in "
                f"{paths.config_file.name}"
            ) from None
    return Spawned(proc=proc, argv=argv, log_offset=offset, log_path=paths.server_log, token=token,
                   started=started, port=settings.port)


def probe_health(url: str, timeout: float = 1.0) -> tuple[bool, dict | str]:
    """GET `url` (no proxies). (True, JSON body or {}) on HTTP 200, else (False, why)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            body = resp.read(65536)
            if resp.status != 200:
                return False, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        return False, getattr(reason, "strerror", None) or str(reason)
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        return False, str(exc) or type(exc).__name__
    try:
        data = json.loads(body)
    except ValueError:
        return True, {}
    return True, data if isinstance(data, dict) else {}


def wait_healthy(spawned: Spawned, url: str, timeout: float, *, stop_requested=lambda: False) -> dict | None:
    """Poll `url` until it answers 200. Returns the health body, or None as soon as
    `stop_requested()` is true (the caller stops the server). Raises StartFailed otherwise (the
    caller cleans up the process group)."""
    proc = spawned.proc
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if stop_requested():
            return None
        rc = proc.poll()
        if rc is not None:
            left = leftovers.find_after_exit(spawned.token, port=spawned.port, since=spawned.started)
            if left:
                raise StartFailed(_failure_text(spawned, _daemonized_text(rc, left)))
            raise StartFailed(_failure_text(spawned, f"the server exited with {describe_status(rc)} "
                                                     "while starting"))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StartFailed(_failure_text(
                spawned, f"the server did not answer GET {url} within {timeout:g}s (last: {last})"))
        ok, body = probe_health(url, timeout=min(1.0, max(remaining, 0.05)))
        if ok and _answer_is_ours(body, proc.pid):
            return body
        last = "a server of another process answered" if ok else str(body)
        time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))


def _daemonized_text(rc: int, left: list) -> str:
    pids = ", ".join(str(p.pid) for p in left)
    return (f"the server command exited with {describe_status(rc)} but left PID {pids} running: it "
            "daemonizes (forks into the background), which SparkQ cannot supervise, so what it left is "
            "stopped; make server.command run in the foreground (e.g. without its --daemon option)")


def _answer_is_ours(body, pid: int) -> bool:
    """The bundled server reports its PID: refuse an answer from some other server on the port."""
    theirs = body.get("pid") if isinstance(body, dict) else None
    if not isinstance(theirs, int) or theirs == pid:
        return True
    import psutil

    try:
        return any(child.pid == theirs for child in psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return False


def describe_status(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"status {rc}"


def _failure_text(spawned: Spawned, what: str) -> str:
    tail = log_tail(spawned.log_path, spawned.log_offset)
    text = f"{what}; fix the cause and start again (full log: {spawned.log_path})"
    if tail:
        text += f"\n--- last {len(tail)} lines of {spawned.log_path.name} ---\n" + "\n".join(tail)
    else:
        text += f"\n(the server wrote nothing to {spawned.log_path.name})"
    return text


# --- processes and groups --------------------------------------------------------------------------


def alive(pid: int | None) -> bool:
    """Whether a process with this PID exists and has not exited (a zombie has). A PID we may
    not inspect counts as alive: something runs there."""
    if not pid or pid <= 0:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:
        return True
    except (psutil.Error, OverflowError, ValueError):
        return False


def group_members(pgid: int) -> list:
    """Live (non-zombie) processes whose process group is `pgid`."""
    import psutil

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group is already empty."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        raise SparkqError(
            f"not allowed to signal the server (process group {pgid}); run this as the user that "
            "started it (or use systemctl when systemd runs it)"
        ) from None


def wait_group_gone(pgid: int, timeout: float, reap=None) -> bool:
    """Wait until no live process is left in the group. `reap` (e.g. Popen.poll) lets a parent
    collect its own child meanwhile, so it does not linger as a zombie."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if reap is not None:
            reap()
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def stop(pid: int, timeout: float, *, reap=None, resume: bool = False, first: int = signal.SIGTERM) -> bool:
    """Stop a server and what it started: `first` (SIGTERM) to its process group, then SIGKILL
    after `timeout`, waiting until every member is gone. `reap` (e.g. Popen.poll) lets a parent
    collect its own child meanwhile. With `resume`, SIGCONT follows: a suspended process acts on
    a signal only once it runs again. Returns True when SIGKILL was needed.

    A PID that does not lead its own group (we always start the server as one) is signalled
    alone rather than a group that may hold unrelated processes, our own included."""
    pgid = pgid_of(pid)
    if pgid != pid or pgid == os.getpgrp():
        return _stop_one(pid, timeout, resume=resume, first=first)
    log.get().info("server_stopping", pgid=pgid, signal=signal.Signals(first).name)
    if not signal_group(pgid, first):
        return False
    if resume:
        signal_group(pgid, signal.SIGCONT)
    if wait_group_gone(pgid, timeout, reap):
        return False
    kill_group(pgid, reap)
    return True


def _stop_one(pid: int, timeout: float, *, resume: bool, first: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.send_signal(first)
        if resume:
            proc.resume()
        proc.wait(timeout)
        return False
    except psutil.NoSuchProcess:
        return False
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return True


def kill_group(pgid: int, reap=None) -> None:
    log.get().warning("server_killed", pgid=pgid, signal="SIGKILL")
    signal_group(pgid, signal.SIGKILL)
    if not wait_group_gone(pgid, 10.0, reap):
        left = ", ".join(str(p.pid) for p in group_members(pgid))
        raise SparkqError(f"processes {left} of the server survived SIGKILL; check them with ps and "
                          "kill them by hand")


def stop_procs(procs: list, timeout: float) -> None:
    """Stop processes outside any group we signal (psutil.Process objects, e.g. what a server left
    behind, leftovers.py): SIGTERM each, SIGKILL what is left after `timeout`."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
            proc.resume()  # a suspended process acts on SIGTERM only once it runs again
        except psutil.Error:
            pass
    alive = _wait_gone(procs, timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _wait_gone(alive, 5.0)


def _wait_gone(procs: list, timeout: float) -> list:
    """Wait until each process is gone or a zombie (an orphan's reaper may be slow, or absent in
    a container); return those still running."""
    import psutil

    def running(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if running(p)]
    return alive


def stop_child(child: subprocess.Popen, timeout: float) -> None:
    """Stop a child we started, that process alone: SIGTERM, SIGKILL after `timeout`; reaped."""
    child.terminate()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def signal_then_kill(pid: int, sig: int, timeout: float) -> bool:
    """Send `sig` to one process and wait until it is gone (a zombie is: its parent reaps it);
    SIGKILL it if it is still there after `timeout`. SIGCONT follows `sig`: a suspended process
    (SIGSTOP, Ctrl-Z) acts on it only once it runs again. True when SIGKILL was needed."""
    os.kill(pid, sig)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        return True
    return False


def is_suspended(pid: int) -> bool:
    """True when the process, or another of its process group, is stopped (SIGSTOP, Ctrl-Z)."""
    import psutil

    stopped = (psutil.STATUS_STOPPED, getattr(psutil, "STATUS_TRACING_STOP", "tracing-stop"))
    try:
        procs = [psutil.Process(pid)] + (group_members(pid) if pgid_of(pid) == pid else [])
        return any(p.status() in stopped for p in procs)
    except psutil.Error:
        return False


def pgid_of(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return pid
