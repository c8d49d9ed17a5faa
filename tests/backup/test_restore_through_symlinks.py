"""Backups, restores and undo through symlinked `database.path`, `sparkq.yml` and `.env`
(issue 11 item 4): the restored files land where the links point, and the links stay links."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from helpers import bundle_problems, ok


def _prompts(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT command FROM prompts")}
    finally:
        conn.close()


def _exec(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(sql)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.fixture
def linked(project, tmp_path):
    """A set-up project whose DB, sparkq.yml and .env are symlinks into another folder."""
    ok(project.cli("setup"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    links = {}
    for name, path in (("db", project.db), ("yml", project.config), ("env", project.root / ".env")):
        real = elsewhere / f"real-{name}"
        os.replace(path, real)
        os.symlink(real, path)
        links[name] = (path, real)
    return project, links


def _assert_links_kept(links) -> None:
    for path, real in links.values():
        assert path.is_symlink(), f"{path} is no longer a symlink"
        assert Path(os.readlink(path)) == real
        assert real.is_file() and not real.is_symlink()


@pytest.mark.parametrize("scope", [[], ["--db-only"], ["--config-only"]])
def test_restore_and_undo_through_symlinks(linked, scope):
    project, links = linked
    ok(project.cli("backup"))
    backup_yml = links["yml"][1].read_bytes()
    backup_env = links["env"][1].read_bytes()
    _exec(project.db, "INSERT INTO prompts (id, command) VALUES ('prm_after', 'after-backup')")
    links["yml"][1].write_text(backup_yml.decode() + "# edited after the backup\n")
    links["env"][1].write_text("EDITED=1\n")
    edited = (_prompts(project.db), links["yml"][1].read_bytes(), links["env"][1].read_bytes())

    out = ok(project.cli("backup-restore", "1", *scope, "--yes"))
    assert "symlink" in out.stdout  # the plan says where the files really go
    _assert_links_kept(links)
    if scope != ["--config-only"]:
        assert "after-backup" not in _prompts(project.db)
    if scope != ["--db-only"]:
        assert links["yml"][1].read_bytes() == backup_yml
        assert links["env"][1].read_bytes() == backup_env
    pre = sorted(project.backup_dir.glob("sparkq_preRestore_*"))
    assert len(pre) == 1 and bundle_problems(pre[0]) == []
    assert ok(project.cli("backup-verify", pre[0].name)).stdout.startswith("ok")

    undo = out.stdout.split("undo: ", 1)[1].splitlines()[0].split()
    assert undo[:2] == ["./sparkq.sh", "backup-restore"]
    ok(project.cli(*undo[1:]))
    _assert_links_kept(links)
    assert (_prompts(project.db), links["yml"][1].read_bytes(), links["env"][1].read_bytes()) == edited


def test_database_path_in_sparkq_yml_pointing_at_a_symlink(project, tmp_path):
    """database.path itself names a link (not the default path): the same holds."""
    real = tmp_path / "disk" / "sparkq.db"
    real.parent.mkdir()
    link = project.root / "db-link.db"
    link.symlink_to(real)
    project.write_config(f"database:\n  path: {link}\n")
    ok(project.cli("setup"))
    assert real.is_file() and link.is_symlink()
    ok(project.cli("backup"))
    _exec(real, "DELETE FROM prompts")
    ok(project.cli("backup-restore", "1", "--db-only", "--yes"))
    assert link.is_symlink() and real.is_file()
    assert len(_prompts(real)) > 0
