"""start / run / restart / stop / status of the SparkQ server, with the pre-start backup hook.

start, stop and restart hold the supervisor lock for their whole length, so they (and restore)
never interleave; `run` holds it only until the server is healthy, so `status` and `stop` work
from another shell while it runs. `status` never takes the lock and never writes a backup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from . import log, process
from .errors import SparkqError, StartFailed, UsageError
from .fmt import human_size
from .interrupts import sigterm_unwinds
from .locking import file_lock


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

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = list(self.notices)
        if self.already_running:
            return "\n".join([*lines, f"already running (PID {self.pid}, {self.url})"])
        if self.stopped_pid is not None:
            lines.append(f"stopped (PID {self.stopped_pid})")
        if self.backup_text:
            lines.append(self.backup_text)
        lines.append(f"started (PID {self.pid}, {self.url})")
        return "\n".join(lines)


@dataclass
class StopResult:
    was_running: bool
    pid: int | None = None
    forced: bool = False  # SIGKILL was needed
    seconds: float = 0.0
    notice: str | None = None
    suspended: bool = False  # it was stopped (SIGSTOP, Ctrl-Z): resumed so it could see SIGTERM

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [self.notice] if self.notice else []
        if not self.was_running:
            lines.append("not running")
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


@dataclass
class StatusResult:
    running: bool
    pid: int | None = None
    started_at: str | None = None
    uptime_s: float | None = None
    url: str | None = None
    health: dict | str | None = None
    db_path: str = ""
    db_size: int | None = None
    newest_backup: str | None = None
    newest_backup_age_s: float | None = None
    notice: str | None = None
    warnings: list[str] = field(default_factory=list)
    offsite: dict | None = None  # backup/offsite_state.summary: pending bundles, last failure

    @property
    def exit_code(self) -> int:
        from .errors import NOT_RUNNING, OK

        return OK if self.running else NOT_RUNNING

    def to_dict(self) -> dict:
        found = asdict(self)
        if self.offsite is None:
            del found["offsite"]  # the key is there when off-site copies are configured
        return found

    def text(self) -> str:
        lines = [self.notice] if self.notice else []
        lines += self.warnings
        if self.running:
            lines.append(f"running (PID {self.pid}, up {_duration(self.uptime_s)}) at {self.url}")
            lines.append(f"  health:   {_health_text(self.health)}")
        else:
            lines.append("stopped")
        size = f" ({human_size(self.db_size)})" if self.db_size is not None else " (does not exist yet)"
        lines.append(f"  database: {self.db_path}{size}")
        if self.newest_backup:
            lines.append(f"  newest backup: {self.newest_backup} ({_duration(self.newest_backup_age_s)} ago)")
        else:
            lines.append("  newest backup: none")
        if self.offsite:
            from .backup.offsite_state import summary_text

            lines.append("  " + summary_text(self.offsite, _duration))
        return "\n".join(lines)


# --- start / restart -------------------------------------------------------------------------


def start(settings, *, skip_backup: bool = False) -> StartResult:
    with file_lock(settings.paths.lockfile):
        return _start_locked(settings, trigger="start", skip_backup=skip_backup)


def restart(settings, *, skip_backup: bool = False) -> StartResult:
    with file_lock(settings.paths.lockfile):
        info, _ = process.identify(settings.paths)
        if info is not None and info.mode == "run" and _alive(info.supervisor_pid):
            raise SparkqError(
                f"the server (PID {info.pid}) is run in the foreground by PID {info.supervisor_pid} "
                "(systemd or a terminal); restart it there, e.g. systemctl restart sparkq"
            )
        stopped = _stop_locked(settings)
        if stopped.was_running and not process.wait_port_free(
                settings.host, settings.port, float(settings.get("server.start_timeout"))):
            raise StartFailed(f"port {settings.port} is still in use after the server stopped; "
                              "find the program holding it (ss -ltnp) and stop it")
        result = _start_locked(settings, trigger="restart", skip_backup=skip_backup,
                               notices=[stopped.notice] if stopped.notice else [])
        if stopped.was_running:
            result.stopped_pid = stopped.pid
        return result


def _start_locked(settings, *, trigger: str, skip_backup: bool, notices: list[str] | None = None) -> StartResult:
    """Start the server detached; the caller holds the supervisor lock."""
    notices = list(notices or [])
    info, stale = process.identify(settings.paths)
    if stale:
        notices.append(stale)
    if info is not None:
        return StartResult(pid=info.pid, url=info.url, already_running=True, notices=notices)
    if process.left_behind(settings.paths)[1]:
        raise StartFailed(f"server not started: {stale}")
    with sigterm_unwinds():
        settings = _prepare(settings, notices, skip_backup)
        backup, backup_text = _pre_start_backup(settings, trigger, skip_backup)
        try:
            spawned = process.spawn(settings)
            try:
                # The pidfile goes first: a start killed while it waits must not leave a server that
                # status and stop cannot see. A failed start removes it again.
                info = _record(settings, spawned, mode="start")
                process.wait_healthy(spawned, settings.health_url, float(settings.get("server.start_timeout")))
            except BaseException:
                _discard(settings, spawned)
                raise
        except BaseException:
            if backup_text:  # the backup was taken (or found unchanged) all the same: say so
                print(backup_text)  # stdout, as on success: stderr keeps the one-line error
            raise
        backup_text = _prune_after_healthy(settings, backup) or backup_text
    _push_offsite(settings, backup)
    log.get().info("server_started", pid=info.pid, url=info.url, trigger=trigger)
    return StartResult(pid=info.pid, url=info.url, backup=backup and backup.to_dict(), backup_text=backup_text,
                       notices=notices)


def _prepare(settings, notices: list[str], skip_backup: bool):
    """First-run set-up, exposure warning and port check: everything before the backup."""
    from .backup.history import refuse_unusable_db, unshare_pre_restore

    paths = settings.paths
    if not skip_backup:
        try:  # a bad SPARKQ_BACKUP_KEEP stops us before first-run set-up writes anything
            settings.backup_keep()
        except SparkqError as exc:
            raise _not_started(exc) from None
    refuse_unusable_db(paths)
    # The server is about to write the DB: a pre-restore bundle must not share its inode (even
    # with --skip-backup, which takes no backup that would otherwise do this).
    unshare_pre_restore(settings)
    if not paths.db.exists():
        from .setup import run_setup

        result = run_setup(settings, locked=True)
        wrote = f"; wrote {', '.join(result.wrote)}" if result.wrote else ""
        notices.append(f"first run: created the database {paths.db}{wrote}")
        log.get().info("first_run_setup", db=str(paths.db), wrote=result.wrote)
        if paths.config_file.name in result.wrote:
            from . import config

            settings = config.load(paths.config_file, root=paths.root)
    exposed = settings.exposure()
    if exposed:  # said in the result, where it is read; the log keeps a record
        notices.append(exposed)
        log.get().info("server_exposed", host=settings.host)
    if process.port_in_use(settings.host, settings.port):
        raise StartFailed(f"port {settings.port} on {settings.host} is already in use by another program; "
                          "stop that program or set server.port in sparkq.yml")
    return settings


def _pre_start_backup(settings, trigger: str, skip_backup: bool):
    """(BackupResult or None, its line). Writes nothing when the newest bundle holds this state
    already, and leaves retention to _prune_after_healthy: a start that fails must never push
    good history out (a crash loop would otherwise rotate every bundle away)."""
    if skip_backup:
        log.get().warning("pre_start_backup_skipped", reason="--skip-backup",
                          hint="no backup of the current state was taken")
        return None, "backup skipped (--skip-backup)"
    from .backup.create import create_backup

    log.get().info("pre_start_backup", trigger=trigger)
    try:
        result = create_backup(settings, trigger=trigger, progress=sys.stderr.isatty(), locked=True,
                               prune=False, skip_unchanged=True)
    except SparkqError as exc:
        raise _not_started(exc) from None
    return result, result.text() or result.notice


def _prune_after_healthy(settings, backup) -> str | None:
    """Retention for the pre-start backup, now that the server is up; returns its new line."""
    if backup is None:
        return None
    from .backup.create import prune_after

    return prune_after(settings, backup).text()


def _push_offsite(settings, backup) -> None:
    """Off-site copy of the pre-start bundle in a detached child: a start never waits for the
    network. It pushes every pending bundle, so an unchanged start retries earlier failures."""
    if backup is not None:
        from .backup.offsite import spawn_push

        spawn_push(settings)


def _not_started(exc: SparkqError) -> SparkqError:
    """The same error, saying that the server was not started because of it."""
    exc.args = (f"server not started: the pre-start backup failed: {exc}",)
    return exc


def _record(settings, spawned: process.Spawned, *, mode: str, supervisor_pid: int | None = None):
    pid = spawned.proc.pid
    create_time, cmdline = process.process_identity(pid)
    info = process.PidInfo(
        pid=pid, create_time=create_time, argv=spawned.argv, host=settings.host, port=settings.port,
        started_at=process.now_iso(), url=settings.base_url, mode=mode, supervisor_pid=supervisor_pid,
        cmdline=cmdline, spawn_id=spawned.token,
    )
    process.write_pidfile(settings.paths, info)
    log.get().info("server_spawned", pid=pid, argv=spawned.argv, pidfile=str(settings.paths.pidfile))
    return info


def _discard(settings, spawned: process.Spawned) -> None:
    """A start that failed: kill whatever it left, leave no pidfile."""
    proc = spawned.proc
    if proc.poll() is None or process.group_members(proc.pid):
        process.kill_group(proc.pid, reap=proc.poll)
    proc.wait()
    # A server that daemonized left its group: find it by the spawn's token (or our port).
    from .leftovers import stop_all

    stop_all(spawned.token, port=spawned.port, since=spawned.started)
    process.remove_pidfile(settings.paths, proc.pid)
    log.get().error("server_start_failed", pid=proc.pid, status=proc.returncode)


# --- stop ------------------------------------------------------------------------------------


def stop(settings) -> StopResult:
    with file_lock(settings.paths.lockfile):
        return _stop_locked(settings)


def _stop_locked(settings) -> StopResult:
    paths = settings.paths
    info, stale = process.identify(paths)
    if info is None:
        return _stop_left_behind(settings, stale)
    began = time.monotonic()
    suspended = process.is_suspended(info.pid)
    forced = _terminate(info.pid, float(settings.get("server.stop_timeout")), resume=suspended)
    if info.spawn_id:  # anything the server started that left its process group
        from .leftovers import stop_all

        stop_all(info.spawn_id, since=info.create_time, timeout=float(settings.get("server.stop_timeout")))
    process.remove_pidfile(paths, info.pid)
    seconds = time.monotonic() - began
    log.get().info("server_stopped", pid=info.pid, forced=forced, suspended=suspended,
                   seconds=round(seconds, 3))
    return StopResult(was_running=True, pid=info.pid, forced=forced, seconds=seconds, notice=stale,
                      suspended=suspended)


def _stop_left_behind(settings, stale: str | None) -> StopResult:
    """No server, but maybe what one left when it forked into the background: stop that."""
    spawn_id, left = process.left_behind(settings.paths)
    if not left:
        return StopResult(was_running=False, notice=stale)
    from .leftovers import stop_all

    began = time.monotonic()
    pids = stop_all(spawn_id, timeout=float(settings.get("server.stop_timeout")))
    process.remove_pidfile(settings.paths)
    log.get().info("server_leftovers_stopped", pids=pids)
    notice = f"the server had exited but left PID {', '.join(map(str, pids))} running; stopped them"
    return StopResult(was_running=True, pid=pids[0] if pids else None, seconds=time.monotonic() - began,
                      notice=notice)


def _terminate(pid: int, timeout: float, *, resume: bool = False) -> bool:
    pgid = process.pgid_of(pid)
    if pgid != pid or pgid == os.getpgrp():
        # Not the leader of its own group (we always start it as one): signal it alone rather
        # than a group that may hold unrelated processes.
        return _terminate_one(pid, timeout, resume=resume)
    return process.terminate_group(pgid, timeout, resume=resume)


def _terminate_one(pid: int, timeout: float, *, resume: bool = False) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.terminate()
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


# --- run (foreground) ------------------------------------------------------------------------


class _Forwarder:
    """Forward SIGTERM/SIGINT/SIGHUP to the server's process group; remember that a stop was asked."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, notifier, stop_timeout: float):
        self.notifier = notifier
        self.stop_timeout = stop_timeout
        self.pgid: int | None = None
        self.stopping = False
        self.deadline: float | None = None
        self.previous: dict = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def attach(self, pgid: int) -> None:
        self.pgid = pgid
        if self.stopping:  # a signal came before the server existed
            self._forward(signal.SIGTERM)

    def _handle(self, signum, _frame) -> None:
        if not self.stopping:
            self.stopping = True
            self.notifier.send("STOPPING=1")
            self.deadline = time.monotonic() + self.stop_timeout
        if self.pgid is not None:
            # SIGINT stays SIGINT (Ctrl-C); a hang-up asks for the same clean stop as SIGTERM.
            self._forward(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        try:
            process.signal_group(self.pgid, signum)
        except SparkqError:
            pass
        log.get().info("signal_forwarded", signal=signal.Signals(signum).name, pgid=self.pgid)


def run(settings, *, skip_backup: bool = False) -> int:
    """Run the server as a child in the foreground; return its exit status."""
    from .systemd import Notifier

    notifier = Notifier.from_env()
    forwarder = _Forwarder(notifier, float(settings.get("server.stop_timeout")))
    # The lock covers backup, spawn and readiness only: once the server is healthy, `status` and
    # `stop` from another shell must work while this process keeps running.
    with file_lock(settings.paths.lockfile):
        spawned, info = _run_start_locked(settings, notifier, forwarder, skip_backup)
    try:
        if info is not None:
            notifier.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving at {info.url}")
            print(f"SparkQ is running (PID {info.pid}, {info.url}); Ctrl-C stops it", file=sys.stderr)
            log.get().info("server_started", pid=info.pid, url=info.url, trigger="run")
        rc = _wait_child(spawned.proc, forwarder)
    finally:
        forwarder.restore()
        if process.group_members(spawned.proc.pid):  # its own children outlived it
            process.terminate_group(spawned.proc.pid, forwarder.stop_timeout, reap=spawned.proc.poll)
        from .leftovers import stop_all

        # What left the group (a server that daemonized) is found by the spawn's token.
        if stop_all(spawned.token, since=spawned.started, timeout=forwarder.stop_timeout):
            print("sparkq: the server left processes outside its process group; stopped them", file=sys.stderr)
        process.remove_pidfile(settings.paths, spawned.proc.pid)
        if not forwarder.stopping:
            notifier.send("STOPPING=1")
    status = process.to_exit_status(rc)
    log.get().info("server_exited", pid=spawned.proc.pid, status=status, requested=forwarder.stopping)
    return status


def _run_start_locked(settings, notifier, forwarder: "_Forwarder", skip_backup: bool):
    """Back up, spawn, wait until healthy, write the pidfile. Returns (spawned, PidInfo), or
    (spawned, None) when a stop signal arrived and the server already exited during start-up."""
    info, stale = process.identify(settings.paths)
    if stale:
        print(f"sparkq: {stale}", file=sys.stderr)
    if info is not None:
        raise StartFailed(f"already running (PID {info.pid}, {info.url}); stop it first: ./sparkq.sh stop")
    if process.left_behind(settings.paths)[1]:
        raise StartFailed(f"server not started: {stale}")
    notices: list[str] = []
    notifier.send("STATUS=pre-start backup")
    with notifier.extend_timeout(120, every=20):  # a big DB must not hit TimeoutStartSec
        settings = _prepare(settings, notices, skip_backup)
        backup, backup_text = _pre_start_backup(settings, "run", skip_backup)
    for line in [*notices, backup_text]:
        if line:
            print(line, file=sys.stderr)
    notifier.send("STATUS=starting the server")
    forwarder.install()
    spawned = None
    try:
        spawned = process.spawn(settings)
        forwarder.attach(spawned.proc.pid)
        info = _record(settings, spawned, mode="run", supervisor_pid=os.getpid())  # first: see _start_locked
        ready = process.wait_healthy(spawned, settings.health_url, float(settings.get("server.start_timeout")),
                                     stop_requested=lambda: forwarder.stopping)
        if isinstance(ready, int):
            return spawned, None
        _push_offsite(settings, backup)
        if backup is not None:
            _prune_after_healthy(settings, backup)
            if backup.pruned:
                n = len(backup.pruned)
                print(f"backup: pruned {n} old backup{'s' if n != 1 else ''} (backup.keep)", file=sys.stderr)
        return spawned, info
    except BaseException:
        forwarder.restore()
        if spawned is not None:
            _discard(settings, spawned)
        raise


def _wait_child(proc: subprocess.Popen, forwarder: _Forwarder) -> int:
    """Wait for the server to exit; SIGKILL its group when a forwarded stop takes too long."""
    killed = False
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if forwarder.deadline is not None and not killed and time.monotonic() > forwarder.deadline:
                killed = True
                process.kill_group(proc.pid, reap=proc.poll)


# --- status ----------------------------------------------------------------------------------


def status(settings) -> StatusResult:
    """Report, never change anything (except dropping a stale pidfile); fast: no DB opened."""
    paths = settings.paths
    info, stale = process.identify(paths)
    result = StatusResult(running=info is not None, db_path=str(paths.db), notice=stale)
    try:
        result.db_size = paths.db.stat().st_size
    except OSError:
        pass
    if info is not None:
        result.pid, result.url, result.started_at = info.pid, info.url, info.started_at
        result.uptime_s = round(max(0.0, time.time() - info.create_time), 1)
        health_path = settings.get("server.health_url")
        url = health_path if health_path.startswith("http") else info.url.rstrip("/") + health_path
        ok, body = process.probe_health(url, timeout=1.0)
        # Always an object, so scripts can read `health.ok` without checking its type first.
        result.health = ({**body, "ok": True} if ok
                         else {"ok": False, "error": f"no healthy answer from {url}: {body}"})
    exposed = settings.exposure(info.host if info is not None else None)
    if exposed:
        result.warnings.append(exposed)
    if info is None and process.port_in_use(settings.host, settings.port):
        # Not ours (or no longer recorded): say so rather than a bare "stopped" while it serves.
        result.warnings.append(f"port {settings.port} is in use by a program SparkQ does not supervise; "
                               "`start` will refuse until it is stopped (find it with: ss -ltnp)")
    result.newest_backup, result.newest_backup_age_s = _newest_backup(paths)
    result.offsite = _offsite_summary(settings)
    return result


def _offsite_summary(settings) -> dict | None:
    """Pending off-site pushes and the last failure, from our own state file: no restic call."""
    from .backup.offsite_state import configured, summary

    if not configured(settings):
        return None
    from .backup.catalog import scan

    try:
        regular, _pre = scan(settings.paths.backup_dir, listing_cache=settings.paths.listing_cache)
    except Exception:  # noqa: BLE001 - _newest_backup has logged it already
        regular = []
    return summary(settings, [e.name for e in regular])


def _newest_backup(paths) -> tuple[str | None, float | None]:
    from datetime import datetime, timezone

    from .backup.catalog import scan

    try:
        regular, _pre_restore = scan(paths.backup_dir, listing_cache=paths.listing_cache)
    except Exception as exc:  # noqa: BLE001 - status reports; a bad backup dir must not break it
        log.get().warning("backup_scan_failed", dir=str(paths.backup_dir), error=str(exc))
        return None, None
    if not regular:
        return None, None
    newest = regular[0]
    age = (datetime.now(timezone.utc) - newest.created_at).total_seconds()
    return newest.name, round(max(age, 0.0), 1)


# --- helpers ---------------------------------------------------------------------------------


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _health_text(health) -> str:
    if not isinstance(health, dict):
        return str(health)
    if not health.get("ok", True):
        return str(health.get("error"))
    state = health.get("status", "ok")
    rest = ", ".join(f"{k} {v}" for k, v in health.items() if k not in ("status", "pid", "ok"))
    return f"{state} ({rest})" if rest else str(state)
