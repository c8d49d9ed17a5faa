"""issue 11.12: a value too large for exec in `.env` is blamed on `.env` and the variable, not on
server.command; the value itself is never printed."""

from __future__ import annotations

import subprocess

from helpers import assert_no_server, one_line_error


def _start_error(project) -> str:
    """`start`'s one error line; the pre-start backup's line before it says the backup was taken
    all the same (the data-safety rule), so it is set aside here."""
    proc = project.cli("start")
    rest = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("backup "))
    return one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, rest))


def test_huge_env_value_names_the_file_and_variable(project, fake):
    secret = "s3cr3t" + "x" * 200_000
    (project.root / ".env").write_text(f"FAKE_SMALL=1\nFAKE_HUGE_TOKEN={secret}\n")
    line = _start_error(project)
    assert "FAKE_HUGE_TOKEN" in line and str(project.root / ".env") in line, line
    assert "server.command" not in line and "s3cr3t" not in line
    assert_no_server(project)


def test_too_much_in_env_all_together_names_the_largest(project, fake):
    """Each value fits, all of them together do not (the kernel's ARG_MAX)."""
    import os

    count = os.sysconf("SC_ARG_MAX") // 100_000 + 2
    lines = [f"FAKE_PART{i}={'z' * (100_000 + i)}" for i in range(count)]
    (project.root / ".env").write_text("\n".join(lines) + "\n")
    line = _start_error(project)
    assert f"FAKE_PART{count - 1}" in line and ".env" in line and "limit" in line, line
    assert "server.command" not in line and "zzzz" not in line
    assert_no_server(project)
