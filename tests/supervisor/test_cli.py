"""The CLI layer: help, version, exit codes and one-line errors (through the real console script)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from helpers import SPARKQ_SH

BACKUP_GUIDE_COMMANDS = ["start", "run", "restart", "stop", "status", "setup", "backup-list", "backup-show",
                         "backup-restore", "export-prompts", "--db-only", "--config-only", "--yes"]


def test_sparkq_sh_help_names_every_guide_command(project):
    for args in ([], ["-h"], ["--help"]):
        proc = subprocess.run([str(SPARKQ_SH), *args], capture_output=True, text=True, env=project.env)
        assert proc.returncode == 0
        for word in BACKUP_GUIDE_COMMANDS:
            assert word in proc.stdout, word
        assert "restore_database.sh" in proc.stdout


def test_version_and_help_import_no_http_stack():
    code = (
        "import sys; from supervisor.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'httpx', 'pydantic', 'sqlite3') if m in sys.modules]\n"
        "print('LOADED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "LOADED []" in out


def test_setup_creates_env_0600_and_is_idempotent(project):
    project.config.unlink()
    first = project.cli("setup")
    assert first.returncode == 0, first.stderr
    assert "wrote sparkq.yml" in first.stdout
    env = project.root / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert project.db.exists()
    project.config.write_text(project.config.read_text() + "\n# mine\n")
    again = project.cli("setup", "--json")
    assert again.returncode == 0
    assert "# mine" in project.config.read_text()
    assert '"created_tables": []' in again.stdout


def test_config_error_is_one_line_exit_2(project):
    project.config.write_text("server:\n  port: 70000\n")
    proc = project.cli("start")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.port" in lines[0]
    assert "Traceback" not in proc.stderr


def test_unknown_command_is_usage_error(project):
    proc = project.cli("frobnicate")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_restore_flags_conflict_is_usage_error(project):
    proc = project.cli("backup-restore", "1", "--db-only", "--config-only", "--yes")
    assert proc.returncode == 2
    assert "cannot be combined" in proc.stderr


def test_no_env_values_in_help(project):
    os.environ  # noqa: B018 - the help must not depend on the environment
    proc = project.cli("--help")
    assert proc.returncode == 0
    assert "backup-restore" in proc.stdout
