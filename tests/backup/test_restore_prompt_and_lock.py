"""A restore waiting at its prompt holds no lock; it re-checks after the answer; every lock wait
names the holder's PID and command at once (issue 11 item 10)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from helpers import SPARKQ_BIN, live_state, ok, wait_until
from supervisor import locking


class Prompted:
    """`sparkq backup-restore ...` on a pseudo-terminal, so that it really asks."""

    def __init__(self, project, *args: str) -> None:
        self.master, slave = os.openpty()
        self.proc = project.popen(str(SPARKQ_BIN), "backup-restore", *args, stdin=slave, stdout=slave,
                                  stderr=subprocess.PIPE, text=True)
        os.close(slave)
        self.out = ""

    def read_until(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in {self.out!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.out += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the other side closed
                    break
        return self.out

    def answer(self, text: str) -> tuple[int, str]:
        os.write(self.master, text.encode() + b"\n")
        code = self.proc.wait(60)
        try:
            self.read_until("\x00", timeout=0.5)
        except AssertionError:
            pass
        err = self.proc.stderr.read()
        os.close(self.master)
        return code, err


def test_other_commands_run_while_a_restore_waits_at_its_prompt(ready):
    project = ready
    waiting = Prompted(project, "1", "--db-only")
    waiting.read_until("Continue?")

    started = time.monotonic()
    backup = ok(project.cli("backup", timeout=30))
    ok(project.cli("stop", timeout=30))
    assert time.monotonic() - started < 20
    assert "waiting for" not in backup.stderr

    code, err = waiting.answer("y")
    assert code == 0, err
    assert "Restore complete" in waiting.out


def test_a_change_while_at_the_prompt_stops_the_restore(ready):
    project = ready
    waiting = Prompted(project, "1")
    waiting.read_until("Continue?")
    project.config.write_text(project.config.read_text() + "# edited meanwhile\n")
    before = live_state(project)

    code, err = waiting.answer("y")
    assert code == 1
    assert "changed while the plan was shown" in err and "nothing was changed" in err
    assert live_state(project) == before


def test_a_server_started_while_at_the_prompt_stops_the_restore(ready):
    project = ready
    waiting = Prompted(project, "1", "--db-only")
    waiting.read_until("Continue?")
    ok(project.cli("start", timeout=60))
    try:
        inode = project.db.stat().st_ino
        code, err = waiting.answer("y")
        assert code == 6 and "the server is running" in err
        assert not list(project.backup_dir.glob("sparkq_preRestore_*"))
        assert project.db.stat().st_ino == inode  # not replaced under the running server
    finally:
        ok(project.cli("stop", timeout=60))


def test_ctrl_c_at_the_prompt_is_a_cancel(ready):
    project = ready
    waiting = Prompted(project, "1")
    waiting.read_until("Continue?")
    before = live_state(project)
    waiting.proc.send_signal(signal.SIGINT)
    code, err = waiting.answer("")
    assert code == 1
    assert [ln for ln in err.splitlines() if ln.strip()] == ["sparkq: restore cancelled; nothing changed"]
    assert live_state(project) == before


_HOLDER = """
import sys
from pathlib import Path
from supervisor.locking import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def _hold_lock(project, reaper) -> subprocess.Popen:
    lock = project.root / "sparkq" / "data" / "sparkq.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    reaper.add(holder.pid)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_wait_names_the_holder_at_once(ready, reaper):
    project = ready
    holder = _hold_lock(project, reaper)
    waiter = project.popen(str(SPARKQ_BIN), "backup", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    first = waiter.stderr.readline()
    assert time.monotonic() - started < 10
    assert f"waiting for PID {holder.pid} (" in first and "python" in first, first
    holder.stdin.close()
    holder.wait(10)
    assert waiter.wait(60) == 0, waiter.stderr.read()


def test_a_holder_that_died_does_not_count(ready, reaper):
    project = ready
    holder = _hold_lock(project, reaper)
    holder.kill()
    holder.wait(10)
    lock = project.root / "sparkq" / "data" / "sparkq.lock"
    assert str(holder.pid) in lock.read_text()  # its note is still there; the flock is not
    out = ok(project.cli("backup", timeout=30))
    assert "waiting" not in out.stderr


def test_without_proc_locks_the_holder_is_read_from_the_lock_file(ready, reaper, monkeypatch, tmp_path):
    project = ready
    holder = _hold_lock(project, reaper)
    lock = project.root / "sparkq" / "data" / "sparkq.lock"
    monkeypatch.setattr(locking, "_PROC_LOCKS", tmp_path / "no-proc-locks")
    fd = os.open(lock, os.O_RDONLY)
    try:
        assert locking.describe_holders(fd).startswith(f"PID {holder.pid} (")
        holder.kill()
        holder.wait(10)
        assert "could not be found" in locking.describe_holders(fd)  # a dead PID is not named
    finally:
        os.close(fd)


def test_a_lock_timeout_names_the_holder(ready, reaper):
    project = ready
    holder = _hold_lock(project, reaper)
    lock = project.root / "sparkq" / "data" / "sparkq.lock"
    with pytest.raises(locking.SparkqError, match=f"PID {holder.pid} \\(.*\\) has held .* for over 0s"):
        with locking.file_lock(lock, wait=0.3):
            pass
    holder.stdin.close()
    wait_until(lambda: holder.poll() is not None, what="the holder to exit")
