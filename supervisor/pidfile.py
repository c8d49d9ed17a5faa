"""The pidfile: which process is our server, told apart from whatever reuses its PID.

A PID alone is not enough, because PIDs are reused. The pidfile records the process's
create_time and command line; a process is ours only if it exists, was created at that time,
leads its own session and is not a zombie. A process that fails that test is never signalled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import leftovers, log
from .errors import SparkqError, StartFailed
from .fsutil import atomic_write_bytes
from .paths import Paths

# psutil's create_time comes from clock ticks since boot; two reads of it may differ by a tick.
_CREATE_TIME_SLACK = 0.01


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
    supervisor_pid: int | None = None  # the supervising process (`run`, or the one `start` left)
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


def recorded_pid(paths: Paths) -> int | None:
    """The PID the pidfile names, read only: no identity check and no clean-up (identify does
    both). Enough to guess whether a server runs where a wrong guess costs only speed."""
    try:
        raw = _read_raw(paths.pidfile)
    except SparkqError:
        return None
    return None if raw is None else _pid_of(raw)


def our_pid(paths: Paths) -> int | None:
    """The PID of our running server, checked as `identify` checks it (the process's start time
    and command line), but changing nothing: a PID reused by another program after a crash or a
    reboot is None, so nothing reads that program's files as the server's."""
    try:
        raw = _read_raw(paths.pidfile)
        info = _parse(raw) if raw is not None else None
    except (SparkqError, ValueError, KeyError, TypeError):
        return None
    return info.pid if info is not None and why_not_ours(info) is None else None


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
        raw = _adopt_old_pidfile(paths)
    if raw is None:
        return None, None
    try:
        info = _parse(raw)
    except (ValueError, KeyError, TypeError):
        return None, _drop_stale(paths, raw, None, "it holds no valid process identity (pid, create_time)")
    why = why_not_ours(info)
    if why is None:
        return info, None
    left = _left_behind(info)
    if left:
        # Keep the pidfile: its spawn_id is how `stop` finds these processes.
        pids = ", ".join(str(p.pid) for p in left)
        return None, (f"the server (PID {info.pid}) has exited but left PID {pids} running (it forked into "
                      "the background); ./sparkq.sh stop stops them")
    return None, _drop_stale(paths, raw, info.pid, why)


def _adopt_old_pidfile(paths: Paths) -> bytes | None:
    """Before runtime files followed the database, every pidfile was ROOT/sparkq/data/sparkq.pid.
    A server that version started for this database (its command line says `--db` and our path)
    is still ours after an upgrade: its pidfile moves to where this version looks, and `status`
    and `stop` find it. A pidfile there naming any other database is left alone: it may be the
    current pidfile of a project that uses the default database."""
    old = paths.root / "sparkq" / "data" / "sparkq.pid"
    if old == paths.pidfile:
        return None
    try:
        raw = _read_raw(old)
        info = _parse(raw) if raw is not None else None
    except (SparkqError, ValueError, KeyError, TypeError):
        return None  # not readable, or not one of ours: nothing to adopt
    if info is None or not _serves_db(info.argv, paths.db) or why_not_ours(info) is not None:
        return None
    try:
        write_pidfile(paths, info)
        if _read_raw(old) == raw:
            old.unlink(missing_ok=True)
    except (OSError, SparkqError) as exc:  # cannot move it (read-only data dir): use it where it is
        log.get().warning("old_pidfile_not_moved", old=str(old), error=str(exc))
        return raw
    log.get().info("old_pidfile_moved", old=str(old), new=str(paths.pidfile), pid=info.pid)
    return raw


def _serves_db(argv: list[str], db: Path) -> bool:
    """`argv` is the bundled server's for `db` (`... --db PATH`, as server_argv writes it)."""
    try:
        given = argv[argv.index("--db") + 1]
    except (ValueError, IndexError):
        return False
    return os.path.realpath(given) == os.path.realpath(db)


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
    if info is None or not info.spawn_id or why_not_ours(info) is None:
        return None, []
    return info.spawn_id, _left_behind(info)


def why_not_ours(info: PidInfo) -> str | None:
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
