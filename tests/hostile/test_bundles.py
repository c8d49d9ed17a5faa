"""Hostile backups in the backup dir: a bundle whose sparkq.db is a symlink to a file outside, a
manifest that is malformed JSON, 50 MB, or of the wrong types, a truncated legacy .db.

Every command that reads backups meets each one: a listing marks it damaged, `backup-verify`
fails it with exit 5, `backup-restore` refuses it with exit 5 before touching anything, and
nothing ever prints a traceback, follows the symlink, or changes live data or the backup dir.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from helpers import T0, live_state, make_bundle, make_legacy, sha256, stamp
from supervisor import config
from supervisor.setup import run_setup

OUTSIDE_MARKER = "OUTSIDE-MARKER-never-read"


def _db_symlink(bd, name, seed, tmp_path):
    outside = tmp_path / "outside.db"
    shutil.copyfile(seed, outside)
    conn = sqlite3.connect(outside)
    conn.execute("INSERT INTO prompts(id, command, label, template_text) VALUES ('prm_out', 'outside', ?, 'x')",
                 (OUTSIDE_MARKER,))
    conn.commit()
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    d = make_bundle(bd, name, seed)
    (d / "sparkq.db").unlink()
    (d / "sparkq.db").symlink_to(outside)
    return d, outside


def _manifest(change):
    def build(bd, name, seed, tmp_path):
        d = make_bundle(bd, name, seed)
        change(d / "manifest.json")
        return d, None

    return build


def _malformed(path):
    path.write_text('{"backup_version": "2.0", "created_at": ')


def _fifty_mb(path):
    m = json.loads(path.read_text())
    m["padding"] = "x" * (50 << 20)
    path.write_text(json.dumps(m))


def _wrong_types(path):
    m = json.loads(path.read_text())
    m.update(backup_version=2.0, counts="lots", files=7, checksums=["x"], created_at=12345, database="big",
             config_file="yes", integrity_check=["ok"])
    path.write_text(json.dumps(m))


def _legacy_truncated(bd, name, seed, tmp_path):
    path = make_legacy(bd, T0, seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, None


SHAPES = {
    "db-symlink-outside": _db_symlink,
    "manifest-malformed-json": _manifest(_malformed),
    "manifest-50MB": _manifest(_fifty_mb),
    "manifest-wrong-types": _manifest(_wrong_types),
    "legacy-truncated": _legacy_truncated,
}

# command -> exit codes allowed (export may still read an intact export file of a bundle whose
# manifest is damaged; it must not read a damaged database)
COMMANDS = {
    "backup-list": ((), {0}),
    "backup-list --json": (("--json",), {0}),
    "backup-show": (("NAME",), {0}),
    "backup-show --json": (("NAME", "--json"), {0}),
    "backup-verify": (("NAME",), {5}),
    "backup-verify --all": (("--all",), {5}),
    "backup-restore": (("NAME", "--yes"), {5}),
    "backup-export": (("prompts", "NAME"), {0, 5}),
}


@pytest.fixture
def hostile(project, seed_db, tmp_path, request):
    run_setup(config.load())
    (project.root / ".env").write_text("SPARKQ_HOSTILE_SECRET=bundles\n")
    good = make_bundle(project.backup_dir, f"sparkq_{stamp(T0.replace(year=2024))}", seed_db)
    bad, outside = SHAPES[request.param](project.backup_dir, f"sparkq_{stamp(T0)}", seed_db, tmp_path)
    return project, bad, good, outside


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("hostile", list(SHAPES), indirect=True)
def test_hostile_bundle(hostile, command):
    project, bad, good, outside = hostile
    outside_hash = sha256(outside) if outside else None
    before = live_state(project)
    args, codes = COMMANDS[command]
    name = command.split()[0]
    proc = project.cli(name, *[bad.name if a == "NAME" else a for a in args])
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, proc.stderr
    assert proc.returncode in codes, (proc.returncode, out[-2000:])
    assert OUTSIDE_MARKER not in out, "read the file a symlink points to"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) <= 1, proc.stderr  # verify reports on stdout; errors are one line
    assert live_state(project) == before, "changed live data or the backup dir"
    if outside:
        assert sha256(outside) == outside_hash
    if name == "backup-list":
        if args:
            rows = {r["name"]: r for r in json.loads(proc.stdout)["backups"]}
            assert set(rows) == {bad.name, good.name}
            if bad.is_dir():
                assert rows[bad.name]["damaged"], rows[bad.name]
            else:
                assert rows[bad.name]["integrity_check"] != "ok"
            assert not rows[good.name]["damaged"] and rows[good.name]["integrity_check"] == "ok"
        else:
            assert "DAMAGED" in proc.stdout or "unreadable" in proc.stdout, proc.stdout
    if name == "backup-verify":
        assert f"FAILED {bad.name}" in proc.stdout
        summary = "2 checked, 1 failed" if "--all" in args else "1 checked, 1 failed"
        assert summary in proc.stdout
    if name == "backup-restore":
        assert "sparkq: " in proc.stderr and ("refusing" in proc.stderr or "verification" in proc.stderr)
        assert not list(project.backup_dir.glob("sparkq_preRestore_*"))
