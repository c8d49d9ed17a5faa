"""Scheduled backups while the server runs (`backup.interval`).

`BackupSchedule` is the whole mechanism, driven by whatever loop supervises the server (today the
foreground wait of `run`): `tick(now)` starts a `scheduled` backup in a child process when one is
due, `poll()` reaps it and records how it went, `stop()` ends it. The loop never blocks on a
backup, and a backup that fails only leaves a line in the log, a retry with growing backoff and
the error in `status`: it never touches the server.

A backup is due when the newest regular bundle of this project is older than the interval (so a
schedule missed while nothing ran is made up soon after start), counting a check that found the
state unchanged as fresh: an idle server writes nothing, and is not re-checked before the next
interval either. The child is `sparkq backup --trigger scheduled`: the shared supervisor lock, the
exact "unchanged since the newest bundle" test and retention are the ones every backup uses.

What `status` shows comes from a small JSON file beside the database, so `status` reads it
without importing anything of the backup code.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

INTERVAL_KEY = "backup.interval"
INTERVAL_ENV = "SPARKQ_BACKUP_INTERVAL"
INTERVAL_EXAMPLE = "30m, 6h, 1d, a number of seconds, or off"
DEFAULT_INTERVAL = "1d"
TRIGGER = "scheduled"
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The first retry after a failure, doubled after each further failure, never past the interval
# or an hour: a full disk is retried soon after someone frees space, without hammering it.
RETRY_FIRST = 30.0
RETRY_MAX = 3600.0
_STOP_WAIT = 10.0  # seconds a backup gets to clean up after SIGTERM before SIGKILL


# --- the setting ------------------------------------------------------------------------------


def parse_interval(value) -> float | None:
    """Seconds between scheduled backups, None when off (`0` or `off`); ValueError otherwise."""
    if isinstance(value, bool):  # YAML reads a bare `off` (or `no`) as false
        if value:
            raise ValueError(value)
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text == "off":
            return None
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
        if match is None:
            raise ValueError(value)
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        raise ValueError(value)
    if seconds == 0:
        return None
    if not math.isfinite(seconds) or seconds < 1:
        raise ValueError(value)
    return seconds


def interval(settings) -> float | None:
    """The interval in force: `SPARKQ_BACKUP_INTERVAL` wins over `backup.interval`."""
    from .errors import ConfigError

    raw = os.environ.get(INTERVAL_ENV)
    if raw is None:
        return parse_interval(settings.backup_interval)  # the config loader checked it
    try:
        return parse_interval(raw)
    except ValueError:
        raise ConfigError(f"{INTERVAL_ENV}={raw!r} is not a duration; set it to e.g. {INTERVAL_EXAMPLE}") from None


def backoff(failures: int, every: float) -> float:
    """Seconds before retrying after `failures` failures in a row."""
    return min(every, RETRY_MAX, RETRY_FIRST * 2 ** max(failures - 1, 0))


# --- the state file (what status reads) -------------------------------------------------------


def state_path(paths) -> Path:
    return paths.data_dir / f"{paths.db.stem or 'sparkq'}.schedule.json"


def read_state(paths) -> dict:
    try:
        state = json.loads(state_path(paths).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(paths, state: dict) -> None:
    from .fsutil import atomic_write_bytes

    try:
        atomic_write_bytes(state_path(paths), (json.dumps(state, indent=1) + "\n").encode(), mode=0o600)
    except OSError as exc:  # a read-only data dir: the schedule still runs, status knows less
        from . import log

        log.get().warning("schedule_state_not_written", path=str(state_path(paths)), error=str(exc))


def note_backup(paths, result, now: float | None = None) -> None:
    """Record a backup taken outside the schedule (the pre-start one): it resets the clock, so
    a start that found the state unchanged is not followed by the same check at once."""
    name, same = getattr(result, "name", None), getattr(result, "unchanged_since", None)
    if not (name or same):  # no database yet: nothing was backed up
        return
    state = read_state(paths)
    state.update(last_success=now or time.time(), last_result=_describe(name, same),
                 last_error=None, failed_at=None, failures=0, retry_at=None)
    _write_state(paths, state)


def status_fields(paths, now: float | None = None) -> dict:
    """`next_backup_in_s` (None unless a live supervisor schedules them), the last error and
    when it happened. Cheap: one small file and a signal-0 probe."""
    from .process import alive

    now = now or time.time()
    state = read_state(paths)
    fields = {"next_backup_in_s": None, "backup_running": False, "last_backup_error": None,
              "last_backup_failed_at": None}
    owner = state.get("supervisor_pid")
    if isinstance(owner, int) and alive(owner):
        fields["backup_running"] = bool(state.get("running_since"))
        next_at = state.get("next_at")
        if isinstance(next_at, (int, float)):
            fields["next_backup_in_s"] = round(max(next_at - now, 0.0), 1)
    if isinstance(state.get("last_error"), str) and isinstance(state.get("failed_at"), (int, float)):
        fields["last_backup_error"] = state["last_error"]
        fields["last_backup_failed_at"] = state["failed_at"]
    return fields


def _describe(name: str | None, unchanged_since: str | None) -> str:
    return f"unchanged since {unchanged_since}" if unchanged_since else f"wrote {name}"


# --- the scheduler ----------------------------------------------------------------------------


class BackupSchedule:
    """Scheduled backups for one project, driven by a supervising loop (see the module doc)."""

    def __init__(self, settings, now: float | None = None):
        self.paths = settings.paths
        self.every = interval(settings)
        self.child = None  # the running backup: subprocess.Popen
        self._out = None  # its stdout and stderr, as temp files
        self.state = read_state(self.paths)
        self.state.update(supervisor_pid=os.getpid(), running_since=None)
        self.due_at: float | None = None
        self._plan(now or time.time())

    def due_in(self, now: float) -> float | None:
        """Seconds until the next scheduled backup (0 while one runs); None when off."""
        if self.due_at is None:
            return None
        return 0.0 if self.child is not None else max(self.due_at - now, 0.0)

    def tick(self, now: float) -> bool:
        """Start a backup when one is due and none runs; True when one was started."""
        if self.due_at is None or self.child is not None or now < self.due_at:
            return False
        self._plan(now)  # a manual backup since the last look may have made it not due
        if now < self.due_at:
            return False
        self._launch(now)
        return True

    def poll(self, now: float | None = None) -> str | None:
        """Reap a finished backup and record it; returns what happened, None while none ended."""
        if self.child is None or self.child.poll() is None:
            return None
        now = now or time.time()
        rc = self.child.returncode
        out, err = (self._read(f) for f in self._out)
        self._release()
        self.state["running_since"] = None
        if rc == 0:
            return self._succeeded(now, out)
        return self._failed(now, rc, err)

    def step(self, now: float | None = None) -> None:
        """poll, then tick: what a loop calls every so often."""
        now = now or time.time()
        try:
            self.poll(now)
            self.tick(now)
        except Exception as exc:  # noqa: BLE001 - the schedule must never take the server down
            what = f"{type(exc).__name__}: {exc}"
            if self.child is None and self.due_at is not None:
                # e.g. no process could be started: a failure like any other, retried with backoff
                self._failed(now, -1, f"the scheduled backup could not run: {what}")
            else:
                from . import log

                log.get().error("schedule_error", error=what)

    def stop(self) -> None:
        """End a running backup (it removes its own temp bundle) and reap it; stop scheduling."""
        if self.child is not None:
            from . import log
            from .process import stop_child

            stop_child(self.child, _STOP_WAIT)

            log.get().info("scheduled_backup_stopped", pid=self.child.pid)
            self._release()
        self.due_at = None
        self.state.update(supervisor_pid=None, running_since=None, next_at=None)
        _write_state(self.paths, self.state)

    # --- inside -------------------------------------------------------------------------------

    def _plan(self, now: float) -> None:
        """Work out when the next backup is due, and publish it for status."""
        if self.every is None:
            self.due_at = None
        elif self.state.get("failures") and isinstance(self.state.get("retry_at"), (int, float)):
            self.due_at = self.state["retry_at"]
        else:
            last = max(_newest_bundle_time(self.paths), _number(self.state.get("last_success")))
            self.due_at = last + self.every if last else now
        self.state["next_at"] = self.due_at
        _write_state(self.paths, self.state)

    def _launch(self, now: float) -> None:
        import subprocess
        import sys
        import tempfile

        # -P: the project root is the working directory, and its `sparkq/` data folder must not
        # shadow the `sparkq` package (it would, as a namespace package, for `-m` from there).
        argv = [sys.executable, "-P", "-m", "supervisor"]
        if self.paths.config_file.is_file():
            argv += ["--config", str(self.paths.config_file)]
        argv += ["backup", "--trigger", TRIGGER, "--json"]
        env = {**os.environ, "SPARKQ_ROOT": str(self.paths.root)}
        self._out = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
        # Normal priority on purpose: the backup's own hashing threads lower themselves (create.py).
        self.child = subprocess.Popen(argv, cwd=self.paths.root, env=env, stdin=subprocess.DEVNULL,
                                      stdout=self._out[0], stderr=self._out[1])
        self.state.update(last_attempt=now, running_since=now)
        _write_state(self.paths, self.state)  # the backup logs its own one line

    def _succeeded(self, now: float, out: str) -> str:
        try:
            result = json.loads(out)
            what = _describe(result.get("name"), result.get("unchanged_since"))
        except (ValueError, AttributeError):
            what = "done"
        self.state.update(last_success=now, last_result=what, last_error=None, failed_at=None,
                          failures=0, retry_at=None)
        self._plan(now)
        return what

    def _failed(self, now: float, rc: int, err: str) -> str:
        lines = [line.removeprefix("sparkq: ").removeprefix("backup failed: ") for line in err.splitlines()
                 if line.strip()]
        error = lines[-1] if lines else f"the backup process exited with status {rc}"
        failures = int(_number(self.state.get("failures"))) + 1
        wait = backoff(failures, self.every or RETRY_FIRST)
        self.state.update(last_error=error, failed_at=now, failures=failures, retry_at=now + wait)
        self._plan(now)
        from . import log

        log.get().warning("scheduled_backup_failed", error=error, status=rc, failures=failures,
                          retry_in=round(wait, 1))
        return f"failed: {error}"

    def _release(self) -> None:
        for f in self._out or ():
            f.close()
        self.child, self._out = None, None

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _newest_bundle_time(paths) -> float:
    """When the newest regular backup of this project was taken (epoch seconds), 0 without one."""
    from .backup import history
    from .backup.catalog import scan

    try:
        regular = history.ours(scan(paths.backup_dir, listing_cache=paths.listing_cache)[0],
                               history.project_id(paths))
    except Exception:  # noqa: BLE001 - an unreadable backup dir: a backup is due, and says why
        return 0.0
    return regular[0].created_at.timestamp() if regular else 0.0
