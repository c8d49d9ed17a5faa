"""Issue 11.9: two projects sharing one backup.dir. Retention counts and prunes only this project's
bundles (and unmarked ones, like the original's); a restore plan warns loudly about a bundle
taken by another project. The project id survives moving the project folder."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

from helpers import T0, Project, base_env, free_port, make_bundle, stamp


def _pair(project, tmp_path, reaper):
    shared = tmp_path / "shared-backups"
    other_root = tmp_path / "other"
    other_root.mkdir()
    other = Project(root=other_root, port=free_port(), env=base_env(other_root), reaper=reaper)
    for p in (project, other):
        p.write_config(f"backup:\n  dir: {shared}\n")
        assert p.cli("setup").returncode == 0
    return shared, other


def _ids(shared) -> dict[str, str | None]:
    return {b.name: json.loads((b / "manifest.json").read_text()).get("project_id")
            for b in sorted(shared.glob("sparkq_2*"))}


def test_retention_prunes_only_this_projects_bundles(project, tmp_path, reaper, seed_db):
    shared, other = _pair(project, tmp_path, reaper)
    for _ in range(3):
        assert other.cli("backup").returncode == 0
    theirs = set(_ids(shared))
    unmarked = make_bundle(shared, f"sparkq_{stamp(T0 - timedelta(days=30))}", seed_db).name
    for _ in range(3):
        proc = project.cli("backup", env={"SPARKQ_BACKUP_KEEP": "2"})
        assert proc.returncode == 0, proc.stderr
    ids = _ids(shared)
    assert theirs <= set(ids), "another project's bundles were pruned"
    mine = [name for name in ids if name not in theirs]
    assert len(mine) == 2 and unmarked not in ids  # the unmarked one counted as ours, and went
    my_id = (project.root / "sparkq" / "data" / "project_id").read_text().strip()
    other_id = (other.root / "sparkq" / "data" / "project_id").read_text().strip()
    assert my_id != other_id
    assert {ids[n] for n in mine} == {my_id} and {ids[n] for n in theirs} == {other_id}

    # The other project keeps its own count too.
    assert other.cli("backup", env={"SPARKQ_BACKUP_KEEP": "1"}).returncode == 0
    assert [n for n, i in _ids(shared).items() if i == my_id] == mine


def test_restore_plan_warns_about_another_projects_bundle(project, tmp_path, reaper):
    shared, other = _pair(project, tmp_path, reaper)
    assert other.cli("backup").returncode == 0
    [theirs] = _ids(shared)
    yml_before = project.config.read_text()
    proc = project.cli("backup-restore", theirs, "--config-only")  # no terminal: plan, then refused
    assert proc.returncode != 0
    assert "WARNING" in proc.stdout and "ANOTHER PROJECT" in proc.stdout, proc.stdout
    assert "was taken of the database" in proc.stdout, proc.stdout
    assert project.config.read_text() == yml_before


def test_project_id_survives_moving_the_folder(project, tmp_path, reaper):
    shared, _other = _pair(project, tmp_path, reaper)
    assert project.cli("backup").returncode == 0
    [first] = _ids(shared).values()
    moved_root = tmp_path / "moved"
    shutil.move(project.root, moved_root)
    moved = Project(root=moved_root, port=project.port, env=base_env(moved_root), reaper=reaper)
    assert moved.cli("backup").returncode == 0
    assert set(_ids(shared).values()) == {first}


def test_two_databases_in_one_folder_are_two_projects(project):
    """Two configs in one root with databases side by side (sparkq/data/a.db, b.db) and the
    default backup dir: each config's retention leaves the other's bundles alone."""
    for name in ("a", "b"):
        (project.root / f"{name}.yml").write_text(
            f"server:\n  port: {project.port}\ndatabase:\n  path: sparkq/data/{name}.db\n")
        assert project.cli("--config", f"{name}.yml", "setup").returncode == 0
    for _ in range(3):
        assert project.cli("--config", "b.yml", "backup").returncode == 0
    theirs = set(_ids(project.backup_dir))
    for _ in range(2):
        proc = project.cli("--config", "a.yml", "backup", env={"SPARKQ_BACKUP_KEEP": "1"})
        assert proc.returncode == 0, proc.stderr
    assert theirs <= set(_ids(project.backup_dir)), "b's bundles were pruned by a's retention"
    assert len(set(_ids(project.backup_dir).values())) == 2


def test_an_emptied_database_is_told_to_restore_its_own_newest_bundle(project, tmp_path, reaper):
    """The refusal's advice names this project's newest bundle, not number 1 of the shared dir,
    which is another project's."""
    shared, other = _pair(project, tmp_path, reaper)
    assert project.cli("backup").returncode == 0
    [mine] = _ids(shared)
    assert other.cli("backup").returncode == 0  # now number 1 is theirs
    project.db.write_bytes(b"")
    refused = project.cli("backup")
    assert refused.returncode == 2, refused.stderr
    assert f"backup-restore {mine} --db-only" in refused.stderr, refused.stderr
    other.db.write_bytes(b"")
    assert "backup-restore 1 --db-only" in other.cli("backup").stderr  # its newest is number 1
