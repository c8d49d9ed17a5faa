"""What the resident supervisor is doing, on disk: a small JSON file (Paths.supervisor_state)
that the supervisor writes and `status`, `stop`, `start` and restore read. The supervisor's own
identity there is its PID plus create time, like the server's in the pidfile.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass

from . import pidfile, process
from .fsutil import temp_name
from .paths import Paths

RELEASE = signal.SIGUSR1  # from `stop`: exit and leave the server to me (see lifecycle.stop)


@dataclass
class State:
    state: str  # starting, running, backoff, fatal, stopped
    supervisor_pid: int
    supervisor_create_time: float
    mode: str  # "start" (detached) or "run" (foreground)
    restarts: int = 0
    last_exit: dict | None = None  # {"code": n} or {"signal": "SIGKILL"}, with "at"
    next_retry_at: float | None = None  # time.time() of the next start, in backoff
    reason: str | None = None  # fatal: why it gave up
    report: dict | None = None  # the first start's result (or error), for the waiting `start`

    def to_dict(self) -> dict:
        return asdict(self)


def write_state(paths: Paths, state: State) -> None:
    """Replace the file whole (temp + rename) but without fsync: it is no user data, a crash
    loses nothing that matters, and `stop` waits on the supervisor while it writes this."""
    target = paths.supervisor_state
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_name(target)
    temp.write_bytes(json.dumps(state.to_dict(), indent=2).encode() + b"\n")
    os.chmod(temp, 0o644)
    os.replace(temp, target)


def _reply_file(paths: Paths, pid: int):
    return paths.supervisor_state.with_name(f".{paths.supervisor_state.name}.reply-{pid}")


def write_reply(paths: Paths, pid: int, report: dict) -> None:
    """The answer of a detached supervisor that never took charge (a server already runs, or
    its start was refused), for the `start` waiting on it. It must not go into the state file:
    that belongs to the supervisor in charge, whose state it would overwrite."""
    target = _reply_file(paths, pid)
    temp = temp_name(target)
    temp.write_bytes(json.dumps(report).encode())
    os.replace(temp, target)


def take_reply(paths: Paths, pid: int) -> dict | None:
    """The reply of supervisor `pid`, read once (the file is removed), or None."""
    target = _reply_file(paths, pid)
    try:
        report = json.loads(target.read_bytes())
    except (OSError, ValueError):
        return None
    target.unlink(missing_ok=True)
    return report if isinstance(report, dict) else None


def read_state(paths: Paths) -> State | None:
    try:
        data = json.loads(paths.supervisor_state.read_bytes())
        return State(**data)
    except (OSError, ValueError, TypeError):
        return None


def live_supervisor(paths: Paths) -> State | None:
    """The state of a supervisor that still runs (PID and create time match), else None."""
    state = read_state(paths)
    if state is None or not process.alive(state.supervisor_pid):
        return None
    import psutil

    try:
        created = psutil.Process(state.supervisor_pid).create_time()
    except psutil.Error:
        return None
    return state if abs(created - state.supervisor_create_time) < 0.01 else None


def own_state(mode: str) -> State:
    import psutil

    me = os.getpid()
    return State(state="starting", supervisor_pid=me, supervisor_create_time=psutil.Process(me).create_time(),
                 mode=mode)


def exit_record(rc: int, *, hung: bool = False) -> dict:
    """How a server ended, for `status`: {"code": n} or {"signal": "SIGKILL"}, with the time;
    "hung": true when the supervisor stopped it for not answering its health checks."""
    at = pidfile.now_iso()
    extra = {"hung": True} if hung else {}
    if rc < 0:
        try:
            return {"signal": signal.Signals(-rc).name, "at": at, **extra}
        except ValueError:
            return {"signal": str(-rc), "at": at, **extra}
    return {"code": rc, "at": at, **extra}


def exit_text(last: dict) -> str:
    """An exit record as `status` says it: `status 7 at ...`, `signal SIGKILL at ...`."""
    what = (f"signal {last['signal']}" if "signal" in last
            else f"status {last['code']}" if "code" in last else str(last.get("error")))
    if last.get("hung"):
        what = f"stopped for not answering its health checks ({what})"
    return f"{what} at {last.get('at', '?')}"
