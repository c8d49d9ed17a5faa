"""No value from .env ever reaches command output, --json, a log line or the pidfile.

A marker secret goes into .env; then every command a user runs, in text and JSON, verbose too,
including a refused restore and a real one. All outputs, every file in sparkq/logs/, the pidfile
and the server's command line are searched for it.
"""

from __future__ import annotations

import json

import psutil

SECRET_VALUE = "zz-secret-value-7f3a9c1e"
QUOTED_VALUE = "zz-quoted secret-b41d"


def test_env_values_never_printed_or_logged(project):
    env = project.root / ".env"
    runs: list[tuple[tuple[str, ...], int, str]] = []

    def run(*args: str, code: int = 0) -> None:
        proc = project.cli(*args)
        runs.append((args, proc.returncode, proc.stdout + proc.stderr))
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)

    run("setup")
    env.write_text(f"SPARKQ_API_KEY={SECRET_VALUE}\nexport OTHER_TOKEN=\"{QUOTED_VALUE}\"\n"
                   f"BROKEN LINE {SECRET_VALUE}-broken\n")
    run("-v", "start")
    pid = json.loads(project.pidfile.read_text())["pid"]
    cmdline = " ".join(psutil.Process(pid).cmdline())
    pidfile_text = project.pidfile.read_text()
    run("status")
    run("status", "--json")
    run("-v", "backup")
    run("backup", "--json")
    run("backup-list")
    run("backup-list", "--json")
    run("backup-show", "1")
    run("backup-show", "1", "--json")
    run("backup-verify")
    run("backup-verify", "--all", "--json")
    run("backup-export", "config", "1")
    run("backup-restore", "1", "--yes", code=6)  # refused: the server runs
    run("-v", "stop")
    run("-v", "backup-restore", "1", "--yes")
    run("backup-restore", "1", "--config-only", "--yes")
    run("restart")  # from stopped: starts, with its backup
    run("stop")

    logs = {p.name: p.read_text(errors="replace") for p in (project.root / "sparkq" / "logs").glob("*.log")}
    assert "supervisor.log" in logs and "server.log" in logs
    for secret in (SECRET_VALUE, QUOTED_VALUE):
        for args, _code, out in runs:
            assert secret not in out, f"`sparkq {' '.join(args)}` printed a .env value"
        for name, text in logs.items():
            assert secret not in text, f"{name} holds a .env value"
        assert secret not in pidfile_text and secret not in cmdline
    assert any("env_file_lines_skipped" in out or "env_file_lines_skipped" in logs["supervisor.log"]
               for _args, _code, out in runs), "the bad .env line was not reported (by line number)"
