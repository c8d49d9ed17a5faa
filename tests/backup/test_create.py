"""supervisor/backup/create.py: bundles from real SQLite files, under real processes and faults."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpers import SPARKQ_BIN, fake_clock, grow_db, wait_until
from supervisor import config
from supervisor.fmt import human_size
from supervisor.backup import create, exports, publish
from supervisor.backup.catalog import scan
from supervisor.backup.layout import PRE_RESTORE_PREFIX, TEMPLATE_FILES
from supervisor.fsutil import sha256_file
from supervisor.errors import BackupFailed, ConfigError, UsageError
from supervisor.setup import run_setup

EXPORT_FILES = {spec[0] for spec in exports.EXPORTS.values()}
TEMPLATES = {f"setup_templates/{t}" for t in TEMPLATE_FILES}
SECRET = "SPARKQ_TEST_SECRET=hunter2-do-not-leak"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def settings(project):
    """A set-up project (sparkq.yml, .env with a secret, seeded DB); its loaded settings."""
    s = config.load()
    run_setup(s)
    s.paths.env_file.write_text(SECRET + "\n")
    return s


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db.absolute().as_uri() + "?mode=ro&immutable=1", uri=True)


def _bundle_files(bundle: Path) -> set[str]:
    return {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _assert_valid(bundle: Path) -> dict:
    """Every listed file present with its checksum, the DB passes integrity_check, nothing extra."""
    m = _manifest(bundle)
    assert set(m["files"]) == _bundle_files(bundle)
    assert set(m["checksums"]) == set(m["files"]) - {"manifest.json"}
    for rel, digest in m["checksums"].items():
        assert sha256_file(bundle / rel) == digest, rel
    conn = _ro(bundle / "sparkq.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    assert not (bundle / "sparkq.db-wal").exists() and not (bundle / "sparkq.db-shm").exists()
    return m


def _entries(backup_dir: Path) -> set[str]:
    return set(os.listdir(backup_dir)) if backup_dir.exists() else set()


def _temps(backup_dir: Path) -> list[str]:
    return [n for n in _entries(backup_dir) if n.startswith(".tmp-")]


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- the bundle -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_bundle_has_every_file_private_modes_and_manifest(settings, umask):
    old = os.umask(umask)
    try:
        result = create.create_backup(settings, trigger="manual")
    finally:
        os.umask(old)
    bundle = Path(result.path)
    assert re.fullmatch(r"sparkq_\d{8}_\d{6}", bundle.name)
    assert bundle.parent == settings.paths.backup_dir
    expected = {"sparkq.db", "sparkq.yml", ".env", "manifest.json", *EXPORT_FILES, *TEMPLATES}
    assert _bundle_files(bundle) == expected

    for d in (settings.paths.backup_dir, bundle, bundle / "setup_templates"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for rel in expected:
        assert stat.S_IMODE((bundle / rel).stat().st_mode) == 0o600, rel

    m = _assert_valid(bundle)
    for key in ("backup_version", "created_at", "timestamp", "integrity_check", "database", "config_file",
                "counts", "files", "checksums", "trigger", "sqlite_version", "sparkq_version"):
        assert key in m, key
    assert m["backup_version"] == "2.0"
    assert m["created_at"].endswith("+00:00")
    created = datetime.fromisoformat(m["created_at"])
    assert created.strftime("%Y%m%d_%H%M%S") == m["timestamp"] and bundle.name == f"sparkq_{m['timestamp']}"
    assert m["integrity_check"] == "ok"
    assert m["database"]["path"] == str(settings.paths.db) and Path(m["database"]["path"]).is_absolute()
    assert m["database"]["bytes"] == (bundle / "sparkq.db").stat().st_size
    assert m["database"]["size"] == human_size(m["database"]["bytes"])
    assert re.fullmatch(r"\d+(\.\d)?[BKMG]", m["database"]["size"])
    assert m["config_file"] is True and m["trigger"] == "manual"
    assert m["sqlite_version"] == sqlite3.sqlite_version
    assert m["files"][0] == "sparkq.db" and m["files"][-1] == "manifest.json"
    counts = m["counts"]
    assert set(counts) == {"config_entries", "prompts", "agent_roles", "tools", "task_classes",
                           "sessions", "queues", "tasks"}
    assert (counts["prompts"], counts["agent_roles"], counts["tools"], counts["task_classes"]) == (33, 8, 7, 4)
    assert counts == result.counts
    # .env is copied verbatim but its content appears nowhere else.
    assert (bundle / ".env").read_text() == SECRET + "\n"
    for rel in expected - {".env", "sparkq.db"}:
        assert "hunter2" not in (bundle / rel).read_text(), rel
    assert "hunter2" not in json.dumps(result.to_dict()) + result.text()


def test_exports_agree_with_the_snapshot(settings):
    conn = sqlite3.connect(settings.paths.db)
    conn.execute("INSERT INTO config(namespace, key, value) VALUES ('ui', 'test_only_key', 'dark')")
    conn.execute("UPDATE prompts SET label = 'Changed' WHERE rowid = 1")
    conn.commit()
    conn.close()
    bundle = Path(create.create_backup(settings, trigger="manual").path)
    snap = _ro(bundle / "sparkq.db")
    try:
        for kind, (filename, _table, _cols) in exports.EXPORTS.items():
            on_disk = json.loads((bundle / filename).read_text())
            assert on_disk == json.loads(exports.to_json(exports.rows(snap, kind))), filename
    finally:
        snap.close()
    config_rows = json.loads((bundle / "config_export.json").read_text())
    assert {"namespace": "ui", "key": "test_only_key", "value": "dark"}.items() <= next(
        r for r in config_rows if r["key"] == "test_only_key").items()
    assert _manifest(bundle)["counts"]["config_entries"] == len(config_rows)


def test_result_text_dict_and_log_event(settings):
    with capture_logs() as logs:
        result = create.create_backup(settings, trigger="start", locked=True)
    d = result.to_dict()
    assert set(d) == {"name", "path", "trigger", "skipped", "notice", "created_at", "db_size",
                      "integrity_check", "counts", "pruned", "duration_s", "unchanged_since"}
    assert d["trigger"] == "start" and d["skipped"] is False and d["pruned"] == []
    assert d["db_size"] == Path(d["path"], "sparkq.db").stat().st_size
    json.dumps(d)
    assert re.fullmatch(rf"backup {result.name} \(\d+(\.\d)?[BKMG], integrity ok\) in \d+\.\d\ds", result.text())
    event = [e for e in logs if e["event"] == "backup_created"]
    assert len(event) == 1
    assert event[0]["name"] == result.name and event[0]["trigger"] == "start"
    assert event[0]["size"] == result.db_size and event[0]["duration"] >= 0
    assert "hunter2" not in repr(logs)


def test_cli_backup_json(project, settings):
    proc = project.cli("backup", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["trigger"] == "manual" and d["integrity_check"] == "ok"
    _assert_valid(Path(d["path"]))
    proc = project.cli("backup")
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"backup sparkq_\d{8}_\d{6}(_\d+)? \(.+, integrity ok\) in ", proc.stdout)


def test_no_database_yet_is_skipped(project):
    s = config.load()
    result = create.create_backup(s, trigger="start")
    assert result.skipped is True
    assert result.notice == f"no database yet at {s.paths.db}; nothing to back up"
    assert result.text() == f"backup skipped: {result.notice}"
    assert not s.paths.backup_dir.exists()


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom((3 << 20) + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


# --- names ------------------------------------------------------------------------------------


def test_same_second_backups_get_distinct_names(settings, monkeypatch):
    fake_clock(monkeypatch, datetime(2026, 11, 26, 10, 15, 0, tzinfo=timezone.utc))
    names = [create.write_bundle(settings, trigger="manual").name for _ in range(4)]
    assert names == ["sparkq_20261126_101500", "sparkq_20261126_101500_1",
                     "sparkq_20261126_101500_2", "sparkq_20261126_101500_3"]
    for name in names:
        _assert_valid(settings.paths.backup_dir / name)
    # Threads of one process racing for the same second still get one bundle each.
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(create.write_bundle(settings, trigger="manual")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in out}) == 4 and not set(p.name for p in out) & set(names)
    regular, _ = scan(settings.paths.backup_dir)
    assert len(regular) == 8 and not _temps(settings.paths.backup_dir)


def test_publish_never_replaces_and_takes_the_next_suffix(tmp_path):
    backup_dir = tmp_path / "b"
    backup_dir.mkdir()
    name, tmp = publish.reserve(backup_dir, "sparkq_20261126_101500")
    assert name == "sparkq_20261126_101500" and tmp.name == f".tmp-{name}-{os.getpid()}"
    (tmp / "mine").write_text("mine")
    # Another process publishes the same name (and _1) first: we must not replace theirs.
    for other in (name, f"{name}_1"):
        (backup_dir / other).mkdir()
        (backup_dir / other / "theirs").write_text("theirs")
    (backup_dir / f"{name}_2").mkdir()  # even an empty directory is never replaced
    final = publish.publish(tmp, backup_dir, name)
    assert final.name == f"{name}_3" and (final / "mine").exists()
    assert (backup_dir / name / "theirs").exists() and (backup_dir / f"{name}_1" / "theirs").exists()
    assert not tmp.exists()


def test_concurrent_cli_backups_each_publish_and_retention_keeps_them(project, settings, monkeypatch):
    fake_clock(monkeypatch, datetime(2021, 1, 1, tzinfo=timezone.utc), timedelta(days=1))
    old = [create.write_bundle(settings, trigger="manual").name for _ in range(3)]
    procs = [project.popen(str(SPARKQ_BIN), "backup", "--json", env={"SPARKQ_BACKUP_KEEP": "3"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    fresh = {r["name"] for r in results}
    assert len(fresh) == 3
    regular, _ = scan(settings.paths.backup_dir)
    assert {e.name for e in regular} == fresh
    assert sorted(n for r in results for n in r["pruned"]) == sorted(old)
    for r in results:
        _assert_valid(Path(r["path"]))
    assert not _temps(settings.paths.backup_dir)


# --- consistency of the snapshot --------------------------------------------------------------


def test_bundle_db_stands_alone_even_with_a_big_live_wal(settings):
    conn = sqlite3.connect(settings.paths.db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE walled(b BLOB)")
    for _ in range(48):
        conn.execute("INSERT INTO walled VALUES (randomblob(65536))")
    wal = settings.paths.db.with_name("sparkq.db-wal")
    try:
        assert wal.stat().st_size > 2 << 20  # the rows live only in the WAL so far
        bundle = Path(create.create_backup(settings, trigger="manual").path)
    finally:
        conn.close()
    assert "sparkq.db-wal" not in _bundle_files(bundle) and "sparkq.db-shm" not in _bundle_files(bundle)
    header = (bundle / "sparkq.db").read_bytes()[:100]
    assert header[18:20] == b"\x01\x01"  # rollback journal: no -wal/-shm ever appear beside it
    snap = _ro(bundle / "sparkq.db")
    try:
        assert snap.execute("SELECT count(*) FROM walled").fetchone()[0] == 48
        assert snap.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        snap.close()
    _assert_valid(bundle)


_WRITER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=NORMAL")
conn.execute("CREATE TABLE IF NOT EXISTS counter_test(n INTEGER PRIMARY KEY)")
n = 0
while True:  # three rows per transaction: a torn snapshot would show a count not divisible by 3
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(3):
        n += 1
        conn.execute("INSERT INTO counter_test(n) VALUES (?)", (n,))
    conn.execute("COMMIT")
"""


def _counter_max(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT coalesce(max(n), 0) FROM counter_test").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_twenty_backups_while_another_process_commits(project, settings, monkeypatch):
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", "50")
    writer = project.popen(sys.executable, "-c", _WRITER, str(settings.paths.db))
    try:
        wait_until(lambda: _counter_max(settings.paths.db) > 0, what="the writer's first commit")
        seen = []
        for _ in range(20):
            result = create.create_backup(settings, trigger="manual")
            bundle = Path(result.path)
            _assert_valid(bundle)
            snap = _ro(bundle / "sparkq.db")
            try:
                count, low, high = snap.execute("SELECT count(*), min(n), max(n) FROM counter_test").fetchone()
            finally:
                snap.close()
            assert low == 1 and count == high and high % 3 == 0, (count, low, high)
            seen.append(high)
        assert writer.poll() is None, "the writer died during the backups"
    finally:
        writer.kill()
        writer.wait()
    assert seen == sorted(seen) and seen[-1] > seen[0]


def test_live_db_failing_integrity_is_backed_up_with_a_loud_warning(settings):
    conn = sqlite3.connect(settings.paths.db)
    conn.execute("CREATE TABLE junk(a TEXT)")
    conn.executemany("INSERT INTO junk VALUES (?)", [(f"marker{i:05d}",) for i in range(500)])
    conn.execute("CREATE INDEX junk_a ON junk(a)")  # created last: its pages sit after the table's
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = settings.paths.db.read_bytes()
    with open(settings.paths.db, "r+b") as fh:
        fh.seek(data.rfind(b"marker00250"))
        fh.write(b"X")
    with capture_logs() as logs:
        result = create.create_backup(settings, trigger="start")
    assert result.integrity_check != "ok" and "missing from index junk_a" in result.integrity_check
    bundle = Path(result.path)
    assert _manifest(bundle)["integrity_check"] == result.integrity_check
    assert (bundle / "prompts_export.json").exists()
    assert any(e["event"] == "backup_integrity_failed" and e["log_level"] == "warning" for e in logs)
    text = result.text()
    assert "INTEGRITY CHECK FAILED" in text and "WARNING" in text


def test_progress_line_on_request_only(settings, capsys):
    grow_db(settings.paths.db, 4)
    quiet = create.create_backup(settings, trigger="manual")
    assert capsys.readouterr().err == ""
    loud = create.create_backup(settings, trigger="manual", progress=True)
    err = capsys.readouterr().err
    assert "backup: snapshot" in err and "%" in err
    for result in (quiet, loud):
        db = Path(result.path) / "sparkq.db"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        snap = _ro(db)
        assert snap.execute("SELECT count(*) FROM ballast").fetchone()[0] == 64
        snap.close()


# --- retention settings -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "1e9", ""])
def test_invalid_keep_fails_before_anything_is_written_or_deleted(settings, monkeypatch, bad):
    fake_clock(monkeypatch, datetime(2021, 1, 1, tzinfo=timezone.utc), timedelta(days=1))
    for _ in range(3):
        create.write_bundle(settings, trigger="manual")
    (settings.paths.backup_dir / ".tmp-sparkq_20200101_000000-999999999").mkdir()
    before = _entries(settings.paths.backup_dir)
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", bad)
    with pytest.raises(ConfigError, match="SPARKQ_BACKUP_KEEP"):
        create.create_backup(settings, trigger="manual")
    assert _entries(settings.paths.backup_dir) == before


# --- failures ---------------------------------------------------------------------------------


def _fsize_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_disk_full_gives_one_clear_line_and_leaves_nothing(project, settings):
    old = create.create_backup(settings, trigger="manual")
    old_files = {rel: sha256_file(Path(old.path) / rel) for rel in _bundle_files(Path(old.path))}
    grow_db(settings.paths.db, 3)
    proc = subprocess.run([str(SPARKQ_BIN), "backup"], cwd=project.root, env=project.env, capture_output=True,
                          text=True, timeout=120, preexec_fn=_fsize_limit(1 << 20))
    assert proc.returncode == 1, proc.stderr
    line = _one_line_error(proc)
    assert line.startswith("sparkq: backup failed:") and "df -h" in line, line
    assert _entries(settings.paths.backup_dir) == {old.name, ".retention.lock"}
    assert {rel: sha256_file(Path(old.path) / rel) for rel in old_files} == old_files


def test_backup_dir_that_is_a_file(project, settings):
    settings.paths.backup_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.paths.backup_dir.write_text("not a dir")
    with pytest.raises(BackupFailed, match="is not a directory") as info:
        create.create_backup(settings, trigger="manual")
    assert "\n" not in str(info.value)
    proc = project.cli("backup")
    assert proc.returncode == 1
    assert "not a directory" in _one_line_error(proc)
    assert settings.paths.backup_dir.read_text() == "not a dir"


def test_backup_dir_below_a_file(project, settings):
    (project.root / "blocker").write_text("x")
    project.write_config("backup:\n  dir: blocker/backups\n")
    with pytest.raises(BackupFailed, match="not a directory"):
        create.create_backup(config.load(), trigger="manual")


def test_database_that_is_not_sqlite(settings):
    settings.paths.db.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(BackupFailed, match="is not a SQLite database") as info:
        create.create_backup(settings, trigger="manual")
    assert "\n" not in str(info.value)
    assert _entries(settings.paths.backup_dir) == set()


_LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(120)
"""


def test_database_locked_past_lock_timeout(project, settings):
    project.write_config("backup:\n  lock_timeout: 1\n")
    s = config.load()
    conn = sqlite3.connect(s.paths.db)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conn.close()
    locker = project.popen(sys.executable, "-c", _LOCKER, str(s.paths.db), stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(BackupFailed) as info:
            create.create_backup(s, trigger="manual")
        elapsed = time.monotonic() - started
    finally:
        locker.kill()
        locker.wait()
    message = str(info.value)
    assert "locked" in message and "lock_timeout" in message and "stop the server" in message
    assert "\n" not in message
    assert 0.9 <= elapsed < 10
    assert not _temps(s.paths.backup_dir) and not scan(s.paths.backup_dir)[0]
    assert Path(create.create_backup(s, trigger="manual").path).is_dir()  # fine once the lock is gone


def test_backup_while_a_wal_writer_holds_its_write_lock(project, settings):
    """A running server holding a write transaction does not stop a backup (WAL readers go on)."""
    project.write_config("backup:\n  lock_timeout: 1\n")
    s = config.load()
    locker = project.popen(sys.executable, "-c", _LOCKER, str(s.paths.db), stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        result = create.create_backup(s, trigger="manual")
    finally:
        locker.kill()
        locker.wait()
    _assert_valid(Path(result.path))


def _without_dac_override():
    """preexec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so root after
    exec obeys permission bits like anyone else (needs CAP_SETPCAP, which root normally has)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_permission_denied_on_the_backup_dir(project, settings):
    # An existing backup dir of ours with the wrong mode is simply fixed (chmod 0700), so the
    # fault is a parent we may not write into.
    locked = project.root / "locked"
    locked.mkdir(mode=0o500)
    locked.chmod(0o500)
    project.write_config("backup:\n  dir: locked/backups\n")
    try:
        if os.geteuid() != 0:
            with pytest.raises(BackupFailed, match="permission") as info:
                create.create_backup(config.load(), trigger="manual")
            assert "\n" not in str(info.value)
            proc = project.cli("backup")
        else:
            probe = [sys.executable, "-c", f"open({str(locked / 'probe')!r}, 'w')"]
            try:
                check = subprocess.run(probe, capture_output=True, text=True, preexec_fn=_without_dac_override)
            except (OSError, subprocess.SubprocessError) as exc:
                pytest.skip(f"cannot drop CAP_DAC_OVERRIDE to make root obey permission bits: {exc}")
            if check.returncode == 0:
                pytest.skip("root still writes into a 0500 dir here (capabilities not droppable)")
            proc = subprocess.run([str(SPARKQ_BIN), "backup"], cwd=project.root, env=project.env,
                                  capture_output=True, text=True, timeout=120, preexec_fn=_without_dac_override)
        assert proc.returncode == 1, proc.stderr
        line = _one_line_error(proc)
        assert line.startswith("sparkq: backup failed:") and "permission" in line.lower(), line
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


def test_leftover_temp_dirs_of_dead_writers_are_ignored_then_removed(settings):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    backup_dir = settings.paths.backup_dir
    backup_dir.mkdir(parents=True)
    stale = backup_dir / f".tmp-sparkq_20200101_000000-{dead_pid}"
    (stale / "setup_templates").mkdir(parents=True)
    (stale / "sparkq.db").write_bytes(b"half")
    alive = backup_dir / f".tmp-sparkq_20200101_000001-{os.getpid()}"
    alive.mkdir()
    assert scan(backup_dir) == ([], [])
    result = create.create_backup(settings, trigger="manual")
    assert not stale.exists() and alive.exists()
    assert [e.name for e in scan(backup_dir)[0]] == [result.name]


def test_a_failed_backup_prunes_nothing(settings, monkeypatch):
    fake_clock(monkeypatch, datetime(2021, 1, 1, tzinfo=timezone.utc), timedelta(days=1))
    for _ in range(3):
        create.write_bundle(settings, trigger="manual")
    before = _entries(settings.paths.backup_dir)
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", "1")
    settings.paths.db.write_bytes(b"garbage" * 100)
    with pytest.raises((BackupFailed, UsageError)):  # refused before the snapshot, since it is not SQLite
        create.create_backup(settings, trigger="manual")
    assert _entries(settings.paths.backup_dir) == before


def test_pre_restore_bundle_with_a_linked_db(settings):
    path = create.write_bundle(settings, trigger="pre-restore", prefix=PRE_RESTORE_PREFIX, link_db=True)
    assert re.fullmatch(r"sparkq_preRestore_\d{8}_\d{6}", path.name)
    assert os.path.samefile(path / "sparkq.db", settings.paths.db)
    m = _manifest(path)
    assert m["trigger"] == "pre-restore" and m["integrity_check"] == "ok"
    assert m["checksums"]["sparkq.db"] == sha256_file(settings.paths.db)
    _, pre = scan(settings.paths.backup_dir)
    assert [e.name for e in pre] == [path.name]
