"""Retention in supervisor/backup/retention.py: newest `keep` regular backups stay, in catalog order."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import fake_clock
from supervisor import config
from supervisor.backup import create, retention
from supervisor.backup.catalog import scan
from supervisor.backup.layout import PRE_RESTORE_PREFIX
from supervisor.errors import UsageError
from supervisor.setup import run_setup

_REAL_NOW = create._now


@pytest.fixture
def settings(project):
    s = config.load()
    run_setup(s)
    return s


def _legacy(backup_dir: Path, stamp: str, yml: bool) -> list[str]:
    backup_dir.mkdir(parents=True, exist_ok=True)
    db = backup_dir / f"sparkq_{stamp}.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE prompts(id TEXT)")
    conn.commit()
    conn.close()
    names = [db.name]
    if yml:
        (backup_dir / f"sparkq_{stamp}.yml").write_text("server:\n  port: 5005\n")
        names.append(f"sparkq_{stamp}.yml")
    return names


def _populate(settings, monkeypatch) -> dict:
    """Two legacy files (2020), six bundles (2021), one pre-restore bundle (2019)."""
    backup_dir = settings.paths.backup_dir
    legacy_old = _legacy(backup_dir, "20200101_000000", yml=True)
    legacy_new = _legacy(backup_dir, "20200102_000000", yml=False)
    fake_clock(monkeypatch, datetime(2019, 6, 1, tzinfo=timezone.utc), timedelta(days=1))
    pre = create.write_bundle(settings, trigger="pre-restore", prefix=PRE_RESTORE_PREFIX).name
    fake_clock(monkeypatch, datetime(2021, 1, 1, tzinfo=timezone.utc), timedelta(days=1))
    bundles = [create.write_bundle(settings, trigger="start").name for _ in range(6)]
    monkeypatch.setattr(create, "_now", _REAL_NOW)
    return {"legacy_old": legacy_old, "legacy_new": legacy_new, "pre": pre, "bundles": bundles}


def test_keep_three_over_bundles_legacy_files_and_a_pre_restore(settings, monkeypatch):
    made = _populate(settings, monkeypatch)
    backup_dir = settings.paths.backup_dir
    regular, pre = scan(backup_dir)
    assert [e.name for e in regular] == [*reversed(made["bundles"]), made["legacy_new"][0], made["legacy_old"][0]]
    assert [e.name for e in pre] == [made["pre"]]

    pruned = retention.prune(settings, 3)
    assert pruned == [*reversed(made["bundles"][:3]), made["legacy_new"][0], made["legacy_old"][0]]
    left = set(os.listdir(backup_dir)) - {".retention.lock"}
    assert left == {*made["bundles"][3:], made["pre"]}  # legacy .db and its .yml gone too
    regular, pre = scan(backup_dir)
    assert [e.name for e in regular] == list(reversed(made["bundles"][3:]))
    assert [e.name for e in pre] == [made["pre"]]
    assert retention.prune(settings, 3) == []


def test_legacy_files_count_with_bundles(settings, monkeypatch):
    made = _populate(settings, monkeypatch)
    assert retention.prune(settings, 7) == [made["legacy_old"][0]]
    left = set(os.listdir(settings.paths.backup_dir))
    assert not set(made["legacy_old"]) & left and made["legacy_new"][0] in left


def test_create_backup_applies_env_keep_after_publishing(settings, monkeypatch):
    made = _populate(settings, monkeypatch)
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", "3")
    result = create.create_backup(settings, trigger="manual")
    regular, pre = scan(settings.paths.backup_dir)
    assert [e.name for e in regular] == [result.name, made["bundles"][5], made["bundles"][4]]
    assert [e.name for e in pre] == [made["pre"]]
    assert len(result.pruned) == 6 and "pruned 6 old backups" in result.text()


def test_keep_from_sparkq_yml_when_env_is_unset(project, settings, monkeypatch):
    fake_clock(monkeypatch, datetime(2021, 1, 1, tzinfo=timezone.utc), timedelta(days=1))
    for _ in range(4):
        create.write_bundle(settings, trigger="start")
    monkeypatch.setattr(create, "_now", _REAL_NOW)
    monkeypatch.delenv("SPARKQ_BACKUP_KEEP", raising=False)
    project.write_config("backup:\n  keep: 2\n")
    result = create.create_backup(config.load(), trigger="manual")
    assert len(scan(settings.paths.backup_dir)[0]) == 2 and len(result.pruned) == 3


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_prune_rejects_a_bad_keep(settings, bad):
    with pytest.raises(UsageError):
        retention.prune(settings, bad)


def test_prune_without_a_backup_dir_is_a_no_op(settings):
    assert not settings.paths.backup_dir.exists()
    assert retention.prune(settings, 1) == []


def test_a_backup_never_prunes_itself(settings, monkeypatch):
    """Bundles dated in the future (a clock set back since) sort first; the new one survives."""
    fake_clock(monkeypatch, datetime(2099, 1, 1, tzinfo=timezone.utc), timedelta(days=1))
    future = [create.write_bundle(settings, trigger="manual").name for _ in range(2)]
    monkeypatch.setattr(create, "_now", _REAL_NOW)
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", "1")
    result = create.create_backup(settings, trigger="manual")
    assert result.name not in result.pruned
    assert (settings.paths.backup_dir / result.name).is_dir()
    assert result.pruned == [future[0]]  # the newest by date stays too


def test_the_newest_good_backup_outlives_a_run_of_damaged_ones(settings, monkeypatch):
    good = create.create_backup(settings, trigger="start").name
    conn = sqlite3.connect(settings.paths.db)  # damage an index: still opens, integrity fails
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type='index' LIMIT 1").fetchone()[0]
    conn.close()
    page = 4096 * (root - 1)
    with open(settings.paths.db, "r+b") as fh:
        fh.seek(page + 8)
        fh.write(b"\xff" * 64)
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", "2")
    damaged = [create.create_backup(settings, trigger="start") for _ in range(4)]
    assert all(r.integrity_check != "ok" for r in damaged)
    names = [e.name for e in scan(settings.paths.backup_dir)[0]]
    assert good in names, "the last good backup was pruned"
    assert names[:2] == [damaged[-1].name, damaged[-2].name]
