"""The pre-start backup hook: called under the lock, before the spawn, with the right trigger.

These call the domain functions in-process with a stand-in backup module, so they check the hook's
order and contract without depending on how a bundle is written.
"""

from __future__ import annotations

import fcntl
import os
import sys
import types

import pytest
from structlog.testing import capture_logs

from supervisor import config, lifecycle, ports
from supervisor.errors import BackupFailed
from supervisor.locking import file_lock


class _Result:
    skipped = False
    notice = None

    def __init__(self, trigger):
        self.trigger = trigger

    def to_dict(self):
        return {"trigger": self.trigger}

    def text(self):
        return f"backup taken ({self.trigger})"


@pytest.fixture
def hook(monkeypatch, project, fake):
    """Replace supervisor.backup.create with a recorder that checks the state at call time."""
    state = types.SimpleNamespace(fail=False, calls=[])

    def create_backup(settings, *, trigger, progress=False, locked=False, **_history_options):
        paths = settings.paths
        fd = os.open(paths.lockfile, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        state.calls.append({
            "trigger": trigger, "locked": locked,
            "pidfile": paths.pidfile.exists(),
            "port_busy": ports.port_in_use(settings.host, settings.port),
            "servers": [p.pid for p in fake.running()],
        })
        if state.fail:
            raise BackupFailed("disk full while writing the bundle; free some space")
        return _Result(trigger)

    module = types.ModuleType("supervisor.backup.create")
    module.create_backup = create_backup
    module.prune_after = lambda settings, result: result
    monkeypatch.setitem(sys.modules, "supervisor.backup.create", module)
    return state


def _settings(project):
    return config.load(root=project.root)


def _adopt(project):
    project.reaper.adopt_pidfile(project.pidfile)


def _launch(settings, trigger: str = "start", **options):
    """The one start path, in-process: `start` runs it in the supervisor it leaves running."""
    with file_lock(settings.paths.lockfile):
        return lifecycle.launch(settings, trigger=trigger, mode="start", **options)


def test_backup_runs_locked_before_the_spawn_and_not_when_running(project, fake, hook):
    settings = _settings(project)
    launched = _launch(settings)
    _adopt(project)
    assert hook.calls == [{"trigger": "start", "locked": True, "pidfile": False, "port_busy": False,
                           "servers": []}]
    assert launched.backup_text == "backup taken (start)" and launched.backup.to_dict() == {"trigger": "start"}
    assert lifecycle.running(settings, []) is not None and len(hook.calls) == 1

    old = launched.info.pid
    assert lifecycle.stop(settings).pid == old
    again = _launch(settings, "restart")
    _adopt(project)
    assert again.info.pid != old
    assert hook.calls[1] == {"trigger": "restart", "locked": True, "pidfile": False, "port_busy": False,
                             "servers": []}
    assert lifecycle.stop(settings).was_running


def test_failed_backup_means_no_server(project, fake, hook):
    hook.fail = True
    with pytest.raises(BackupFailed, match="pre-start backup failed: disk full"):
        _launch(_settings(project))
    assert fake.spawn_count() == 0 and not project.pidfile.exists()


def test_skip_backup_warns_and_starts(project, fake, hook):
    with capture_logs() as events:
        launched = _launch(_settings(project), skip_backup=True)
    _adopt(project)
    assert hook.calls == []
    assert any(e["event"] == "pre_start_backup_skipped" and e["log_level"] == "warning" for e in events)
    assert launched.backup_text == "backup skipped (--skip-backup)"
    lifecycle.stop(_settings(project))


def test_first_run_sets_up_then_backs_up_then_starts(project, fake, hook):
    for leftover in project.db.parent.glob("sparkq.db*"):
        leftover.unlink()
    launched = _launch(_settings(project))
    _adopt(project)
    assert project.db.exists() and (project.root / ".env").exists()
    assert any(n.startswith("first run:") for n in launched.notices)
    assert [c["trigger"] for c in hook.calls] == ["start"]
    lifecycle.stop(_settings(project))
