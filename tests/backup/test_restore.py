"""restore_backup() called directly: scopes, refusals, verification, pre-restore bundles, atomic swap.

These run in-process against a temp project (no server); tests/backup/test_scenarios.py goes
through sparkq.sh with a real server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor import config
from supervisor.backup import catalog, create, restore, staging
from supervisor.backup.entry import Entry
from supervisor.errors import InUse, SparkqError, UsageError, VerificationFailed
from supervisor.fsutil import temp_of

CUSTOM = ("prm_custom0000000001", "my-custom", "Mine", "custom template text")


# --- helpers ----------------------------------------------------------------------------------


def _settings():
    return config.load(lenient=True)


def _setup(project) -> None:
    from supervisor.initialize import run_setup

    run_setup(_settings())


def _conn(db: Path) -> sqlite3.Connection:
    from sparkq import storage

    return storage.connect(db)


def _exec(db: Path, *statements: tuple) -> None:
    from sparkq import storage

    conn = _conn(db)
    try:
        for sql, *params in statements:
            conn.execute(sql, params)
    finally:
        storage.checkpoint_and_close(conn)


def _rows(db: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {table}"))
    finally:
        conn.close()


def _live_rows(db: Path, table: str) -> list[tuple]:
    """Rows as SQLite sees them, -wal included (opens read-write; only for unused DBs)."""
    conn = sqlite3.connect(db)
    try:
        return sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {table}"))
    finally:
        conn.close()


def _add_custom_prompt(db: Path) -> None:
    _exec(db, ("INSERT INTO prompts (id, command, label, template_text) VALUES (?, ?, ?, ?)", *CUSTOM))


def _backup() -> Entry:
    create.create_backup(_settings(), trigger="manual")
    regular, _ = catalog.scan(_settings().paths.backup_dir)
    return regular[0]


def _pre_restores() -> list[Entry]:
    return catalog.scan(_settings().paths.backup_dir)[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _yes(plans: list | None = None):
    def confirm(plan) -> bool:
        if plans is not None:
            plans.append(plan)
        return True

    return confirm


def _restore(ref="1", scope="full", tables=None, plans=None, asks=True):
    return restore.restore_backup(_settings(), ref, scope=scope, tables=tables, confirm=_yes(plans), asks=asks)


# A restore that asks verifies before the question; one that does not (--yes) verifies under the
# lock, beside the pre-restore bundle. Both must leave everything as it was when the backup fails.
ASKS = pytest.mark.parametrize("asks", [True, False], ids=["verified-first", "verified-beside"])


@pytest.fixture
def seeded(project):
    """A project with a seeded DB plus one custom prompt, and backup 1 of that state."""
    _setup(project)
    _add_custom_prompt(project.db)
    entry = _backup()
    return project, entry


# --- full / db restores -----------------------------------------------------------------------


def test_full_restore_brings_back_db_and_yml_and_links_the_old_db(seeded):
    project, _entry = seeded
    backup_prompts = _rows(project.db, "prompts")
    good_yml = project.config.read_bytes()
    _exec(project.db, ("DELETE FROM prompts WHERE command = ?", CUSTOM[1]),
          ("INSERT INTO config (namespace, key, value) VALUES ('ui', 'after', 'x')",))
    project.config.write_text(good_yml.decode() + "\n# changed after the backup\n")
    old_inode = project.db.stat().st_ino
    old_mode = stat.S_IMODE(project.db.stat().st_mode)
    current_prompts = _rows(project.db, "prompts")

    plans: list = []
    result = _restore(plans=plans)

    assert _rows(project.db, "prompts") == backup_prompts
    assert project.config.read_bytes() == good_yml
    assert not Path(str(project.db) + "-wal").exists()
    # The pre-restore bundle holds the old DB as a hard link of the very file (no copy).
    pre = _pre_restores()
    assert [p.name for p in pre] == [result.pre_restore]
    linked = pre[0].path / "sparkq.db"
    assert linked.stat().st_ino == old_inode
    assert project.db.stat().st_ino != old_inode
    assert _rows(linked, "prompts") == current_prompts
    assert b"# changed after the backup" in (pre[0].path / "sparkq.yml").read_bytes()
    # Plan and report say what happens and how to undo it.
    plan_text = plans[0].text()
    assert "sparkq.db" in plan_text and str(project.db) in plan_text
    assert "sparkq_preRestore_" in plan_text and "hard-linked" in plan_text
    assert "prompts" in plan_text and "34" in plan_text  # backup counts vs now (33)
    text = result.text()
    assert f"undo: ./sparkq.sh backup-restore {result.pre_restore} --yes" in text
    assert text.splitlines()[-1] == "Restore complete. Start the server: ./sparkq.sh start"
    assert result.to_dict()["pre_restore"] == result.pre_restore
    assert stat.S_IMODE(project.db.stat().st_mode) == old_mode  # the restored DB keeps the live mode


def test_undo_by_restoring_the_pre_restore_bundle(seeded):
    project, _entry = seeded
    _exec(project.db, ("UPDATE prompts SET label = 'edited' WHERE command = ?", CUSTOM[1]))
    project.config.write_text(project.config.read_text() + "# edited\n")
    edited_prompts, edited_yml = _rows(project.db, "prompts"), project.config.read_bytes()

    first = _restore()
    assert _rows(project.db, "prompts") != edited_prompts
    undo = _restore(ref=first.pre_restore)

    assert _rows(project.db, "prompts") == edited_prompts
    assert project.config.read_bytes() == edited_yml
    assert undo.pre_restore != first.pre_restore  # undoing keeps a copy too
    assert len(_pre_restores()) == 2


def test_db_only_keeps_the_current_yml(seeded):
    project, _entry = seeded
    project.config.write_text(project.config.read_text() + "# keep me\n")
    _exec(project.db, ("DELETE FROM prompts",))
    result = _restore(scope="db")
    assert "# keep me" in project.config.read_text()
    assert len(_rows(project.db, "prompts")) == 34
    assert [r["target"] for r in result.restored] == [str(project.db)]
    assert "--db-only --yes" in result.undo


def test_restore_when_no_database_exists(seeded):
    project, _entry = seeded
    project.db.unlink()
    result = _restore(scope="db")
    assert len(_rows(project.db, "prompts")) == 34
    assert not (Path(result.pre_restore_path) / "sparkq.db").exists()


# --- config-only scopes -----------------------------------------------------------------------


def test_config_only_restores_yml_and_env_and_snapshots_the_db(seeded):
    project, _entry = seeded
    env = project.root / ".env"
    good_yml, good_env = project.config.read_bytes(), env.read_bytes()
    project.config.unlink()
    env.write_text("SECRET=changed\n")
    db_sha, db_inode = _sha(project.db), project.db.stat().st_ino

    with capture_logs() as logs:
        result = _restore(scope="config")

    assert project.config.read_bytes() == good_yml
    assert env.read_bytes() == good_env
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE(project.config.stat().st_mode) == 0o644
    assert _sha(project.db) == db_sha and project.db.stat().st_ino == db_inode  # DB untouched
    snap = Path(result.pre_restore_path) / "sparkq.db"
    assert snap.stat().st_ino != db_inode  # a real snapshot, not a link
    assert _rows(snap, "prompts") == _rows(project.db, "prompts")
    assert "--config-only --yes" in result.undo
    events = [e["event"] for e in logs]
    assert "restore_started" in events and "restore_done" in events
    assert "changed" not in json.dumps(logs, default=str)  # never a .env value


def test_only_yml_keeps_the_existing_mode(seeded):
    project, _entry = seeded
    good = project.config.read_bytes()
    project.config.write_text("broken: [\n")
    os.chmod(project.config, 0o640)
    _restore(scope="yml")
    assert project.config.read_bytes() == good
    assert stat.S_IMODE(project.config.stat().st_mode) == 0o640


def test_only_env_without_env_in_bundle_is_a_usage_error(seeded):
    project, _entry = seeded
    (project.root / ".env").unlink()
    _backup()  # taken without a .env: its manifest does not list one
    with pytest.raises(UsageError, match="has no .env"):
        _restore(scope="env")
    assert _pre_restores() == []


@pytest.mark.parametrize("scope", ["env", "config"])
def test_a_listed_member_that_is_missing_is_a_damaged_backup(seeded, scope):
    """The manifest lists .env, the bundle lacks it: damage (exit 5), not a backup without one."""
    project, entry = seeded
    (entry.path / ".env").unlink()
    with pytest.raises(VerificationFailed, match=r"\.env is missing \(listed in the manifest's checksums\)"):
        _restore(scope=scope)
    assert _pre_restores() == []


def test_only_templates_restores_setup_templates(seeded, tmp_path, monkeypatch):
    project, _entry = seeded
    templates = tmp_path / "templates"
    shutil.copytree(_settings().paths.templates_dir, templates)
    monkeypatch.setattr("supervisor.paths.TEMPLATES_DIR", templates)
    entry = _backup()
    original = (templates / "sparkq.yml.example").read_bytes()
    (templates / "sparkq.yml.example").write_text("garbage\n")
    result = _restore(ref=entry.name, scope="templates")
    assert (templates / "sparkq.yml.example").read_bytes() == original
    assert any(r["source"] == "setup_templates/sparkq.yml.example" for r in result.restored)


def test_placement_failure_rolls_back_what_was_placed(seeded, monkeypatch):
    project, _entry = seeded
    _exec(project.db, ("DELETE FROM prompts WHERE command = ?", CUSTOM[1]))
    project.config.write_text(project.config.read_text() + "# current\n")
    before, yml = _rows(project.db, "prompts"), project.config.read_bytes()
    real_copy = staging.atomic_copy

    def failing_copy(src, target, mode=0o600):
        if target.name == ".env" and "sparkq_preRestore" not in str(src):
            raise OSError(28, "No space left on device", str(target))
        real_copy(src, target, mode=mode)

    monkeypatch.setattr(staging, "atomic_copy", failing_copy)
    with pytest.raises(SparkqError, match="back as it was") as err:
        _restore()
    assert "No space left" in str(err.value)
    # The DB and sparkq.yml were placed before .env failed: both are back to the current state.
    assert _rows(project.db, "prompts") == before
    assert project.config.read_bytes() == yml


# --- refusals: nothing touched ----------------------------------------------------------------


def _holder(db: Path, how: str) -> subprocess.Popen:
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        f"c.execute({how!r})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("how", ["BEGIN EXCLUSIVE", "SELECT count(*) FROM prompts"])
def test_refused_while_another_process_holds_the_db(seeded, reaper, how):
    project, _entry = seeded
    before = _sha(project.db)
    proc = _holder(project.db, how)
    reaper.add(proc.pid)
    try:
        with pytest.raises(InUse, match=f"another process \\(PID {proc.pid} \\(python.*\\)\\) is using .*sparkq.db"):
            _restore()
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert _sha(project.db) == before
    assert _pre_restores() == []


def _live_state(project) -> dict:
    """Every byte, mode and link count of the live files a restore could touch."""
    files = [project.db, Path(f"{project.db}-wal"), project.config, project.root / ".env"]
    state = {p.name: (_sha(p), stat.S_IMODE(p.stat().st_mode), p.stat().st_nlink) for p in files if p.exists()}
    state["temps"] = sorted(n for n in os.listdir(project.db.parent) if temp_of(n))
    return state


@ASKS
@pytest.mark.parametrize("wal", [False, True], ids=["checkpointed", "wal-frames"])
def test_corrupted_bundle_db_is_refused_before_any_change(seeded, asks, wal):
    project, entry = seeded
    db = entry.path / "sparkq.db"
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    db.write_bytes(bytes(data))
    project.config.write_text("# changed\n")
    os.chmod(project.db, 0o640)  # a hard link into the pre-restore bundle makes the inode 0600
    if wal:  # a checkpoint (or a snapshot's last close) would fold it in
        _write_and_die(project.db, ["INSERT INTO config (namespace, key) VALUES ('wal', 'only')"])
    before = _live_state(project)
    with pytest.raises(VerificationFailed, match="sparkq.db.*nothing was changed") as err:
        _restore(asks=asks)
    assert err.value.exit_code == 5
    assert _live_state(project) == before
    assert project.config.read_text() == "# changed\n"
    assert _pre_restores() == []
    assert not [n for n in os.listdir(project.backup_dir) if temp_of(n)], "a half-written bundle was left"


def test_cancelled_confirmation_changes_nothing(seeded):
    project, _entry = seeded
    live = _sha(project.db)
    with pytest.raises(SparkqError, match="cancelled; nothing changed"):
        restore.restore_backup(_settings(), "1", scope="full", tables=None, confirm=lambda plan: False)
    assert _sha(project.db) == live
    assert _pre_restores() == []


def test_legacy_backup_scopes(seeded):
    project, _entry = seeded
    legacy = project.backup_dir / "sparkq_20200101_000000.db"
    shutil.copyfile(project.db, legacy)
    with pytest.raises(UsageError, match="legacy backup sparkq_20200101_000000.db has no sparkq.yml; use --db-only"):
        _restore(ref=legacy.name, scope="config")
    _exec(project.db, ("DELETE FROM prompts",))
    _restore(ref="sparkq_20200101_000000", scope="db")
    assert len(_rows(project.db, "prompts")) == 34
    # A legacy .db with a .yml of the same stem beside it can restore that yml.
    legacy.with_suffix(".yml").write_text("# legacy yml\n")
    _restore(ref=legacy.name, scope="yml")
    assert project.config.read_text() == "# legacy yml\n"


def test_unknown_table_is_a_usage_error_listing_the_allowed(seeded):
    with pytest.raises(UsageError, match="tasks.*allowed: .*prompts.*agent_roles"):
        _restore(tables=["prompts", "tasks"])


def test_unknown_scope_and_ref(seeded):
    with pytest.raises(UsageError):
        _restore(scope="everything")
    with pytest.raises(SparkqError) as err:
        _restore(ref="9")
    assert err.value.exit_code == 4


# --- WAL handling -----------------------------------------------------------------------------


def _write_and_die(db: Path, statements: list[str]) -> None:
    """A writer that commits into the WAL and dies without a checkpoint: a stale, non-empty -wal."""
    code = (
        "import os, sqlite3\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        f"for s in {statements!r}: c.execute(s)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@ASKS
def test_stale_wal_of_the_live_db_never_meets_the_restored_db(seeded, asks):
    project, _entry = seeded
    backup_prompts = _rows(project.db, "prompts")
    _write_and_die(project.db, ["DELETE FROM prompts", "INSERT INTO config (namespace, key) VALUES ('wal', 'only')"])
    wal = Path(str(project.db) + "-wal")
    assert wal.stat().st_size > 0

    result = _restore(scope="db", asks=asks)

    assert not wal.exists() or wal.stat().st_size == 0
    assert _live_rows(project.db, "prompts") == backup_prompts
    assert ("wal", "only") not in [(r[0], r[1]) for r in _live_rows(project.db, "config")]
    # The WAL's rows were folded into the old DB before it was kept.
    kept = Path(result.pre_restore_path) / "sparkq.db"
    assert _rows(kept, "prompts") == []


def test_a_21_bundle_with_a_wal_restores_the_rows_in_the_wal(seeded, tmp_path):
    project, _entry = seeded
    src = tmp_path / "old" / "sparkq.db"
    src.parent.mkdir()
    shutil.copyfile(project.db, src)
    _write_and_die(src, [f"INSERT INTO prompts (id, command) VALUES ('prm_wal{i}', 'wal-{i}')" for i in range(5)])
    assert Path(str(src) + "-wal").stat().st_size > 0
    bundle = project.backup_dir / "sparkq_20240101_120000"
    bundle.mkdir()
    shutil.copyfile(src, bundle / "sparkq.db")
    shutil.copyfile(str(src) + "-wal", bundle / "sparkq.db-wal")
    shutil.copyfile(project.config, bundle / "sparkq.yml")
    (bundle / "manifest.json").write_text(json.dumps({
        "backup_version": "2.1",
        "created_at": "2024-01-01T12:00:00+00:00",
        "integrity_check": "ok",
        "configuration_files": {"sparkq.yml": True},
        "files": {"database": ["sparkq.db", "sparkq.db-wal"], "config": ["sparkq.yml"]},
    }))
    assert _rows(bundle / "sparkq.db", "prompts") == _rows(project.db, "prompts")  # the WAL is not in it

    plans: list = []
    _restore(ref=bundle.name, scope="db", plans=plans)

    commands = {r[1] for r in _live_rows(project.db, "prompts")}
    assert {f"wal-{i}" for i in range(5)} <= commands
    assert not Path(str(project.db) + "-wal").exists()
    assert "-wal folded in" in plans[0].text()
    assert not list(project.db.parent.glob(".sparkq.db.restore-*"))


# --- --tables merge ---------------------------------------------------------------------------


def test_tables_merge_brings_back_a_prompt_and_keeps_tasks(seeded):
    project, _entry = seeded
    _exec(
        project.db,
        ("DELETE FROM prompts WHERE command = ?", CUSTOM[1]),
        ("UPDATE prompts SET label = 'kept?' WHERE command = 'code-review'",),
        ("INSERT INTO prompts (id, command) VALUES ('prm_new', 'newer-than-backup')",),
        ("INSERT INTO sessions (id, name) VALUES ('ses_1', 's')",),
        ("INSERT INTO queues (id, session_id, name) VALUES ('que_1', 'ses_1', 'q')",),
        ("INSERT INTO tasks (id, queue_id, payload) VALUES ('tsk_1', 'que_1', '{}')",),
        ("INSERT INTO config (namespace, key, value) VALUES ('ui', 'live-only', 'x')",),
    )
    tasks_before = _rows(project.db, "tasks")
    config_before = _rows(project.db, "config")
    inode = project.db.stat().st_ino

    result = _restore(tables=["prompts", "task-classes", "tools"])

    commands = {r[1]: r for r in _rows(project.db, "prompts")}
    assert CUSTOM[1] in commands  # brought back
    assert "newer-than-backup" in commands  # merge never deletes
    assert commands["code-review"][2] != "kept?"  # the backup's version wins
    assert _rows(project.db, "tasks") == tasks_before
    assert _rows(project.db, "config") == config_before  # not asked for
    assert project.db.stat().st_ino == inode
    assert result.merged["prompts"]["added"] == 1
    assert list(result.merged) == ["prompts", "task_classes", "tools"]  # task classes before tools
    snap = Path(result.pre_restore_path) / "sparkq.db"
    assert snap.stat().st_ino != inode
    assert CUSTOM[1] not in {r[1] for r in _rows(snap, "prompts")}
    assert "--db-only" in result.undo
    assert "merged" in result.text().lower()


def test_tables_merge_from_a_legacy_backup(seeded):
    project, _entry = seeded
    shutil.copyfile(project.db, project.backup_dir / "sparkq_20200101_000000.db")
    _exec(project.db, ("DELETE FROM agent_roles",))
    _restore(ref="sparkq_20200101_000000", tables=["agent_roles"])
    assert len(_rows(project.db, "agent_roles")) == 8


def test_symlinked_member_is_refused(seeded, tmp_path):
    project, entry = seeded
    outside = tmp_path / "outside.yml"
    outside.write_text("server:\n  port: 1\n")
    (entry.path / "sparkq.yml").unlink()
    (entry.path / "sparkq.yml").symlink_to(outside)
    project.config.write_text("# current\n")
    with pytest.raises(VerificationFailed, match="symlink"):
        _restore(scope="yml")
    assert project.config.read_text() == "# current\n"
    assert _pre_restores() == []
