"""The original's loose pre-restore files (`sparkq_preRestore_TS.db/.yml/.env`) are one backup,
listed and shown with all three members (issue 12 item 6)."""

from __future__ import annotations

import json

from original import make_original_pre_restore


def test_loose_pre_restore_env_is_listed_with_its_siblings(project):
    db, yml, env = make_original_pre_restore(project.backup_dir, "20251120_081500")
    listing = project.cli("backup-list", "--json")
    assert listing.returncode == 0, listing.stderr
    pre = json.loads(listing.stdout)["pre_restore"]
    assert [(e["name"], e["config_file"], e["env_file"]) for e in pre] == [(db.name, True, True)]
    assert not any(e["name"].endswith(".env") for e in json.loads(listing.stdout)["backups"])

    show = project.cli("backup-show", "sparkq_preRestore_20251120_081500", "--json")
    assert show.returncode == 0, show.stderr
    assert [f["path"] for f in json.loads(show.stdout)["files"]] == [db.name, yml.name, env.name]
    text = project.cli("backup-show", "sparkq_preRestore_20251120_081500")
    assert env.name in text.stdout
    assert "pre-restore-secret" not in text.stdout + show.stdout  # names only, never .env contents


def test_a_legacy_backup_answers_for_its_env_member(project):
    from supervisor import config
    from supervisor.backup import catalog

    _db, _yml, env = make_original_pre_restore(project.backup_dir, "20251120_081500")
    entry = catalog.resolve(config.load(), "sparkq_preRestore_20251120_081500")
    assert entry.member(".env") == env and entry.legacy_siblings[-1] == env
