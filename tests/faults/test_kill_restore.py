"""kill -9 of `sparkq backup-restore` at random moments.

A prepared project holds a backup of state NEW (a ~20 MB DB, sparkq.yml and .env of NEW) while
the live files are in state OLD. Each kill point is its own test on a fresh copy. After the kill:
- the live DB passes integrity_check and holds exactly OLD or NEW content, never a mix;
- sparkq.yml and .env are whole, OLD or NEW, and never ahead of the DB (placement order);
- whenever the DB changed, a whole pre-restore bundle holds OLD; every published pre-restore
  bundle is whole and holds OLD;
- running the restore again completes, and leaves no temp file beside the live data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import SPARKQ_BIN, base_env, bundle_problems

DB_MB = 20
YML = {"old": "# state: old\nserver:\n  port: 5005\n", "new": "# state: new\nserver:\n  port: 5005\n"}
ENV = {"old": "SPARKQ_FAULT_SECRET=old-env\n", "new": "SPARKQ_FAULT_SECRET=new-env\n"}
STATES = ("old", "new")


def _run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SPARKQ_BIN), *args], cwd=root, env=base_env(root), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def db_digest(db: Path) -> str:
    """A digest of the logical content (every row of every table), independent of page layout."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"{db} fails integrity_check"
        digest = hashlib.sha256()
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for table in tables:
            digest.update(table.encode())
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                digest.update(repr(row).encode())
        return digest.hexdigest()
    finally:
        conn.close()


def _ro_digest(db: Path) -> str:
    """db_digest of a bundle's DB, read through a private copy (never opens a file in a bundle)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        shutil.copyfile(db, copy)
        return db_digest(copy)


def _write_state(root: Path, state: str) -> None:
    db = root / "sparkq" / "data" / "sparkq.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS ballast(id INTEGER PRIMARY KEY, b BLOB)")
    conn.execute("BEGIN")
    conn.execute("DELETE FROM ballast WHERE id % 2 = 0")
    for _ in range(DB_MB * 16 if state == "new" else DB_MB * 8):
        conn.execute("INSERT INTO ballast(b) VALUES (randomblob(65536))")
    conn.execute("INSERT OR REPLACE INTO config(namespace, key, value, updated_at, updated_by) "
                 "VALUES ('fault', 'state', ?, '2025-01-01', 'test')", (state,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    (root / "sparkq.yml").write_text(YML[state])
    (root / ".env").write_text(ENV[state])


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict:
    """Live files in state OLD; backup 1 holds state NEW."""
    root = tmp_path_factory.mktemp("kill-restore-template")
    _run(root, "setup")
    _write_state(root, "new")
    _run(root, "backup")
    _write_state(root, "old")
    (root / "sparkq" / "data" / "sparkq.lock").touch()
    bundle = next((root / "sparkq/data/backups").glob("sparkq_2*"))
    digests = {"old": db_digest(root / "sparkq/data/sparkq.db"), "new": _ro_digest(bundle / "sparkq.db")}
    assert digests["old"] != digests["new"]
    return {"root": root, "digest": digests}


def _install(template: dict, root: Path) -> None:
    src = template["root"]
    shutil.copytree(src / "sparkq", root / "sparkq", dirs_exist_ok=True)
    for name in ("sparkq.yml", ".env"):
        shutil.copyfile(src / name, root / name)


@pytest.fixture(scope="module")
def duration(template, tmp_path_factory, killing):
    """Seconds from the restore taking the supervisor lock to its exit: three runs to start with,
    then every complete restore the tests make; the last 5% (interpreter exit) is left out."""
    runs = []
    for i in range(3):
        root = tmp_path_factory.mktemp(f"calibrate{i}")
        _install(template, root)
        anchor = killing.holds_flock(root / "sparkq" / "data" / "sparkq.lock")
        runs.append(killing.measure([str(SPARKQ_BIN), "backup-restore", "1", "--yes"], root, base_env(root), anchor))
    print(f"`sparkq backup-restore` of {DB_MB} MB: {statistics.median(runs):.3f}s from the lock to its exit")
    return killing.Durations(runs, share=0.95)


def _state_of(data: bytes | str, table: dict) -> str:
    text = data if isinstance(data, str) else data.decode()
    for state in STATES:
        if text == table[state]:
            return state
    raise AssertionError(f"a file is neither the old nor the new version (torn?): {text[:80]!r}")


def _temp_leftovers(root: Path) -> list[str]:
    data = root / "sparkq" / "data"
    return sorted([p.name for p in data.iterdir() if ".tmp-" in p.name or ".restore-" in p.name]
                  + [p.name for p in root.iterdir() if ".tmp-" in p.name])


def _phase(root: Path, returncode: int, pre: list[Path], db_state: str) -> str:
    if returncode == 0:
        return "after exit"
    if db_state == "new":
        return "after the DB swap"
    if pre:
        return "pre-restore bundle published"
    if any(n.startswith(".tmp-") for n in os.listdir(root / "sparkq/data/backups")):
        return "writing the pre-restore bundle"
    return "verify"


def test_kill_9_restore(project, template, duration, killing, kill_at, phases, rng):
    root = project.root
    _install(template, root)
    at = kill_at * duration.current
    proc = project.popen(str(SPARKQ_BIN), "backup-restore", "1", "--yes", stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert killing.kill(proc, killing.holds_flock(project.root / "sparkq" / "data" / "sparkq.lock"), at)

    pre = sorted(project.backup_dir.glob("sparkq_preRestore_*"))
    yml_state = _state_of(project.config.read_text(), YML)
    env_state = _state_of((root / ".env").read_text(), ENV)
    # Bundles first: reading the live DB below must not be what makes a linked bundle look fine.
    for bundle in pre:
        assert bundle_problems(bundle) == [], f"pre-restore bundle {bundle.name} is not whole"
    pre_digests = {b.name: _ro_digest(b / "sparkq.db") for b in pre}
    digest = db_digest(project.db)
    db_state = next((s for s in STATES if template["digest"][s] == digest), None)
    phase = _phase(root, proc.returncode, pre, db_state)
    phases("kill -9 backup-restore, where the kills landed", phase)
    print(f"killed {at:.3f}s after the lock, in phase {phase!r}: db {db_state}, yml {yml_state}, env {env_state}")

    assert db_state is not None, "the live DB holds neither the old nor the restored content"
    order = {"old": 0, "new": 1}
    assert order[db_state] >= order[yml_state] >= order[env_state], "placed out of order"
    for name, d in pre_digests.items():
        assert d == template["digest"]["old"], f"{name} does not hold the pre-restore state"
        assert (project.backup_dir / name / "sparkq.yml").read_text() == YML["old"]
        assert (project.backup_dir / name / ".env").read_text() == ENV["old"]
    if db_state == "new":
        assert pre, "the DB was replaced but no pre-restore bundle exists"

    # Running the restore again completes (timed, to keep the kill moments in step with the
    # machine's pace) and leaves no temp file beside the live data.
    duration.add(killing.measure([str(SPARKQ_BIN), "backup-restore", "1", "--yes"], root, project.env,
                                 killing.holds_flock(root / "sparkq" / "data" / "sparkq.lock")))
    assert db_digest(project.db) == template["digest"]["new"]
    assert project.config.read_text() == YML["new"] and (root / ".env").read_text() == ENV["new"]
    assert _temp_leftovers(root) == []


# --- a crash between the pre-restore bundle and the DB swap -----------------------------------

_CRASH_AFTER_PRE_RESTORE = textwrap.dedent("""
    import os, signal
    from supervisor import config
    from supervisor.backup import restore, staging

    def crash(step, *_):
        os.kill(os.getpid(), signal.SIGKILL)  # the pre-restore bundle is published; nothing placed

    staging.place = crash
    restore.restore_backup(config.load(lenient=True), "1", scope="full", confirm=lambda plan: True)
""")


def test_crash_after_pre_restore_then_start_keeps_the_pre_restore_bundle_whole(project, template, reaper):
    """The pre-restore DB is a hard link of the live DB; a restore that dies before the swap
    must not leave the two sharing one file that the server then writes to."""
    root = project.root
    _install(template, root)
    project.write_config()  # a real server will run: our own port
    yml_before = project.config.read_text()
    crashed = subprocess.run([sys.executable, "-c", _CRASH_AFTER_PRE_RESTORE], cwd=root, env=project.env,
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (pre,) = project.backup_dir.glob("sparkq_preRestore_*")
    assert bundle_problems(pre) == []
    assert db_digest(project.db) == template["digest"]["old"] and project.config.read_text() == yml_before

    started = project.cli("start")
    assert started.returncode == 0, started.stderr
    import urllib.request

    for i in range(20):  # the server writes to the live DB
        req = urllib.request.Request(f"{project.url}/api/config/fault/after{i}", method="PUT",
                                     data=json.dumps({"value": i}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    assert project.cli("stop").returncode == 0

    verify = project.cli("backup-verify", pre.name)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert bundle_problems(pre) == []
    assert _ro_digest(pre / "sparkq.db") == template["digest"]["old"]
    assert (pre / "sparkq.yml").read_text() == yml_before
