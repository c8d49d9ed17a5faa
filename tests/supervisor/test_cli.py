"""The CLI layer: help, version, exit codes and one-line errors (through the real console script)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from helpers import SPARKQ_SH, one_line_error

BACKUP_GUIDE_COMMANDS = ["start", "run", "restart", "stop", "status", "setup", "backup-list", "backup-show",
                         "backup-restore", "export-prompts", "--db-only", "--config-only", "--yes", "logs",
                         "backoff", "fatal"]


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


def test_ctrl_c_outside_a_restore_is_one_line_and_exit_130(project):
    """Ctrl-C in any command ends as ours do: `sparkq: interrupted`, exit 130 (128 + SIGINT), not
    click's "Aborted!" with exit 1; an interrupted backup leaves no half-written bundle."""
    import signal

    from helpers import SPARKQ_BIN, grow_db, wait_until

    assert project.cli("setup").returncode == 0
    grow_db(project.db, 48)
    proc = project.popen(str(SPARKQ_BIN), "backup", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_until(lambda: any(p.name.startswith(".tmp-") for p in project.backup_dir.iterdir())
               if project.backup_dir.is_dir() else False, timeout=60, interval=0.002, what="the backup to begin")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["sparkq: interrupted"], err
    assert not [p for p in project.backup_dir.iterdir() if p.name.startswith((".tmp-", "sparkq_"))]
    bad = project.cli("backup-list", "--no-such-option")  # click's own usage errors keep exit 2
    assert bad.returncode == 2 and "no such option" in bad.stderr


USAGE_ERRORS = [
    (["start", "--bogus"], "no such option: --bogus; see ./sparkq.sh start --help"),
    (["logs", "-n", "-1"], "see ./sparkq.sh logs --help"),
    (["stop", "extra"], "unexpected extra argument"),
    (["backup-show"], "missing argument"),
    (["backup-export", "nope", "1"], "'nope' is not one of"),
    (["bogus"], "no such command 'bogus'"),
    (["--bogus"], "no such option: --bogus"),
    (["backup-verify", "--bogus"], "unknown option --bogus"),
    (["status", "--config", "x.yml"], "--config belongs before the command: ./sparkq.sh --config FILE status"),
    (["stat"], "Did you mean 'start', 'status', 'restart'? see ./sparkq.sh --help"),
]


@pytest.mark.parametrize("args,expected", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_and_exit_2(project, args, expected):
    line = one_line_error(project.cli(*args), codes={2})
    assert expected in line, line


def test_debug_adds_a_traceback_but_keeps_the_exit_code(project):
    assert project.cli("setup").returncode == 0
    plain = project.cli("backup-restore", "7", "--yes")
    debug = project.cli("--debug", "backup-restore", "7", "--yes")
    assert plain.returncode == debug.returncode == 4
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr


def test_sparkq_alone_shows_the_help(project):
    proc = project.cli()
    assert "Usage: sparkq" in proc.stdout + proc.stderr and "backup-restore" in proc.stdout + proc.stderr
