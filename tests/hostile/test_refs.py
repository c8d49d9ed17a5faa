"""Hostile backup references for every command that takes one: a clear one-line error with
exit 2 (malformed) or 4 (no such backup), never a traceback, never a change to live data."""

from __future__ import annotations

from datetime import timedelta

import pytest

from helpers import T0, live_state, make_bundle, one_line_error, stamp
from supervisor import config
from supervisor.setup import run_setup

NEWEST = f"sparkq_{stamp(T0)}"

# ref -> expected exit code: 2 = not a valid reference at all, 4 = valid but no such backup
REFS = {
    "0": 2,
    "-1": 2,
    "999": 4,
    "abc": 4,
    "1.5": 2,
    "": 2,
    "../x": 2,
    "/etc/passwd": 2,
    f"{NEWEST}/sparkq.db": 2,  # a real bundle name with a slash
    "a/b": 2,
    f"../{NEWEST}": 2,
    "1e3": 2,
    " 1 ": None,  # surrounding blanks: resolves to backup 1 like "1" does (read-only commands)
}
COMMANDS = {
    "backup-show": lambda ref: ("backup-show", ref),
    "backup-verify": lambda ref: ("backup-verify", ref),
    "backup-restore": lambda ref: ("backup-restore", ref, "--yes"),
    "backup-export": lambda ref: ("backup-export", "prompts", ref),
}


@pytest.fixture
def populated(project, seed_db):
    run_setup(config.load())
    (project.root / ".env").write_text("SPARKQ_HOSTILE_SECRET=refs\n")
    make_bundle(project.backup_dir, f"sparkq_{stamp(T0 - timedelta(hours=1))}", seed_db)
    make_bundle(project.backup_dir, NEWEST, seed_db)
    return project


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("ref", [r for r, code in REFS.items() if code is not None],
                         ids=lambda r: repr(r))
def test_hostile_ref(populated, command, ref):
    before = live_state(populated)
    proc = populated.cli(*COMMANDS[command](ref))
    line = one_line_error(proc, codes={REFS[ref]})
    assert "backup" in line and ("backup-list" in line or "backup name" in line or "start at 1" in line), line
    assert live_state(populated) == before


@pytest.mark.parametrize("command", ["backup-show", "backup-verify", "backup-export"])
def test_blank_padded_number_reads_like_the_number(populated, command):
    before = live_state(populated)
    padded = populated.cli(*COMMANDS[command](" 1 "))
    plain = populated.cli(*COMMANDS[command]("1"))
    assert padded.returncode == plain.returncode == 0, padded.stderr
    assert padded.stdout == plain.stdout
    assert live_state(populated) == before
