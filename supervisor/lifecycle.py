"""start / restart / stop of the SparkQ server, and `launch`, the one start path every start
takes (these, `run`, and the supervisor's restarts in supervise.py).

`start` leaves a supervisor running detached (detached.py) and waits for its first start's
result. stop and restart hold the supervisor lock for their whole length, so they (and restore)
never interleave; the supervisor holds it while it starts the server. `status` (status.py)
never takes the lock.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import log, pidfile, prestart, process, serverdb
from .config import Settings
from .errors import SparkqError, StartFailed, UsageError
from .interrupts import sigterm_unwinds
from .locking import file_lock
from .logs import log_tail
from .ports import wait_port_free


# --- results ---------------------------------------------------------------------------------


@dataclass
class StartResult:
    pid: int
    url: str
    already_running: bool = False
    backup: dict | None = None
    backup_text: str | None = None
    stopped_pid: int | None = None  # restart: the server that was stopped first
    notices: list[str] = field(default_factory=list)
    supervisor_pid: int | None = None  # the supervisor `start` left running

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = list(self.notices)
        if self.already_running:
            return "\n".join([*lines, f"already running (PID {self.pid}, {self.url})",
                              *([self.backup_text] if self.backup_text else [])])
        if self.stopped_pid is not None:
            lines.append(f"stopped (PID {self.stopped_pid})")
        if self.backup_text:
            lines.append(self.backup_text)
        lines.append(f"started (PID {self.pid}, {self.url})"
                     + (f", supervised by PID {self.supervisor_pid}" if self.supervisor_pid else ""))
        return "\n".join(lines)


@dataclass
class StopResult:
    was_running: bool
    pid: int | None = None
    forced: bool = False  # SIGKILL was needed
    seconds: float = 0.0
    notice: str | None = None
    suspended: bool = False  # it was stopped (SIGSTOP, Ctrl-Z): resumed so it could see SIGTERM
    supervisor_pid: int | None = None  # the supervisor that was asked to leave first
    moved_to: str | None = None  # the server's database was open under this other path

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [self.notice] if self.notice else []
        if not self.was_running:
            lines.append(f"supervisor (PID {self.supervisor_pid}) stopped; the server was not running"
                         if self.supervisor_pid else "not running")
        elif self.forced and self.suspended:
            lines.append(f"stopped (PID {self.pid}) with SIGKILL: it was suspended (SIGSTOP) and did not "
                         f"shut down within {self.seconds:.0f}s of SIGTERM and SIGCONT")
        elif self.forced:
            lines.append(f"stopped (PID {self.pid}) with SIGKILL: it ignored SIGTERM for "
                         f"{self.seconds:.0f}s (server.stop_timeout)")
        else:
            lines.append(f"stopped (PID {self.pid}, {self.seconds:.1f}s)")
            if self.suspended:
                lines.append("  it was suspended (SIGSTOP): resumed it with SIGCONT so it could shut down")
        return "\n".join(lines)


# --- the one start path ----------------------------------------------------------------------


@dataclass
class Launched:
    """A server that `launch` started: healthy, or (info None) stopped by request meanwhile."""

    spawned: process.Spawned
    info: pidfile.PidInfo | None
    backup: object | None  # the pre-start BackupResult, already pruned after
    backup_text: str | None
    notices: list[str]


def running(settings: Settings, notices: list[str]) -> pidfile.PidInfo | None:
    """The server that already runs, or None; raises when what a server left still runs."""
    info, stale = pidfile.identify(settings.paths)
    if stale:
        notices.append(stale)
    if info is None and pidfile.left_behind(settings.paths)[1]:
        raise StartFailed(f"server not started: {stale}")
    return info


def launch(settings: Settings, *, trigger: str, mode: str, skip_backup: bool = False,
           notices: list[str] | None = None, supervisor_pid: int | None = None,
           stop_requested: Callable[[], bool] = lambda: False, while_preparing=nullcontext,
           on_prepared: Callable[[list[str], str | None], None] | None = None,
           prune: bool = True) -> Launched:
    """Prepare, back up, spawn, record, wait until healthy, prune: every start goes through here.

    The caller holds the supervisor lock and has checked that no server runs. On failure the
    server is killed and its pidfile removed; the pre-start backup's line goes to stderr, since
    the backup was taken all the same. `while_preparing` wraps the slow part (systemd's
    start-timeout extension); `on_prepared(notices, backup line)` is told before the spawn.
    `prune=False` leaves retention to the caller (the supervisor's restarts prune only once the
    server has stayed up, supervise.py)."""
    notices = list(notices or [])
    with while_preparing():
        settings = prestart.prepare(settings, notices, skip_backup)
        backup, backup_text = prestart.backup_before_start(settings, trigger, skip_backup)
    if on_prepared is not None:
        on_prepared(notices, backup_text)
    try:
        spawned = process.spawn(settings)
        try:
            # The pidfile goes first: a start killed while it waits must not leave a server that
            # status and stop cannot see. A failed start removes it again.
            info = _record(settings, spawned, mode=mode, supervisor_pid=supervisor_pid)
            ready = process.wait_healthy(spawned, settings.health_url, settings.start_timeout,
                                         stop_requested=stop_requested)
        except BaseException:
            _discard(settings, spawned)
            raise
    except BaseException:
        if backup_text and on_prepared is None:  # the backup was taken all the same: say so
            print(backup_text)  # stdout, as on success: stderr keeps the one-line error
        raise
    if ready is None:  # a stop was asked while it started: the caller stops it
        return Launched(spawned, None, backup, backup_text, notices)
    if prune:
        backup_text = prestart.prune_after_healthy(settings, backup) or backup_text
    _push_offsite(settings, backup)
    log.get().info("server_started", pid=info.pid, url=info.url, trigger=trigger)
    return Launched(spawned, info, backup, backup_text, notices)


def _push_offsite(settings: Settings, backup) -> None:
    """Off-site copy of the pre-start bundle in a detached child: a start never waits for the
    network. It pushes every pending bundle, so an unchanged start retries earlier failures."""
    if backup is not None:
        from .backup.offsite import spawn_push

        spawn_push(settings)


def _record(settings: Settings, spawned: process.Spawned, *, mode: str,
            supervisor_pid: int | None) -> pidfile.PidInfo:
    pid = spawned.proc.pid
    create_time, cmdline = pidfile.process_identity(pid)
    info = pidfile.PidInfo(
        pid=pid, create_time=create_time, argv=spawned.argv, host=settings.host, port=settings.port,
        started_at=pidfile.now_iso(), url=settings.base_url, mode=mode, supervisor_pid=supervisor_pid,
        cmdline=cmdline, spawn_id=spawned.token,
    )
    pidfile.write_pidfile(settings.paths, info)
    log.get().info("server_spawned", pid=pid, argv=spawned.argv, pidfile=str(settings.paths.pidfile))
    return info


def _discard(settings: Settings, spawned: process.Spawned) -> None:
    """A start that failed: kill whatever it left, leave no pidfile."""
    proc = spawned.proc
    if proc.poll() is None or process.group_members(proc.pid):
        process.kill_group(proc.pid, reap=proc.poll)
    proc.wait()
    _stop_escaped(spawned, port=spawned.port)
    pidfile.remove_pidfile(settings.paths, proc.pid)
    # Info, not error: the caller raises what went wrong, and that is the console's one line.
    log.get().info("server_start_failed", pid=proc.pid, status=proc.returncode)


def _stop_escaped(spawned: process.Spawned, **how) -> list[int]:
    """Stop what left the server's group (a server that daemonized), found by the spawn's token."""
    from .leftovers import stop_all

    return stop_all(spawned.token, since=spawned.started, **how)


# --- start / restart -------------------------------------------------------------------------


def start(settings: Settings, *, skip_backup: bool = False) -> StartResult:
    with file_lock(settings.paths.lockfile):
        notices = _replace_unsupervised(settings)
    result = _start_supervised(settings, trigger="start", skip_backup=skip_backup, notices=notices)
    if result.already_running and not skip_backup:
        try:
            result.backup, result.backup_text = _backup_beside(settings)
        except SparkqError as exc:  # a failure ends `start && stop` before the stop
            exc.args = (f"already running (PID {result.pid}), but its backup failed: {exc}",)
            raise
    return result


def _backup_beside(settings: Settings) -> tuple[dict | None, str | None]:
    """Every start leaves a backup of the state as it is, also one that finds the server running
    (`start && stop` after editing sparkq.yml is how the guide takes a backup). Beside a running
    server, like `backup`, but writing nothing when the newest bundle holds this state."""
    from .backup.create import create_backup

    result = create_backup(settings, trigger="start", beside_server=True, skip_unchanged=True)
    if result.name:
        _push_offsite(settings, result)
    return result.to_dict(), result.text() or result.notice


def restart(settings: Settings, *, skip_backup: bool = False) -> StartResult:
    with file_lock(settings.paths.lockfile):
        info, _ = pidfile.identify(settings.paths)
        if info is not None and info.mode == "run" and process.alive(info.supervisor_pid):
            raise SparkqError(
                f"the server (PID {info.pid}) is run in the foreground by PID {info.supervisor_pid} "
                "(systemd or a terminal); restart it there, e.g. systemctl restart sparkq"
            )
        stopped = _stop_locked(settings)
        if stopped.moved_to:  # a start now would call the rows missing and offer an older backup
            raise UsageError(f"stopped (PID {stopped.pid}); not started: {stopped.notice}, then ./sparkq.sh start")
        if stopped.was_running and not wait_port_free(settings.host, settings.port, settings.start_timeout):
            raise StartFailed(f"port {settings.port} is still in use after the server stopped; "
                              "find the program holding it (ss -ltnp) and stop it")
    result = _start_supervised(settings, trigger="restart", skip_backup=skip_backup,
                               notices=[stopped.notice] if stopped.notice else [])
    if stopped.was_running:
        result.stopped_pid = stopped.pid
    return result


def _replace_unsupervised(settings: Settings) -> list[str]:
    """A server whose supervisor was killed is stopped, so the new supervisor starts its own
    (with the pre-start backup): never two servers, and never one nobody restarts. A supervisor
    between two servers (backoff) refuses the start."""
    from .runstate import live_supervisor

    info, _ = pidfile.identify(settings.paths)
    live = live_supervisor(settings.paths)
    if info is None and live is not None:  # it will start one itself: a second would be too many
        doing = "in backoff" if live.state == "backoff" else live.state
        raise StartFailed(f"the supervisor (PID {live.supervisor_pid}) is {doing} and starts the server "
                          "itself; wait for it (./sparkq.sh status), or ./sparkq.sh stop to start afresh")
    if info is None or live is not None or process.alive(info.supervisor_pid):
        return []
    stopped = _stop_locked(settings)
    log.get().warning("unsupervised_server_replaced", pid=stopped.pid)
    return [f"the server (PID {stopped.pid}) had lost its supervisor; stopped it to start it supervised"]


def _start_supervised(settings: Settings, *, trigger: str, skip_backup: bool,
                      notices: list[str]) -> StartResult:
    """Leave a supervisor running (detached.serve_detached) and report its first start."""
    from .detached import spawn_detached
    from .envfile import read_env_file

    # Warnings belong here, where a person reads them (the supervisor logs them to its file).
    read_env_file(settings.paths.env_file)
    prestart.check_retention(settings, skip_backup)  # before the supervisor writes a thing
    child = spawn_detached(settings, trigger=trigger, skip_backup=skip_backup)
    try:
        with sigterm_unwinds():
            report = _wait_report(settings, child)
    except BaseException:
        _end_supervisor(child, settings)
        raise
    notices = notices + list(report.get("notices") or [])
    if "error" in report:
        _forget_failed_start(settings, child)
        error = SparkqError(report["error"])
        error.exit_code = report.get("exit_code", error.exit_code)
        for line in notices:
            print(line, file=sys.stderr)
        raise error
    if skip_backup and not report.get("already_running"):  # said where it is read, as a direct start did
        log.get().warning("pre_start_backup_skipped", reason="--skip-backup",
                          hint="no backup of the current state was taken")
    return StartResult(pid=report["pid"], url=report["url"], already_running=report.get("already_running", False),
                       backup=report.get("backup"), backup_text=report.get("backup_text"), notices=notices,
                       supervisor_pid=None if report.get("already_running") else child.pid)


def _forget_failed_start(settings: Settings, child) -> None:
    """A start that failed leaves nothing behind, not even the state of its supervisor."""
    from .runstate import read_state

    child.wait()
    state = read_state(settings.paths)
    if state is not None and state.supervisor_pid == child.pid:
        settings.paths.supervisor_state.unlink(missing_ok=True)


def _wait_report(settings: Settings, child) -> dict:
    from .runstate import read_state, take_reply

    while True:
        state = read_state(settings.paths)
        if state is not None and state.supervisor_pid == child.pid and state.report is not None:
            return state.report
        exited = child.poll() is not None  # before the reply: a reply written just before exit counts
        reply = take_reply(settings.paths, child.pid)
        if reply is not None:
            return reply
        state = read_state(settings.paths) if exited else None  # it may have written just before exiting
        if state is not None and state.supervisor_pid == child.pid and state.report is not None:
            return state.report
        if exited:
            tail = log_tail(settings.paths.supervisor_log, lines=10)
            raise StartFailed(f"the supervisor exited with {process.describe_status(child.returncode)} before "
                              f"the server started; see {settings.paths.supervisor_log}\n" + "\n".join(tail))
        time.sleep(0.02)


def _end_supervisor(child, settings: Settings) -> None:
    """`start` was interrupted: the supervisor it left stops its server and exits."""
    process.stop_child(child, settings.start_timeout + settings.stop_timeout + 10)


# --- stop ------------------------------------------------------------------------------------


def stop(settings: Settings) -> StopResult:
    with file_lock(settings.paths.lockfile):
        result = _stop_locked(settings)
        _settle_state(settings)
    if not result.was_running and result.notice is None:  # (restart's start says it once itself)
        result.notice = _unknown_sparkq(settings)
    return result


def _settle_state(settings: Settings) -> None:
    """After `stop`, the state says stopped: a supervisor that gave up (fatal) is gone, and the
    next `start` begins afresh, so status must not keep saying fatal (the reason stays in the
    supervisor log)."""
    from .runstate import read_state, write_state

    state = read_state(settings.paths)
    if state is not None and state.state == "fatal" and not process.alive(state.supervisor_pid):
        state.state = "stopped"
        write_state(settings.paths, state)


def _stop_locked(settings: Settings) -> StopResult:
    paths = settings.paths
    supervisor = _release_supervisor(settings)
    info, stale = pidfile.identify(paths)
    if info is None:
        result = _stop_left_behind(settings, stale)
        result.supervisor_pid = supervisor
        return result
    began = time.monotonic()
    suspended = process.is_suspended(info.pid)
    where = serverdb.locate(settings)
    before = (where, paths.db.exists(), serverdb.rescued_copies(paths))
    forced = process.stop(info.pid, serverdb.stop_timeout(settings), resume=suspended)
    if info.spawn_id:  # anything the server started that left its process group
        from .leftovers import stop_all

        stop_all(info.spawn_id, since=info.create_time, timeout=settings.stop_timeout)
    pidfile.remove_pidfile(paths, info.pid)
    seconds = time.monotonic() - began
    log.get().info("server_stopped", pid=info.pid, forced=forced, suspended=suspended,
                   seconds=round(seconds, 3))
    return StopResult(was_running=True, pid=info.pid, forced=forced, seconds=seconds,
                      notice=stale or _written_back(settings, *before), suspended=suspended,
                      supervisor_pid=supervisor, moved_to=where[1] if where and where[0] == "moved" else None)


def _written_back(settings: Settings, where, db_existed: bool, copies_before: list) -> str | None:
    """After a stop: where the rows of a server whose database was not at database.path went."""
    db = settings.paths.db
    if where and where[0] == "moved":
        return f"the server's database is now {where[1]}, not {db}: put it back at {db} before starting"
    if not where or where[0] != "deleted" or settings.command is not None:
        return None
    new = [p for p in serverdb.rescued_copies(settings.paths) if p not in copies_before]
    if new and ".rescued-" in new[-1].name:
        return f"the server's rows were written to {new[-1]} ({db} had been replaced while it ran)"
    if not db_existed and db.exists():
        return f"the server wrote its rows back to {db} (the file had been deleted while it ran)"
    cut = f"; what it copied is in {new[-1]}" if new else ""
    return f"the server's rows could not be written back (see {settings.paths.server_log}){cut}"


def _release_supervisor(settings: Settings) -> int | None:
    """Ask a running supervisor to leave (it exits without restarting anything) and wait until
    it has; the server is then stopped here, by its pidfile identity, like one without one."""
    from .runstate import RELEASE, live_supervisor

    state = live_supervisor(settings.paths)
    pid = state.supervisor_pid if state is not None else None
    if pid is None:
        info, _ = pidfile.identify(settings.paths)
        if info is None or info.mode != "run" or not process.alive(info.supervisor_pid):
            return None
        pid = info.supervisor_pid  # a `run` from before the state file
    # SIGKILL when it is stuck: it must not restart what we stop next.
    if process.signal_then_kill(pid, RELEASE, settings.stop_timeout + 10):
        log.get().warning("supervisor_killed", pid=pid, reason="it did not leave when asked")
    else:
        log.get().info("supervisor_released", pid=pid)
    return pid


def _unknown_sparkq(settings: Settings) -> str | None:
    """"not running" must not be the last word when a SparkQ server of other settings holds our
    port (database.path edited while it ran): say which one, and how to stop it."""
    from .ports import holder, port_in_use

    if not port_in_use(settings.host, settings.port):
        return None
    held_by = holder(settings)
    return None if held_by == "another program" else f"port {settings.port} is in use by {held_by}"


def _stop_left_behind(settings: Settings, stale: str | None) -> StopResult:
    """No server, but maybe what one left when it forked into the background: stop that."""
    spawn_id, left = pidfile.left_behind(settings.paths)
    if not left:
        return StopResult(was_running=False, notice=stale)
    from .leftovers import stop_all

    began = time.monotonic()
    pids = stop_all(spawn_id, timeout=settings.stop_timeout)
    pidfile.remove_pidfile(settings.paths)
    log.get().info("server_leftovers_stopped", pids=pids)
    notice = f"the server had exited but left PID {', '.join(map(str, pids))} running; stopped them"
    return StopResult(was_running=True, pid=pids[0] if pids else None, seconds=time.monotonic() - began,
                      notice=notice)
