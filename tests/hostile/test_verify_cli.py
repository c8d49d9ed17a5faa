"""`sparkq backup-verify [N|NAME|--all] [--json]` through the CLI: one result line per backup, a
summary line "N checked, M failed", exit 0 when all pass and 5 when any fails."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from helpers import T0, live_state, make_bundle, one_line_error, stamp

OLD, NEW, PRE = (f"sparkq_{stamp(T0 - timedelta(hours=1))}", f"sparkq_{stamp(T0)}",
                 f"sparkq_preRestore_{stamp(T0)}")


@pytest.fixture
def bundles(project, seed_db):
    for name in (OLD, NEW, PRE):
        make_bundle(project.backup_dir, name, seed_db)
    return project


def _flip(path, offset: int = 4096, count: int = 64) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def test_nothing_to_verify(project):
    for args in ((), ("--all",)):
        proc = project.cli("backup-verify", *args)
        assert proc.returncode == 0 and proc.stdout.strip() == "No backups found", proc.stdout + proc.stderr


@pytest.mark.parametrize("args, checked", [((), [NEW]), (("1",), [NEW]), (("2",), [OLD]), ((OLD,), [OLD]),
                                           ((PRE,), [PRE]), (("--all",), [NEW, OLD, PRE])])
def test_all_good(bundles, args, checked):
    proc = bundles.cli("backup-verify", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[:-1] == [f"ok  {name}" for name in checked]
    assert lines[-1] == f"{len(checked)} checked, 0 failed"
    as_json = json.loads(bundles.cli("backup-verify", *args, "--json").stdout)
    assert as_json["checked"] == len(checked) and as_json["failed"] == 0
    assert [r["name"] for r in as_json["results"]] == checked and all(r["ok"] for r in as_json["results"])


def test_a_damaged_backup_fails_with_exit_5(bundles):
    _flip(bundles.backup_dir / OLD / "sparkq.db")
    before = live_state(bundles)

    proc = bundles.cli("backup-verify", "--all")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"ok  {NEW}" and lines[2] == f"ok  {PRE}"
    assert lines[1].startswith(f"FAILED {OLD}: ") and "sparkq.db" in lines[1] and "checksum" in lines[1]
    assert lines[3] == "3 checked, 1 failed"
    assert "Do not restore a failed backup" in lines[4]
    assert proc.stderr == ""

    assert bundles.cli("backup-verify").returncode == 0  # the newest is fine
    one = bundles.cli("backup-verify", "2")
    assert one.returncode == 5 and one.stdout.strip().splitlines()[-2] == "1 checked, 1 failed"
    as_json = bundles.cli("backup-verify", "--all", "--json")
    assert as_json.returncode == 5
    data = json.loads(as_json.stdout)
    assert (data["checked"], data["failed"]) == (3, 1)
    (bad,) = [r for r in data["results"] if not r["ok"]]
    assert bad["name"] == OLD and bad["problems"]
    assert live_state(bundles) == before, "verifying changed something"


def test_every_backup_failing(bundles):
    for name in (OLD, NEW, PRE):
        (bundles.backup_dir / name / "manifest.json").write_text("{")
    proc = bundles.cli("backup-verify", "--all")
    assert proc.returncode == 5
    assert "3 checked, 3 failed" in proc.stdout and proc.stdout.count("FAILED ") == 3


def test_ref_and_all_together_is_a_usage_error(bundles):
    one_line_error(bundles.cli("backup-verify", "1", "--all"), codes={2})
