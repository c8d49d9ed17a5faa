"""A restore interrupted at every kind of moment says what is true and leaves nothing half-done.

- Before anything is placed (the pre-restore bundle being written): Ctrl-C and SIGTERM alike leave
  every byte, mode and link count as it was, and no temp file (through the real command).
- Right after a file's rename, before the restore noted it placed: that file is rolled back too.
- After the last file is placed: the message says the restore is complete, not "nothing changed".
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from helpers import SPARKQ_BIN, grow_db, ok, wait_until
from supervisor import config
from supervisor.backup import history, restore, staging
from supervisor.errors import Interrupted
from supervisor.fsutil import temp_of


def _state(project) -> dict:
    """Every byte, mode and link count of the live files, the temps beside them, and the bundles."""
    import hashlib

    files = [project.db, Path(f"{project.db}-wal"), project.config, project.root / ".env"]
    state = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode), p.stat().st_nlink)
             for p in files if p.exists()}
    state["temps"] = sorted(n for n in os.listdir(project.db.parent) if temp_of(n))
    state["bundles"] = sorted(os.listdir(project.backup_dir))
    return state


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("args", [["--yes"], ["--db-only", "--yes"], ["--config-only", "--yes"]],
                         ids=["full", "db-only", "config-only"])
def test_a_signal_while_the_pre_restore_bundle_is_written_changes_nothing(project, sig, args):
    ok(project.cli("setup"))
    grow_db(project.db, 48)  # big enough that the pre-restore bundle takes a while
    ok(project.cli("backup"))
    os.chmod(project.db, 0o640)  # a hard link into the pre-restore bundle makes the inode 0600
    project.config.write_text(project.config.read_text() + "# mine\n")
    before = _state(project)
    proc = project.popen(str(SPARKQ_BIN), "backup-restore", "1", *args,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def writing() -> bool:
        return any(n.startswith(".tmp-sparkq_preRestore_") for n in os.listdir(project.backup_dir))

    wait_until(writing, timeout=60, interval=0.002, what="the pre-restore bundle to be written")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sparkq: restore interrupted"), err
    assert _state(project) == before


# --- in-process: an interrupt at an exact point --------------------------------------------------


def _settings():
    return config.load(lenient=True)


@pytest.fixture
def changed(project):
    """Backup 1 of the seeded project, then every restored file changed since."""
    ok(project.cli("setup"))
    ok(project.cli("backup"))
    import sqlite3

    conn = sqlite3.connect(project.db, isolation_level=None)
    conn.execute("INSERT INTO prompts (id, command, label, template_text) VALUES ('prm_x', 'x', 'X', 'later')")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    project.config.write_text(project.config.read_text() + "# later\n")
    (project.root / ".env").write_text("LATER=1\n")
    return project


def _restore():
    return restore.restore_backup(_settings(), "1", scope="full", tables=None, confirm=lambda plan: True,
                                  asks=False)


@pytest.mark.parametrize("kind", ["db", "yml", "env"])
def test_an_interrupt_right_after_a_rename_rolls_that_file_back(changed, monkeypatch, kind):
    project = changed
    before = _state(project)
    real_place = staging.place

    def place_then_interrupt(step, staged=None):
        real_place(step, staged)
        if step.kind == kind:
            raise KeyboardInterrupt  # as if Ctrl-C came between the rename and the next line

    monkeypatch.setattr(staging, "place", place_then_interrupt)
    with pytest.raises(Interrupted, match="what was already placed is back as it was"):
        _restore()
    after = _state(project)
    pre = [n for n in after.pop("bundles") if n.startswith("sparkq_preRestore_")]
    assert len(pre) == 1  # the previous state is kept, as the message says
    before.pop("bundles")
    # Put back by copy: the same bytes and mode; the DB no longer shares its inode with the bundle.
    assert {k: v[:2] if k != "temps" else v for k, v in after.items()} == \
        {k: v[:2] if k != "temps" else v for k, v in before.items()}


def test_an_interrupt_after_the_last_file_is_placed_says_the_restore_is_complete(changed, monkeypatch):
    project = changed

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(history, "record_restore", interrupted)
    with pytest.raises(Interrupted, match="after the restore was complete.*sparkq_preRestore_.*undo: ") as err:
        _restore()
    assert "nothing was changed" not in str(err.value)
    assert (project.root / ".env").read_text() != "LATER=1\n"
    assert "# later" not in project.config.read_text()


def test_an_interrupt_before_a_step_leaves_its_target_alone(changed, monkeypatch):
    """A .env that is a FIFO is not in the pre-restore bundle (it cannot be copied): an interrupt
    before its step must not roll back, that is delete, a file the restore never touched."""
    project = changed
    env = project.root / ".env"
    env.unlink()
    os.mkfifo(env)
    real_place = staging.place

    def interrupt_before_env(step, staged=None):
        if step.kind == "env":
            raise KeyboardInterrupt
        real_place(step, staged)

    monkeypatch.setattr(staging, "place", interrupt_before_env)
    with pytest.raises(Interrupted):
        _restore()
    assert stat.S_ISFIFO(os.lstat(env).st_mode)
    assert "# later" in project.config.read_text()  # placed, then rolled back


def test_a_roll_back_is_not_cut_short_by_another_signal():
    from supervisor.interrupts import uninterrupted

    reached = False
    with uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
