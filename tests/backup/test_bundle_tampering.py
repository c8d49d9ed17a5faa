"""A bundle of ours changed after it was written: every command that reads it refuses what its
checksums do not cover (exit 5), whatever the scope, and the live files stay as they were."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from helpers import live_state, ok, one_line_error


@pytest.fixture
def bundle(project) -> Path:
    ok(project.cli("setup"))
    ok(project.cli("backup"))
    return next(project.backup_dir.glob("sparkq_2*"))


def _stale_wal_beside(bundle: Path, tmp_path: Path) -> None:
    """A -wal that changes a prompt, made from a copy of the bundle's database and put beside it."""
    copy = tmp_path / "copy.db"
    shutil.copyfile(bundle / "sparkq.db", copy)
    conn = sqlite3.connect(copy, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE prompts SET template_text = 'STALE'")
    shutil.copyfile(f"{copy}-wal", bundle / "sparkq.db-wal")  # while open: the WAL is not folded yet
    conn.close()


@pytest.mark.parametrize("sidecar", ["-wal", "-journal"])
def test_a_sidecar_put_beside_our_database_is_refused_never_folded_in(project, bundle, tmp_path, sidecar):
    if sidecar == "-wal":
        _stale_wal_beside(bundle, tmp_path)
    else:
        (bundle / "sparkq.db-journal").write_bytes(os.urandom(4096))
    verified = project.cli("backup-verify", "1")
    assert verified.returncode == 5, verified.stdout
    assert f"sparkq.db{sidecar} is not part of the backup" in verified.stdout
    before = live_state(project)
    for args in (["--db-only"], []):
        line = one_line_error(project.cli("backup-restore", "1", *args, "--yes"), codes={5})
        assert "nothing was changed" in line
        assert live_state(project) == before
    (bundle / f"sparkq.db{sidecar}").unlink()
    ok(project.cli("backup-restore", "1", "--db-only", "--yes"))
    conn = sqlite3.connect(project.db)
    assert "STALE" not in {r[0] for r in conn.execute("SELECT template_text FROM prompts")}
    conn.close()


def _symlinked_manifest(bundle: Path) -> None:
    shutil.copyfile(bundle / "manifest.json", bundle.parent / "elsewhere.json")
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to(bundle.parent / "elsewhere.json")


def _no_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()


def _checksums_not_an_object(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["checksums"] = "abc"
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _env_not_listed(bundle: Path) -> None:
    """A bundle taken without a .env (the manifest lists none), then given one."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["checksums"][".env"]
    manifest["files"].remove(".env")
    manifest["env_file"] = False
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_symlinked_manifest, _no_manifest, _checksums_not_an_object, _env_not_listed])
@pytest.mark.parametrize("args", [["--config-only"], ["--only", "env"]], ids=["config-only", "only-env"])
def test_a_config_restore_of_a_tampered_bundle_places_nothing(project, bundle, damage, args):
    damage(bundle)
    (bundle / ".env").write_text("INJECTED=1\n")
    before = live_state(project)
    line = one_line_error(project.cli("backup-restore", "1", *args, "--yes"), codes={5})
    assert "nothing was changed" in line
    assert live_state(project) == before
    assert "INJECTED" not in (project.root / ".env").read_text()


def test_an_export_changed_since_the_backup_is_refused(project, bundle):
    (bundle / "prompts_export.json").write_bytes(b"")  # 0 bytes: the original's way of saying []
    for args in (["backup-export", "prompts", "1"], ["backup-restore", "1", "export-prompts"]):
        proc = project.cli(*args)
        line = one_line_error(proc, codes={5})
        assert "prompts_export.json" in line and "checksum" in line
        assert proc.stdout == ""
