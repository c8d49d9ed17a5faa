"""supervisor/fsutil.py on real files: atomic placement, the one temp-name scheme and its clean-up,
no-replace publishing, hashing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from supervisor import fsutil


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_temp_names_read_back_in_both_forms():
    assert fsutil.temp_entry("sparkq.db", 42) == ".tmp-sparkq.db-42"
    assert fsutil.temp_of(".tmp-sparkq.db-42") == ("sparkq.db", 42)
    assert fsutil.temp_of(".tmp-sparkq_20260101_000000_1-7") == ("sparkq_20260101_000000_1", 7)
    assert fsutil.temp_of(".sparkq.db.tmp-42") == ("sparkq.db", 42)  # the older form
    assert fsutil.temp_of(".tmp-.env-3") == (".env", 3)
    for other in ("sparkq.db", ".tmp-x", ".tmp-x-", ".retention.lock", "sparkq_20260101_000000"):
        assert fsutil.temp_of(other) is None, other


def test_atomic_copy_replaces_whole_and_leaves_no_temp(tmp_path):
    src, target = tmp_path / "src", tmp_path / "target"
    src.write_bytes(b"new" * 1000)
    target.write_bytes(b"old")
    fsutil.atomic_copy(src, target, mode=0o640)
    assert target.read_bytes() == b"new" * 1000
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "target"]


def test_stale_temps_of_dead_writers_go_in_either_form_live_ones_stay(tmp_path):
    target = tmp_path / "sparkq.db"
    target.write_bytes(b"live")
    dead = _dead_pid()
    new_form = tmp_path / fsutil.temp_entry("sparkq.db", dead)
    old_form = tmp_path / f".sparkq.db.tmp-{dead}"
    running = tmp_path / fsutil.temp_entry("sparkq.db", os.getppid())  # a writer that still runs
    other = tmp_path / fsutil.temp_entry("sparkq.yml", dead)  # another target's: not ours to judge
    new_form.write_bytes(b"half")
    old_form.mkdir()  # a fold's work folder
    (old_form / "sparkq.db").write_bytes(b"half")
    running.write_bytes(b"busy")
    other.write_bytes(b"half")
    assert sorted(fsutil.remove_stale_temps(target)) == sorted([new_form.name, old_form.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["sparkq.db", running.name, other.name])


def test_an_atomic_write_removes_its_targets_dead_temps(tmp_path):
    target = tmp_path / "sparkq.yml"
    dead = _dead_pid()
    for stale in (fsutil.temp_entry("sparkq.yml", dead), f".sparkq.yml.tmp-{dead}"):
        (tmp_path / stale).write_bytes(b"half")
    fsutil.atomic_write_bytes(target, b"server: {}\n", mode=0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparkq.yml"]


def test_every_dead_temp_in_a_folder_goes_except_the_spared(tmp_path):
    dead = _dead_pid()
    bundle = tmp_path / fsutil.temp_entry("sparkq_20260101_000000", dead)
    bundle.mkdir()
    (tmp_path / fsutil.temp_entry("x.json", dead)).write_bytes(b"half")
    fetch = tmp_path / fsutil.temp_entry("offsite-fetch-otherhost", dead)  # another host's PID
    fetch.mkdir()
    removed = fsutil.remove_stale_temps_in(tmp_path, spare=lambda name: name.startswith("offsite-fetch-"))
    assert sorted(removed) == sorted([bundle.name, fsutil.temp_entry("x.json", dead)])
    assert [p.name for p in tmp_path.iterdir()] == [fetch.name]


def test_publish_noreplace_takes_the_first_free_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "theirs").write_text("theirs")
    (tmp_path / "b").mkdir()  # even an empty folder is never replaced
    tmp = tmp_path / fsutil.temp_entry("a")
    tmp.mkdir()
    (tmp / "mine").write_text("mine")
    final = fsutil.publish_noreplace(tmp, tmp_path, iter(["a", "b", "c", "d"]))
    assert final == tmp_path / "c" and (final / "mine").exists() and not tmp.exists()
    assert (tmp_path / "a" / "theirs").read_text() == "theirs" and not any((tmp_path / "b").iterdir())
    other = tmp_path / fsutil.temp_entry("x")
    other.mkdir()
    with pytest.raises(FileExistsError):
        fsutil.publish_noreplace(other, tmp_path, iter(["a", "b"]))
    assert other.exists()


def test_sha256_file_hashes_and_refuses_what_is_not_a_file(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert fsutil.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    os.mkfifo(tmp_path / "fifo")  # would block a plain open-and-read
    (tmp_path / "link").symlink_to(tmp_path / "f")
    for name in ("fifo", "link"):
        with pytest.raises(OSError):
            fsutil.sha256_file(tmp_path / name)
