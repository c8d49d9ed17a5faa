"""The server as a process: pidfile identity, spawning, readiness, and stopping a process group.

Identity is a pidfile plus psutil: a PID alone is not enough, because PIDs are reused. The
pidfile records the process's create_time and command line; a process is ours only if it exists,
was created at that time, runs that command and is not a zombie. A process that fails that test
is never signalled.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import leftovers, log
from .errors import SparkqError, StartFailed
from .fsutil import atomic_write_bytes, rotate_log
from .paths import Paths

# psutil's create_time comes from clock ticks since boot; two reads of it may differ by a tick.
_CREATE_TIME_SLACK = 0.01
LOG_TAIL_LINES = 20


@dataclass
class PidInfo:
    pid: int
    create_time: float
    argv: list[str]
    host: str
    port: int
    started_at: str
    url: str
    mode: str = "start"  # "start" (detached) or "run" (child of a foreground supervisor)
    supervisor_pid: int | None = None  # the foreground `run` process, when mode == "run"
    cmdline: list[str] | None = None  # as the kernel reports it (a #! script shows its interpreter)
    spawn_id: str | None = None  # the token in the server's environment (see leftovers.py)

    def to_dict(self) -> dict:
        return asdict(self)


# --- pidfile ---------------------------------------------------------------------------------


def write_pidfile(paths: Paths, info: PidInfo) -> None:
    paths.pidfile.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(info.to_dict(), indent=2).encode() + b"\n"
    atomic_write_bytes(paths.pidfile, data, mode=0o644)


def remove_pidfile(paths: Paths, pid: int | None = None) -> None:
    """Remove the pidfile; with `pid`, only while it still names that process (a newer start may
    have replaced it meanwhile)."""
    if pid is not None:
        current = _read_raw(paths.pidfile)
        if current is not None and _pid_of(current) not in (pid, None):
            return
    try:
        paths.pidfile.unlink()
    except FileNotFoundError:
        pass


def _read_raw(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SparkqError(f"cannot read {path} ({exc.strerror}); run as the user that owns SparkQ") from None


def _pid_of(raw: bytes) -> int | None:
    try:
        return int(json.loads(raw)["pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _parse(raw: bytes) -> PidInfo:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    pid = data["pid"]
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError("pid is not a positive whole number")
    supervisor_pid = data.get("supervisor_pid")
    return PidInfo(
        pid=pid,
        create_time=float(data["create_time"]),
        argv=[str(a) for a in data.get("argv") or []],
        host=str(data.get("host", "")),
        port=int(data.get("port", 0)),
        started_at=str(data.get("started_at", "")),
        url=str(data.get("url", "")),
        mode=str(data.get("mode", "start")),
        supervisor_pid=supervisor_pid if isinstance(supervisor_pid, int) and supervisor_pid > 0 else None,
        cmdline=[str(a) for a in data["cmdline"]] if isinstance(data.get("cmdline"), list) else None,
        spawn_id=data["spawn_id"] if isinstance(data.get("spawn_id"), str) else None,
    )


def identify(paths: Paths) -> tuple[PidInfo | None, str | None]:
    """The running server per the pidfile, or None. A stale pidfile is removed, and the second
    value says why (once: the next call finds no pidfile)."""
    raw = _read_raw(paths.pidfile)
    if raw is None:
        return None, None
    try:
        info = _parse(raw)
    except (ValueError, KeyError, TypeError):
        return None, _drop_stale(paths, raw, None, "it holds no valid process identity (pid, create_time)")
    why = _not_ours(info)
    if why is None:
        return info, None
    left = _left_behind(info)
    if left:
        # Keep the pidfile: its spawn_id is how `stop` finds these processes.
        pids = ", ".join(str(p.pid) for p in left)
        return None, (f"the server (PID {info.pid}) has exited but left PID {pids} running (it forked into "
                      "the background); ./sparkq.sh stop stops them")
    return None, _drop_stale(paths, raw, info.pid, why)


def _left_behind(info: PidInfo) -> list:
    return leftovers.find(info.spawn_id, since=info.create_time) if info.spawn_id else []


def left_behind(paths: Paths) -> tuple[str | None, list]:
    """(spawn_id, live processes carrying it) when the pidfile's server has exited but processes
    it started still run: a server that daemonized after it answered."""
    try:
        raw = _read_raw(paths.pidfile)
        info = _parse(raw) if raw is not None else None
    except (ValueError, KeyError, TypeError):
        info = None
    if info is None or not info.spawn_id or _not_ours(info) is None:
        return None, []
    return info.spawn_id, _left_behind(info)


def server_alive(paths: Paths) -> PidInfo | None:
    return identify(paths)[0]


def _not_ours(info: PidInfo) -> str | None:
    """None when `info` names a live process with the recorded identity, else the reason."""
    import psutil

    try:
        proc = psutil.Process(info.pid)
        created = proc.create_time()
        if abs(created - info.create_time) > _CREATE_TIME_SLACK:
            return "that PID now belongs to another process"
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "the process has exited (zombie)"
        # We start the server in a session of its own, so it leads that session for life (exec
        # keeps it). The command line would not do: right after the spawn it may still be the
        # pre-exec one (`env python3 ...`). A pidfile naming some other live process, even with
        # its real create_time, fails here.
        try:
            leader = os.getsid(info.pid) == info.pid
        except OSError:
            leader = False
        if not leader:
            return "that PID is not a server we started (it does not lead its own session)"
    except psutil.NoSuchProcess:
        return "the process is gone"
    except psutil.AccessDenied:
        return "the process cannot be inspected (owned by another user?)"
    return None


def _drop_stale(paths: Paths, raw: bytes, pid: int | None, why: str) -> str:
    # Only remove what we read: a start that raced us may have written a new pidfile.
    if _read_raw(paths.pidfile) == raw:
        try:
            paths.pidfile.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            why += f"; could not remove it: {exc.strerror}"
    label = f"PID {pid}" if pid is not None else "unknown PID"
    log.get().warning("stale_pidfile_removed", pidfile=str(paths.pidfile), pid=pid, reason=why)
    return f"removed stale pidfile {paths.pidfile} ({label}: {why})"


def process_identity(pid: int) -> tuple[float, list[str] | None]:
    """(create_time, cmdline) of a live process, to record in the pidfile."""
    import psutil

    try:
        proc = psutil.Process(pid)
        try:
            cmdline = proc.cmdline()
        except (psutil.AccessDenied, psutil.ZombieProcess):
            cmdline = None  # informational only; a zombie is reported by the health wait
        return proc.create_time(), cmdline
    except psutil.NoSuchProcess:
        raise StartFailed(f"the server (PID {pid}) exited right after answering; see the server log") from None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- environment -----------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file: KEY=VALUE lines, `#` comments, optional `export `, optional quotes.

    Lines that are not UTF-8 or not KEY=VALUE are skipped with one warning naming their line
    numbers only; values are never logged.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.get().warning("env_file_unreadable", path=str(path), error=exc.strerror)
        return {}
    result: dict[str, str] = {}
    bad: list[int] = []
    for number, raw_line in enumerate(data.splitlines(), start=1):
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError:
            bad.append(number)
            continue
        if not line or line.startswith("#"):
            continue
        parsed = _env_line(line)
        if parsed is None:
            bad.append(number)
        else:
            result[parsed[0]] = parsed[1]
    if bad:
        log.get().warning("env_file_lines_skipped", path=str(path), lines=bad,
                          hint="each line must be KEY=VALUE in UTF-8")
    return result


def _env_line(line: str) -> tuple[str, str] | None:
    if line.startswith("export "):
        line = line[len("export "):].lstrip()
    key, sep, value = line.partition("=")
    key = key.strip()
    if not sep or not key or not (key[0].isalpha() or key[0] == "_") or not all(
        c.isalnum() or c == "_" for c in key
    ) or not key.isascii():
        return None
    value = value.strip()
    if value and value[0] in "\"'":
        close = value.find(value[0], 1)
        rest = value[close + 1:].strip() if close > 0 else ""
        if close < 0 or (rest and not rest.startswith("#")):
            return None  # an opening quote never closed, or text after the closing one
        value = value[1:close]
    else:
        value = value.split(" #", 1)[0].rstrip()
    return key, value


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


def server_argv(settings) -> list[str]:
    command = settings.get("server.command")
    if command:
        return list(command)
    return [sys.executable, "-P", "-m", "sparkq", "--host", settings.host, "--port", str(settings.port),
            "--db", str(settings.paths.db)]


def child_env(settings, token: str = "") -> dict[str, str]:
    paths = settings.paths
    env = {**read_env_file(paths.env_file), **os.environ}  # the real environment wins over .env
    if token:
        env[leftovers.SPAWN_ENV] = token
    env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
    env.update(
        SPARKQ_ROOT=str(paths.root),
        SPARKQ_CONFIG=str(paths.config_file),
        SPARKQ_HOST=settings.host,
        SPARKQ_PORT=str(settings.port),
        SPARKQ_DB=str(paths.db),
        PYTHONUNBUFFERED="1",
    )
    return env


def spawn(settings) -> Spawned:
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
                from .envsize import explain_e2big

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


def wait_healthy(spawned: Spawned, url: str, timeout: float, *, stop_requested=lambda: False) -> dict | int:
    """Poll `url` until it answers 200. Returns the health body, or the child's exit status when
    it exits after `stop_requested()` became true. Raises StartFailed otherwise (the caller
    cleans up the process group)."""
    proc = spawned.proc
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        rc = proc.poll()
        if rc is not None:
            if stop_requested():
                return rc
            left = leftovers.find(spawned.token, port=spawned.port, since=spawned.started)
            if left:
                raise StartFailed(_failure_text(spawned, _daemonized_text(rc, left)))
            raise StartFailed(_failure_text(spawned, f"the server exited with {_describe_status(rc)} "
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
    return (f"the server command exited with {_describe_status(rc)} but left PID {pids} running: it "
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


def _describe_status(rc: int) -> str:
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


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines written to `path` after byte `offset`."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(offset, size - 64 * 1024)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > offset and text:
        text = text[1:]  # the first line was cut in the middle
    return text[-lines:]


def to_exit_status(rc: int) -> int:
    """A Popen return code as a shell would report it: killed by signal N -> 128 + N."""
    return 128 - rc if rc < 0 else rc


# --- ports -----------------------------------------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (a bind test, as the server would do it)."""
    bind_host = host or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the server will report the bad host itself
    for family, type_, proto, _name, addr in infos:
        with socket.socket(family, type_, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while port_in_use(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# --- process groups --------------------------------------------------------------------------


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


def terminate_group(pgid: int, stop_timeout: float, reap=None, *, resume: bool = False) -> bool:
    """SIGTERM the group, wait `stop_timeout`, then SIGKILL it and wait until it is gone.
    With `resume`, SIGCONT follows SIGTERM: a suspended process acts on a signal only once it
    runs again. Returns True when SIGKILL was needed."""
    log.get().info("server_stopping", pgid=pgid, signal="SIGTERM")
    if not signal_group(pgid, signal.SIGTERM):
        return False
    if resume:
        signal_group(pgid, signal.SIGCONT)
    if wait_group_gone(pgid, stop_timeout, reap):
        return False
    kill_group(pgid, reap)
    return True


def kill_group(pgid: int, reap=None) -> None:
    log.get().warning("server_killed", pgid=pgid, signal="SIGKILL")
    signal_group(pgid, signal.SIGKILL)
    if not wait_group_gone(pgid, 10.0, reap):
        left = ", ".join(str(p.pid) for p in group_members(pgid))
        raise SparkqError(f"processes {left} of the server survived SIGKILL; check them with ps and "
                          "kill them by hand")


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
