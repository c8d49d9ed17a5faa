"""backup.interval and BackupSchedule's own API, driven by hand with real child backups."""

from __future__ import annotations

import json
import time

import pytest

from helpers import one_line_error, wait_until
from supervisor import config
from supervisor.schedule import RETRY_FIRST, BackupSchedule, backoff, parse_interval, read_state


@pytest.mark.parametrize("value, seconds", [
    ("30m", 1800), ("6h", 21600), ("1d", 86400), ("45s", 45), ("90", 90), (3, 3), (2.5, 2.5),
    (" 2 h ", 7200), ("1.5h", 5400), ("0", None), (0, None), ("off", None), ("OFF", None), (False, None),
])
def test_durations(value, seconds):
    assert parse_interval(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "-1", -5, 0.5, "0.2s", "", "1w", True, None, [1], "inf", "nan"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_interval(value)


def test_backoff_grows_up_to_the_interval_and_an_hour():
    assert [backoff(n, 86400) for n in range(1, 9)] == [30, 60, 120, 240, 480, 960, 1920, 3600]
    assert backoff(5, 100) == 100


def test_a_bad_interval_in_sparkq_yml_is_refused_with_the_key_and_an_example(project):
    project.write_config("backup:\n  interval: 5x\n")
    line = one_line_error(project.cli("start"), codes={2})
    assert "backup.interval" in line and "30m" in line and "'5x'" in line
    assert not project.db.exists()


@pytest.mark.parametrize("command", ["start", "run"])
def test_a_bad_interval_in_the_environment_is_refused_before_anything_is_written(project, command):
    done = project.cli(command, env={"SPARKQ_BACKUP_INTERVAL": "weekly"})
    line = one_line_error(done, codes={2})
    assert "SPARKQ_BACKUP_INTERVAL='weekly'" in line and "30m" in line
    assert not project.db.exists()


def _settings(project, extra: str):
    project.write_config(extra)
    return config.load(root=project.root)


def test_off_schedules_nothing(project, monkeypatch):
    schedule = BackupSchedule(_settings(project, "backup:\n  interval: off\n"))
    assert schedule.due_in(time.time()) is None
    assert schedule.tick(time.time() + 10**9) is False
    monkeypatch.setenv("SPARKQ_BACKUP_INTERVAL", "30m")  # the environment wins over the file
    assert BackupSchedule(config.load(root=project.root)).due_in(time.time()) == 0.0


def _finish(schedule: BackupSchedule, now: float) -> str:
    return wait_until(lambda: schedule.poll(now), timeout=60, what="the scheduled backup to end")


def test_failures_are_recorded_and_retried_with_growing_backoff_then_cleared(project):
    blocker = project.root / "not-a-dir"
    blocker.write_text("a file where the backup dir should be\n")
    settings = _settings(project, f"backup:\n  interval: 1d\n  dir: {blocker}/backups\n")
    assert project.cli("setup").returncode == 0
    schedule = BackupSchedule(settings)
    now = time.time()
    assert schedule.due_in(now) == 0.0  # no backup yet: due at once
    try:
        assert schedule.tick(now) and not schedule.tick(now)  # never two at once
        assert schedule.due_in(now) == 0.0
        assert _finish(schedule, now).startswith("failed: ")
        state = read_state(settings.paths)
        assert state["failures"] == 1 and state["retry_at"] == pytest.approx(now + RETRY_FIRST)
        assert "backups" in state["last_error"] and not state["last_error"].startswith("sparkq:")
        assert schedule.due_in(now) == pytest.approx(RETRY_FIRST)

        later = now + RETRY_FIRST
        assert schedule.tick(later)
        _finish(schedule, later)
        assert read_state(settings.paths)["retry_at"] == pytest.approx(later + 2 * RETRY_FIRST)

        blocker.unlink()  # fixed: the next retry writes the bundle and clears the error
        last = later + 2 * RETRY_FIRST
        assert schedule.tick(last)
        assert _finish(schedule, last).startswith("wrote sparkq_")
        state = read_state(settings.paths)
        assert state["failures"] == 0 and state["last_error"] is None
        assert schedule.due_in(last) == pytest.approx(86400, abs=1)
        (bundle,) = (blocker / "backups").glob("sparkq_2*")
        assert json.loads((bundle / "manifest.json").read_text())["trigger"] == "scheduled"
    finally:
        schedule.stop()
    assert read_state(settings.paths)["supervisor_pid"] is None


def test_stop_ends_a_running_backup(project):
    settings = _settings(project, "backup:\n  interval: 1h\n")
    assert project.cli("setup").returncode == 0
    schedule = BackupSchedule(settings)
    assert schedule.tick(time.time())
    child = schedule.child
    schedule.stop()
    assert child.returncode is not None and schedule.child is None
    assert schedule.due_in(time.time()) is None


def test_a_backup_that_cannot_even_start_is_a_failure_not_a_crash(project, monkeypatch, tmp_path):
    settings = _settings(project, "backup:\n  interval: 1h\n")
    assert project.cli("setup").returncode == 0
    schedule = BackupSchedule(settings)
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-such-python"))
    now = time.time()
    schedule.step(now)  # must not raise: the loop that calls it keeps the server
    state = read_state(settings.paths)
    assert state["failures"] == 1 and "could not run" in state["last_error"]
    assert schedule.child is None and schedule.due_in(now) == pytest.approx(RETRY_FIRST)
    schedule.stop()
