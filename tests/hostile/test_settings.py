"""Hostile settings: SPARKQ_BACKUP_KEEP values, broken sparkq.yml, a .env that is not UTF-8.

Bad retention and a broken config stop `backup` and `start` with one line before anything is
written or deleted, and no server runs; the recovery commands (backup-list) still work, with a
notice, so a broken config can be restored. A .env with bytes that are not UTF-8 does not stop
the server, and its bytes are never printed or logged.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from helpers import T0, assert_no_server, live_state, make_bundle, one_line_error, stamp
from supervisor import config
from supervisor.initialize import run_setup


@pytest.fixture
def populated(project, seed_db):
    """A set-up project with three backups (more than some bad KEEP values would keep)."""
    run_setup(config.load())
    (project.root / ".env").write_text("SPARKQ_HOSTILE_SECRET=settings\n")
    for hours in range(3):
        make_bundle(project.backup_dir, f"sparkq_{stamp(T0 - timedelta(hours=hours))}", seed_db)
    (project.backup_dir / ".tmp-sparkq_20200101_000000-999999999").mkdir()  # a dead writer's leftover
    return project


KEEP = ["0", "-3", "abc", "1e9", "", " ", "7.0", "+5"]


@pytest.mark.parametrize("command", ["backup", "start"])
@pytest.mark.parametrize("keep", KEEP, ids=repr)
def test_bad_backup_keep(populated, command, keep):
    before = live_state(populated)
    proc = populated.cli(command, env={"SPARKQ_BACKUP_KEEP": keep})
    line = one_line_error(proc, codes={2})
    assert "SPARKQ_BACKUP_KEEP" in line and "whole number" in line, line
    if command == "start":
        assert "server not started" in line and "backup failed" not in line  # the setting, not the backup
    assert live_state(populated) == before, "written or deleted despite a bad SPARKQ_BACKUP_KEEP"
    assert_no_server(populated)


def test_bad_backup_keep_on_a_first_start_writes_nothing(project):
    before = sorted(p.relative_to(project.root).as_posix() for p in project.root.rglob("*"))
    proc = project.cli("start", env={"SPARKQ_BACKUP_KEEP": "abc"})
    one_line_error(proc, codes={2})
    assert_no_server(project)
    after = sorted(p.relative_to(project.root).as_posix() for p in project.root.rglob("*")
                   if "sparkq/logs" not in p.as_posix() and not p.name.endswith(".lock"))
    assert [p for p in after if p not in ("sparkq", "sparkq/data", "sparkq/logs")] == before


BROKEN_YML = {
    "tab": ("server:\n\tport: 5005\n", "invalid YAML"),
    "list-for-map": ("server:\n  - host\n  - port\n", "'server' must be a mapping"),
    "top-level-list": ("- server\n- port\n", "top level must be a mapping"),
    "port-70000": ("server:\n  port: 70000\n", "'server.port' must be a port number from 1 to 65535"),
    "port-string": ("server:\n  port: eighty\n", "'server.port' must be a port number"),
    "keep-zero": ("backup:\n  keep: 0\n", "'backup.keep' must be a whole number >= 1"),
    "not-utf8": (b"server:\n  host: caf\xe9\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(BROKEN_YML))
def test_broken_sparkq_yml(populated, case):
    text, expected = BROKEN_YML[case]
    if isinstance(text, bytes):
        populated.config.write_bytes(text)
    else:
        populated.config.write_text(text)
    before = live_state(populated)

    for command in ("start", "backup"):
        proc = populated.cli(command)
        line = one_line_error(proc, codes={2})
        assert "sparkq.yml" in line and expected in line, line
        assert_no_server(populated)
    assert live_state(populated) == before

    listed = populated.cli("backup-list", "--json")  # recovery commands load leniently
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["backups"]) == 3
    notices = [ln for ln in listed.stderr.splitlines() if ln.strip()]
    assert len(notices) == 1 and notices[0].startswith("sparkq: notice:")
    assert re.search(r"using (the )?default", notices[0]), notices[0]  # a bad value: only its key falls back
    assert "Traceback" not in listed.stderr
    assert live_state(populated) == before


BAD_ENV = (b"GOOD_KEY=fine\n"
           b"BAD_VALUE=zz-marker-one-\xff\xfe-caf\xe9\n"
           b"\xff\xfeBAD_KEY=zz-marker-two\n"
           b"NO_EQUALS_zz-marker-three\n")


def test_env_file_not_utf8(populated):
    env = populated.root / ".env"
    env.write_bytes(BAD_ENV)
    outputs = []
    for args in (("start",), ("status",), ("status", "--json"), ("backup",), ("stop",)):
        proc = populated.cli(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        outputs.append(proc.stdout + proc.stderr)
    text = "\n".join(outputs)
    assert "Traceback" not in text
    assert "env_file_lines_skipped" in text and "[2, 3, 4]" in text  # which lines, not what is in them
    logs = "".join(p.read_text(errors="replace") for p in (populated.root / "sparkq" / "logs").glob("*.log"))
    for marker in ("zz-marker", "caf\u00e9", "\ufffd"):
        assert marker not in text and marker not in logs, marker
    assert env.read_bytes() == BAD_ENV
