"""supervisor/locking.py: file_lock on real files, held by real processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from helpers import wait_until
from supervisor import locking
from supervisor.errors import SparkqError

_HOLDER = """
import sys
from pathlib import Path
from supervisor.locking import file_lock
with file_lock(Path(sys.argv[1]), shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def hold(reaper):
    holders = []

    def start(lock, mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        reaper.add(proc.pid)
        holders.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in holders:
        proc.stdin.close()
        proc.wait(10)


def test_the_lock_file_is_private_and_names_an_exclusive_holder(tmp_path):
    lock = tmp_path / "deep" / "x.lock"
    with locking.file_lock(lock):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        assert lock.read_text().split()[0] == str(os.getpid())
    with locking.file_lock(lock):  # released on exit: taken again at once
        pass


def test_shared_holders_coexist_and_keep_an_exclusive_one_out(tmp_path, hold):
    lock = tmp_path / "x.lock"
    first = hold(lock, "shared")
    with locking.file_lock(lock, shared=True, wait=0):
        pass
    with pytest.raises(SparkqError, match=f"PID {first.pid} .*has held .* for over 0s"):
        with locking.file_lock(lock, wait=0.2):
            pass


def test_an_exclusive_holder_keeps_a_shared_one_out_until_it_lets_go(tmp_path, hold, capsys):
    lock = tmp_path / "x.lock"
    holder = hold(lock, "exclusive")
    with pytest.raises(SparkqError):
        with locking.file_lock(lock, shared=True, wait=0.2):
            pass
    assert f"waiting for PID {holder.pid}" in capsys.readouterr().err
    holder.stdin.close()
    wait_until(lambda: holder.poll() is not None, what="the holder to exit")
    with locking.file_lock(lock, shared=True, wait=0):
        pass
