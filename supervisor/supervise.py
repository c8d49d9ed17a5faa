"""The resident supervisor: keeps the server up. `run` runs this loop in the foreground; `start`
leaves it running detached (its own session, its output in the supervisor log; detached.py).

The loop watches its child, the server: an exit it did not ask for restarts the server through
the one start path (a backup first, none when nothing changed; its retention waits until the
server has stayed up STABLE_S seconds, so a crash loop never rotates history out), after a backoff that doubles up to server.backoff_max and starts again from 1 s once
the server stayed up STABLE_S seconds. server.start_retries failures within server.retry_window
make the state fatal: the supervisor records why and exits. Health checks every
server.health_interval seconds replace a server that stops answering (hung or SIGSTOPped).

What the loop is doing is kept in a small state file (runstate.py). What it must do however
long a wait lasts (stop signals, systemd's watchdog, orphans as PID 1) is in signals.py.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from . import log, pidfile, process, serverdb
from .config import Settings
from .errors import FAILURE, OK, SparkqError, exit_status
from .locking import file_lock
from .logs import log_tail
from .runstate import State, exit_record, exit_text, own_state, write_state
from .signals import StopSignals, Watchdog, reap_orphans

STABLE_S = 30.0  # healthy this long: the next crash is a fresh failure, backoff from 1 s
OFFSITE_CHECK_S = 60.0  # how often the loop looks for failed off-site pushes to retry
PENDING_PUSH_EVERY_S = 15 * 60.0  # pending bundles with no failure recorded (a killed push) are retried this often


# --- the loop -------------------------------------------------------------------------------


@dataclass
class Supervisor:
    settings: Settings
    mode: str
    notifier: object
    signals: StopSignals
    state: State = field(init=False)
    failures: deque = field(default_factory=deque)
    delay: float = 1.0
    server_pid: int | None = None
    schedule: object | None = None  # schedule.BackupSchedule, once the server first got healthy
    next_offsite_check: float = 0.0  # monotonic time of the next look at failed off-site pushes
    # A restart's backup, pruned only once the server has stayed up STABLE_S: a server that gets
    # healthy and crashes again (a crash loop that still writes) must not rotate history out.
    unpruned: object | None = None
    next_prune_try: float = 0.0  # monotonic: while the lock is busy, look again a few seconds later
    next_pending_push: float = 0.0  # monotonic: pushes of pending bundles with no failure recorded

    def __post_init__(self) -> None:
        self.state = own_state(self.mode)
        self.watchdog = Watchdog(self.notifier)
        self.next_offsite_check = time.monotonic() + OFFSITE_CHECK_S  # a start has just pushed

    def save(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        write_state(self.settings.paths, self.state)

    def tick(self) -> bool:
        """Housekeeping that must happen however long a wait lasts; True when a stop was asked.
        Passed as `stop_requested` into the start path, so it runs during starts too."""
        self.watchdog.ping_if_due()
        reap_orphans(self.server_pid)
        return self.signals.stopping

    def periodic(self) -> None:
        """Work on a timer while the server runs (scheduled backups, which push off-site after
        them): called from the loop about every 0.1 s, between checks; keep each call short."""
        if self.schedule is not None:
            self.schedule.step(time.time())  # starts or reaps a backup child; never blocks
        now = time.monotonic()
        if now >= self.next_offsite_check:
            self.next_offsite_check = now + OFFSITE_CHECK_S
            self._retry_offsite()

    def _retry_offsite(self) -> None:
        """Bundles still pending off-site are pushed again: after a failure on its own backoff
        (offsite_state.py: 1 min, doubling, up to 6 h), and also when no failure was recorded
        (a push killed mid-way records none). In a detached child that tick() reaps; never raises."""
        try:
            from .backup import offsite_state

            if not offsite_state.configured(self.settings):
                return
            from .backup.catalog import scan
            from .backup.offsite import spawn_push

            state = offsite_state.load(self.settings.paths, offsite_state.repository_of(self.settings))
            pending = [e for e in scan(self.settings.paths.backup_dir)[0] if e.name not in state.pushed]
            if not pending or not state.retry_due():
                return
            if not state.failures:  # nothing recorded why: try, but not every minute if it never lands
                now = time.monotonic()
                if now < self.next_pending_push:
                    return
                self.next_pending_push = now + PENDING_PUSH_EVERY_S
            spawn_push(self.settings)
        except Exception as exc:  # noqa: BLE001 - the loop keeps the server up whatever this does
            log.get().warning("offsite_retry_failed", error=str(exc))

    def first_start(self, trigger: str, skip_backup: bool, **launch_options):
        """The first start: its failure is reported at once, never retried while a person waits."""
        from .lifecycle import launch

        launched = launch(self.settings, trigger=trigger, mode=self.mode, skip_backup=skip_backup,
                          supervisor_pid=os.getpid(), stop_requested=self.tick, **launch_options)
        self.server_pid = launched.spawned.proc.pid
        return launched

    def supervise(self, launched) -> int:
        """Keep the server up until a stop is asked or restarts give up; the exit status."""
        if launched.info is not None:
            from .schedule import BackupSchedule

            self.schedule = BackupSchedule(self.settings)
        try:
            return self._keep_up(launched)
        finally:
            if self.schedule is not None:  # first: a backup must not outlive the supervisor
                self.schedule.stop()

    def _keep_up(self, launched) -> int:
        while True:
            self.save(state="running", next_retry_at=None)
            rc, hung = self._watch(launched)
            if self.signals.stopping or launched.info is None:
                _clean_up(self.settings, launched.spawned)
                self.save(state="stopped")
                return exit_status(rc) if rc is not None else OK
            self.save(last_exit=exit_record(rc, hung=hung))
            _clean_up(self.settings, launched.spawned)
            log.get().warning("server_exited_unexpectedly", pid=launched.spawned.proc.pid,
                              status=exit_status(rc), hung=hung)
            if not self._restartable(rc, hung):
                self.save(state="stopped")
                return exit_status(rc)
            launched = self._restart(rc)
            if launched is None:  # fatal, or a stop came during the backoff
                return FAILURE if self.state.state == "fatal" else OK

    def _restartable(self, rc: int, hung: bool) -> bool:
        policy = self.settings.restart
        return policy == "always" or (policy == "on-failure" and (rc != 0 or hung))

    def _watch(self, launched) -> tuple[int | None, bool]:
        """Until the server exits (its return code) or hangs (stopped here; hung True), or a stop
        is asked (the server is stopped here)."""
        proc = launched.spawned.proc
        settings = self.settings
        if launched.info is None:  # a stop came while it started
            process.stop(proc.pid, serverdb.stop_timeout(settings), reap=proc.poll, first=self.signals.forward)
            return proc.wait(), False
        began = time.monotonic()
        interval = settings.health_interval
        next_check = began + interval
        failed = 0
        while True:
            rc = proc.poll()
            if rc is not None:
                return rc, False
            if self.tick():
                if self.signals.released:  # `stop` takes the server over from here
                    return None, False
                process.stop(proc.pid, serverdb.stop_timeout(settings), reap=proc.poll, first=self.signals.forward)
                return proc.wait(), False
            now = time.monotonic()
            if now - began >= STABLE_S:
                self.delay = 1.0
                if self.unpruned is not None and now >= self.next_prune_try:
                    self._prune_restart_backup()
            self.periodic()
            if interval and now >= next_check:
                ok, why = process.probe_health(settings.health_url_for(launched.info.url),
                                               timeout=min(interval, 5.0))
                failed = 0 if ok else failed + 1
                next_check = time.monotonic() + interval
                if failed >= settings.health_failures:
                    log.get().error("server_hung", pid=proc.pid, failed_checks=failed, last=str(why))
                    process.stop(proc.pid, serverdb.stop_timeout(settings), reap=proc.poll, resume=True)
                    return proc.wait(), True
            time.sleep(0.1)

    def _prune_restart_backup(self) -> None:
        """Retention for the last restart's backup, now that the server stayed up; under the
        shared lock, like any backup's, and tried again on the next pass while another holds it."""
        import contextlib

        from . import prestart

        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(self.settings.paths.lockfile, wait=0, shared=True))
            except SparkqError:  # busy (a restore, a stop): look again in a few seconds
                self.next_prune_try = time.monotonic() + 5.0
                return
            try:
                prestart.prune_after_healthy(self.settings, self.unpruned)
            except Exception as exc:  # noqa: BLE001 - the loop keeps the server up whatever this does
                log.get().warning("restart_prune_failed", error=str(exc))  # once: the next backup prunes
        self.unpruned = None

    def _restart(self, rc: int):
        """Back off, then start again through the one start path; None when fatal or stopped."""
        from .lifecycle import launch

        while True:
            if self._give_up():
                return None
            delay = self.delay
            self.delay = min(self.delay * 2, self.settings.backoff_max)
            self.save(state="backoff", next_retry_at=time.time() + delay)
            log.get().info("restart_backoff", delay_s=delay, restarts=self.state.restarts)
            if self._sleep(delay):
                self.save(state="stopped", next_retry_at=None)
                return None
            self.save(state="starting", next_retry_at=None)
            try:
                with self._lock():
                    launched = launch(self.settings, trigger="restart", mode=self.mode, supervisor_pid=os.getpid(),
                                      stop_requested=self.tick, prune=False)
            except _Stopped:
                self.save(state="stopped")
                return None
            except SparkqError as exc:
                log.get().error("restart_failed", error=str(exc).splitlines()[0])
                self.save(last_exit={"error": str(exc).splitlines()[0], "at": pidfile.now_iso()})
                continue
            self.server_pid = launched.spawned.proc.pid
            self.unpruned = launched.backup  # replaces one never pruned: its server did not stay up
            self.save(restarts=self.state.restarts + 1)
            log.get().info("server_restarted", pid=self.server_pid, restarts=self.state.restarts)
            return launched

    def _give_up(self) -> bool:
        now = time.monotonic()
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.settings.retry_window:
            self.failures.popleft()
        if len(self.failures) < self.settings.start_retries:
            return False
        tail = log_tail(self.settings.paths.server_log, lines=10)
        last = exit_text(self.state.last_exit) if self.state.last_exit else "unknown"
        reason = (f"{len(self.failures)} failures within {self.settings.retry_window:g}s "
                  f"(server.start_retries); last exit: {last}")
        log.get().error("supervisor_fatal", reason=reason)
        log.get().info("server_log_tail", lines=tail)  # the log file keeps it; the console gets one line
        self.save(state="fatal", reason=reason + ("\n" + "\n".join(tail) if tail else ""), next_retry_at=None)
        return True

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` unless a stop comes first (then True)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.tick():
                return True
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        return False

    def _lock(self):
        """The supervisor lock, waiting in short steps so a stop is seen meanwhile (`stop`
        holds the lock while it asks us to leave)."""
        while True:
            if self.tick():
                raise _Stopped
            try:
                return _Held(file_lock(self.settings.paths.lockfile, wait=0))
            except SparkqError:
                time.sleep(0.2)


class _Stopped(Exception):
    pass


class _Held:
    """Enter a lock context at once, so a timeout is raised before the `with` body."""

    def __init__(self, cm):
        self.cm = cm
        cm.__enter__()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def _clean_up(settings: Settings, spawned: process.Spawned) -> None:
    """After the server exited: what it started, in its group or escaped from it, goes too."""
    from .leftovers import stop_all

    proc = spawned.proc
    if proc.poll() is not None:
        if process.group_members(proc.pid):
            process.stop(proc.pid, settings.stop_timeout, reap=proc.poll)
        if stop_all(spawned.token, since=spawned.started, timeout=settings.stop_timeout):
            log.get().warning("server_leftovers_stopped", pid=proc.pid)
        pidfile.remove_pidfile(settings.paths, proc.pid)


# --- run: the loop in the foreground --------------------------------------------------------


def run(settings: Settings, *, skip_backup: bool = False) -> int:
    """`run`: the loop in the foreground (systemd, a container, a terminal)."""
    from .lifecycle import running
    from .systemd import Notifier

    notifier = Notifier.from_env()
    signals = StopSignals(notifier)
    sup = Supervisor(settings, "run", notifier, signals)
    notifier.send("STATUS=pre-start backup")

    def prepared(notices: list[str], backup_text: str | None) -> None:
        for line in [*notices, backup_text]:
            if line:
                print(line, file=sys.stderr)
        notifier.send("STATUS=starting the server")
        signals.install()

    # The lock covers backup, spawn and readiness only: once the server is healthy, `status` and
    # `stop` from another shell must work while this process keeps running.
    with file_lock(settings.paths.lockfile):
        notices: list[str] = []
        info = running(settings, notices)
        for line in notices:
            print(f"sparkq: {line}", file=sys.stderr)
        if info is not None:
            from .errors import StartFailed

            raise StartFailed(f"already running (PID {info.pid}, {info.url}); stop it first: ./sparkq.sh stop")
        sup.save()
        try:
            launched = sup.first_start("run", skip_backup, on_prepared=prepared,
                                       while_preparing=lambda: notifier.extend_timeout(120, every=20))
        except BaseException:
            signals.restore()
            sup.save(state="stopped")
            raise
    if launched.info is not None:
        info = launched.info
        if launched.backup is not None and launched.backup.pruned:
            n = len(launched.backup.pruned)
            print(f"backup: pruned {n} old backup{'s' if n != 1 else ''} (backup.keep)", file=sys.stderr)
        notifier.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving at {info.url}")
        print(f"SparkQ is running (PID {info.pid}, {info.url}); Ctrl-C stops it", file=sys.stderr)
    try:
        return sup.supervise(launched)
    finally:
        signals.restore()
        if not signals.stopping:
            notifier.send("STOPPING=1")
