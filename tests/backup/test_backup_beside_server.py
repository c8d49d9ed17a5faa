"""How a backup shares the CPU: beside a running server the integrity check and the hash take
turns at a lower priority, and all of the backup keeps to one CPU; with no server they run at
once at full priority on every CPU; the snapshot never yields. (On two cores, two busy threads
tripled the p99 of the server's requests where one barely moved it, and one kept on one CPU
moved it less again: docs/PERFORMANCE.md.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from helpers import wait_until
from supervisor import config
from supervisor.backup import create, snapshot
from supervisor.errors import BackupFailed
from supervisor.initialize import run_setup

OVERLAP_WAIT_S = 1.0  # how long each job waits to see the other one running (ample under load)


@pytest.fixture
def settings(project):
    s = config.load()
    run_setup(s)
    return s


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class Watch:
    """Wraps the check and the hash: records each one's priority and how many ran at once."""

    def __init__(self, monkeypatch) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.nice: dict[str, int] = {}
        for name, owner, attr in (("check", snapshot, "integrity"), ("sha", create, "sha256_file")):
            monkeypatch.setattr(owner, attr, self._wrap(name, getattr(owner, attr)))

    def _wrap(self, name, real):
        def job(path):
            with self.lock:
                self.running += 1
                self.nice[name] = _nice()
            deadline = time.monotonic() + OVERLAP_WAIT_S
            while time.monotonic() < deadline:  # long enough for the other to start, if it may
                with self.lock:
                    self.most = max(self.most, self.running)
                    if self.running > 1:
                        break
                time.sleep(0.01)
            try:
                return real(path)
            finally:
                with self.lock:
                    self.running -= 1
        return job


def test_beside_a_server_the_check_and_the_hash_take_turns_at_a_lower_priority(settings, monkeypatch):
    watch = Watch(monkeypatch)
    result = create.create_backup(settings, trigger="manual", beside_server=True)
    assert result.integrity_check == "ok"
    assert watch.most == 1
    assert set(watch.nice) == {"check", "sha"}
    assert all(n > _nice() for n in watch.nice.values()), watch.nice


def test_with_no_server_they_run_at_once_at_full_priority(settings, monkeypatch):
    watch = Watch(monkeypatch)
    result = create.create_backup(settings, trigger="start", locked=True)
    assert result.integrity_check == "ok"
    assert watch.most == 2
    assert watch.nice == {"check": _nice(), "sha": _nice()}


def test_the_snapshot_keeps_its_priority_with_a_progress_line(settings, monkeypatch):
    seen: list[int] = []
    real = snapshot._copy_db

    def copy(*args):
        seen.append(_nice())
        return real(*args)

    monkeypatch.setattr(snapshot, "_copy_db", copy)
    create.create_backup(settings, trigger="manual", progress=True, beside_server=True)
    assert seen == [_nice()]


def _record_cpus(monkeypatch) -> dict[str, set[int]]:
    """The CPUs the snapshot, the integrity check and the hash each ran on (their own threads)."""
    seen: dict[str, set[int]] = {}
    for name, owner, attr in (("snapshot", snapshot, "_copy_db"), ("check", snapshot, "integrity"),
                              ("sha", create, "sha256_file")):
        def job(*args, _name=name, _real=getattr(owner, attr)):
            seen[_name] = os.sched_getaffinity(0)
            return _real(*args)
        monkeypatch.setattr(owner, attr, job)
    return seen


two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to choose from")


@two_cpus
def test_beside_a_server_the_backup_keeps_to_one_cpu_and_gives_the_others_back(settings, monkeypatch):
    ours = os.sched_getaffinity(0)
    seen = _record_cpus(monkeypatch)
    create.create_backup(settings, trigger="manual", progress=True, beside_server=True)
    assert set(seen) == {"snapshot", "check", "sha"}
    assert all(len(cpus) == 1 and cpus <= ours for cpus in seen.values()), seen
    assert len({min(cpus) for cpus in seen.values()}) == 1, seen  # the same one for all
    assert os.sched_getaffinity(0) == ours


@two_cpus
def test_with_no_server_the_backup_uses_every_cpu(settings, monkeypatch):
    ours = os.sched_getaffinity(0)
    seen = _record_cpus(monkeypatch)
    create.create_backup(settings, trigger="start", locked=True)
    assert seen == {"snapshot": ours, "check": ours, "sha": ours}


@two_cpus
def test_a_failed_backup_beside_a_server_gives_the_cpus_back(settings, monkeypatch):
    ours = os.sched_getaffinity(0)

    def fail(*_):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(snapshot, "_copy_db", fail)
    with pytest.raises(BackupFailed, match="Input/output error"):
        create.create_backup(settings, trigger="manual", beside_server=True)
    assert os.sched_getaffinity(0) == ours


@pytest.mark.parametrize("server", [True, False])
def test_a_manual_backup_asks_the_pidfile_whether_a_server_runs(settings, monkeypatch, reaper, server):
    asked: list[bool] = []
    real = create.create_backup

    def spy(*args, beside_server=False, **kw):
        asked.append(beside_server)
        return real(*args, beside_server=beside_server, **kw)

    monkeypatch.setattr(create, "create_backup", spy)
    if server:  # the pidfile names a live process; only its PID is read
        stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        reaper.add(stand_in.pid)
        settings.paths.pidfile.parent.mkdir(parents=True, exist_ok=True)
        settings.paths.pidfile.write_text('{"pid": %d}\n' % stand_in.pid)
    from supervisor.cli_backup import backup

    backup(as_json=True, trigger="manual")
    assert asked == [server]


def test_the_snapshot_is_synced_in_steps_while_it_grows_and_whole_before_the_copy_returns(tmp_path, monkeypatch):
    """So that an fsync of the server's (a checkpoint, a WAL restart) never waits behind the whole
    snapshot: what is not yet on the disk stays under about one step at every moment."""
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd):
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(snapshot.os, "fdatasync", fdatasync)
    target = tmp_path / "growing.db"
    step = 1 << 20
    with snapshot._trickle_flush(target, step=step):
        with open(target, "wb") as fh:
            for n in range(1, 5):
                fh.write(b"x" * step)
                fh.flush()
                wait_until(lambda n=n: synced and synced[-1] >= n * step, timeout=10, what=f"{n} MB synced")
            fh.write(b"y" * (step // 2))  # less than a step: only the sync at the end covers it
    assert synced[-1] == 4 * step + step // 2


def test_a_failed_copy_is_not_synced_on(tmp_path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(snapshot.os, "fdatasync", lambda fd: synced.append(fd))
    target = tmp_path / "failed.db"
    with pytest.raises(RuntimeError):
        with snapshot._trickle_flush(target, step=1 << 20):
            target.write_bytes(b"x" * (1 << 19))  # less than a step: only the sync at the end would run
            raise RuntimeError("the copy failed")
    assert synced == []
