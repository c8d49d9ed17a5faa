"""`status`: whether the server runs, its health, the database and the newest backup.

It reports and changes nothing (except dropping a stale pidfile), never takes the supervisor
lock, and opens no database, so it stays quick.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from . import log, pidfile, process
from .config import Settings
from .fmt import human_size
from .paths import Paths
from .ports import port_in_use


@dataclass
class StatusResult:
    running: bool  # the server runs (state running, starting with a server, or unsupervised)
    state: str = "stopped"  # running, starting, backoff, fatal, stopped, unsupervised
    pid: int | None = None
    supervisor_pid: int | None = None
    restarts: int = 0  # since this `start`
    last_exit: dict | None = None  # {"code": n} or {"signal": "SIGKILL"}, with "at"
    next_retry_in_s: float | None = None  # in backoff
    reason: str | None = None  # fatal: why the supervisor gave up
    started_at: str | None = None
    uptime_s: float | None = None
    url: str | None = None
    health: dict = field(default_factory=lambda: {"ok": False, "error": "the server is not running"})
    db_path: str = ""
    db_size: int | None = None
    newest_backup: str | None = None
    newest_backup_age_s: float | None = None
    next_backup_in_s: float | None = None  # None: no supervisor schedules backups now
    backup_running: bool = False
    last_backup_error: str | None = None
    last_backup_failed_at: float | None = None  # epoch seconds
    notice: str | None = None
    warnings: list[str] = field(default_factory=list)
    offsite: dict | None = None  # backup/offsite_state.summary: pending bundles, last failure

    def to_dict(self) -> dict:
        found = asdict(self)
        if self.offsite is None:
            del found["offsite"]  # the key is there when off-site copies are configured
        return found

    def _headline(self) -> str:
        """One line, supervisorctl-like: the state first, then what identifies it."""
        parts = []
        if self.pid is not None:
            parts.append(f"PID {self.pid}, up {_duration(self.uptime_s)}")
        if self.supervisor_pid is not None:
            parts.append(f"supervisor PID {self.supervisor_pid}")
        if self.restarts:
            parts.append(f"{self.restarts} restart{'s' if self.restarts != 1 else ''}")
        if self.next_retry_in_s is not None:
            parts.append(f"next start in {self.next_retry_in_s:.0f}s")
        if self.state == "unsupervised":
            parts.append("its supervisor is gone: ./sparkq.sh start replaces it with a supervised one")
        if self.state == "fatal":
            parts.append("restarts gave up; ./sparkq.sh start begins afresh")
        where = f" at {self.url}" if self.running and self.url else ""
        return self.state + (f" ({'; '.join(parts)})" if parts else "") + where

    def text(self) -> str:
        lines = [self.notice] if self.notice else []
        lines += self.warnings
        lines.append(self._headline())
        if self.running:
            lines.append(f"  health:   {_health_text(self.health)}")
        if self.last_exit:
            from .runstate import exit_text

            lines.append(f"  last exit: {exit_text(self.last_exit)}")
        if self.reason:
            lines.append("  gave up: " + self.reason.replace("\n", "\n    "))
        size = (f" ({human_size(self.db_size)})" if self.db_size is not None
                else " (missing)" if self.running or self.newest_backup else " (does not exist yet)")
        lines.append(f"  database: {self.db_path}{size}")
        if self.newest_backup:
            lines.append(f"  newest backup: {self.newest_backup} ({_duration(self.newest_backup_age_s)} ago)")
        else:
            lines.append("  newest backup: none")
        if self.backup_running:
            lines.append("  next backup: running now (scheduled)")
        elif self.next_backup_in_s is not None:
            lines.append(f"  next backup: in {_duration(self.next_backup_in_s)} (scheduled)")
        if self.last_backup_error:
            ago = _duration(max(time.time() - (self.last_backup_failed_at or time.time()), 0.0))
            lines.append(f"  last backup failed {ago} ago: {self.last_backup_error}")
        if self.offsite:
            from .backup.offsite_state import summary_text

            lines.append("  " + summary_text(self.offsite, _duration))
        return "\n".join(lines)




def status(settings: Settings) -> StatusResult:
    """Report, never change anything (except dropping a stale pidfile); fast: no DB opened."""
    paths = settings.paths
    info, stale = pidfile.identify(paths)
    result = StatusResult(running=info is not None, db_path=str(paths.db), notice=stale)
    _supervision(paths, info, result)
    try:
        result.db_size = paths.db.stat().st_size
    except OSError:
        pass
    if info is not None:
        from .serverdb import trouble

        said = trouble(settings)
        if said:
            result.warnings.append(said)
        result.pid, result.url, result.started_at = info.pid, info.url, info.started_at
        result.uptime_s = round(max(0.0, time.time() - info.create_time), 1)
        url = settings.health_url_for(info.url)
        ok, body = process.probe_health(url, timeout=1.0)
        # Always an object, so scripts can read `health.ok` without checking its type first.
        result.health = ({**body, "ok": True} if ok
                         else {"ok": False, "error": f"no healthy answer from {url}: {body}"})
    exposed = settings.exposure(info.host if info is not None else None)
    if exposed:
        result.warnings.append(exposed)
    if info is None and port_in_use(settings.host, settings.port):
        # Not ours (or no longer recorded): say so rather than a bare "stopped" while it serves.
        from .ports import holder

        held_by = holder(settings)
        todo = "; `start` will refuse until it is stopped (find it with: ss -ltnp)"
        result.warnings.append(f"port {settings.port} is in use by {held_by}" + (todo if held_by == "another program" else ""))
    result.newest_backup, result.newest_backup_age_s = _newest_backup(paths)
    from .schedule import status_fields

    for key, value in status_fields(paths).items():
        setattr(result, key, value)
    result.offsite = _offsite_summary(settings)
    return result


def _offsite_summary(settings: Settings) -> dict | None:
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


def _supervision(paths: Paths, info, result: StatusResult) -> None:
    """The state, from the supervisor's state file and whether it and the server still run."""
    from .runstate import live_supervisor, read_state

    live = live_supervisor(paths)
    state = live or read_state(paths)
    if state is not None:
        result.restarts, result.last_exit = state.restarts, state.last_exit
    if live is not None:
        result.supervisor_pid = live.supervisor_pid
        result.state = live.state
        if live.state in ("running", "stopped") and info is None:
            result.state = "starting"  # between an exit it noticed and the backoff it records
        if live.state == "backoff" and live.next_retry_at is not None:
            result.next_retry_in_s = round(max(0.0, live.next_retry_at - time.time()), 1)
    elif info is not None:
        result.state = "unsupervised"
    elif state is not None and state.state == "fatal":
        result.state, result.reason = "fatal", state.reason


def _newest_backup(paths: Paths) -> tuple[str | None, float | None]:
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
