"""sparkq/scripts/restore_database.sh and backup_database.sh: every verb maps onto ./sparkq.sh."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import REPO

SCRIPTS = REPO / "sparkq" / "scripts"
RESTORE_SH = SCRIPTS / "restore_database.sh"
BACKUP_SH = SCRIPTS / "backup_database.sh"
VERBS = ("list", "show", "restore", "restore-config", "restore-env", "restore-templates",
         "export-config", "export-tools", "export-prompts")


def _run(project, script, *args, cwd="/"):
    """Run a script from an unrelated cwd: it must find the repo by itself."""
    return subprocess.run([str(script), *args], cwd=cwd, env=project.env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def backed_up(project):
    assert project.sh("setup").returncode == 0
    proc = _run(project, BACKUP_SH)
    assert proc.returncode == 0, proc.stderr
    assert "backup sparkq_" in proc.stdout
    return project


def test_scripts_are_executable():
    for script in (RESTORE_SH, BACKUP_SH):
        assert os.access(script, os.X_OK), script


@pytest.mark.parametrize("args", [(), ("-h",), ("--help",)])
def test_usage_lists_every_verb(project, args):
    proc = _run(project, RESTORE_SH, *args)
    assert proc.returncode == 0
    for verb in VERBS:
        assert verb in proc.stdout


def test_unknown_verb_and_missing_number_are_usage_errors(project):
    proc = _run(project, RESTORE_SH, "frobnicate")
    assert proc.returncode == 2
    assert "unknown verb 'frobnicate'" in proc.stderr and "export-prompts" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, not the whole usage
    assert proc.stdout == ""
    missing = _run(project, RESTORE_SH, "show")
    assert missing.returncode == 2 and "needs a backup number" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_read_only_verbs(backed_up):
    project = backed_up
    listing = _run(project, RESTORE_SH, "list")
    assert listing.returncode == 0 and "sparkq_" in listing.stdout
    show = _run(project, RESTORE_SH, "show", "1")
    assert show.returncode == 0 and "manifest.json" in show.stdout
    for verb, key in (("export-config", "namespace"), ("export-tools", "task_class"), ("export-prompts", "command")):
        proc = _run(project, RESTORE_SH, verb, "1")
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        assert rows and key in rows[0]
    assert _run(project, RESTORE_SH, "show", "9").returncode == 4
    assert not list(project.backup_dir.glob("sparkq_preRestore_*"))


def test_restore_verbs(backed_up):
    project = backed_up
    env = project.root / ".env"
    good_yml, good_env = project.config.read_bytes(), env.read_bytes()

    project.config.write_text("# broken\n")
    asked = _run(project, RESTORE_SH, "restore-config", "1")  # no --yes, no terminal: refused
    assert asked.returncode == 2 and project.config.read_text() == "# broken\n"
    ok = _run(project, RESTORE_SH, "restore-config", "1", "--yes")
    assert ok.returncode == 0, ok.stderr
    assert project.config.read_bytes() == good_yml
    assert ".env" not in ok.stdout.split("Restored from")[1]  # sparkq.yml only

    env.write_text("OTHER=1\n")
    ok = _run(project, RESTORE_SH, "restore-env", "1", "--yes")
    assert ok.returncode == 0, ok.stderr
    assert env.read_bytes() == good_env

    # Templates live in the code checkout: look at the plan only (no --yes), change nothing.
    plan = _run(project, RESTORE_SH, "restore-templates", "1")
    assert plan.returncode == 2
    assert "setup_templates/sparkq.yml.example" in plan.stdout and "scripts/setup" in plan.stdout

    ok = _run(project, RESTORE_SH, "restore", "1", "--db-only", "--yes")
    assert ok.returncode == 0, ok.stderr
    assert "Restore complete" in ok.stdout
    assert len(list(project.backup_dir.glob("sparkq_preRestore_*"))) == 3


def test_backup_script_passes_arguments(backed_up):
    proc = _run(backed_up, BACKUP_SH, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"].startswith("sparkq_")
