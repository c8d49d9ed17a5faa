"""issue 11.12: a value too large for exec in `.env` is blamed on `.env` and the variable, not on
server.command; the value itself is never printed."""

from __future__ import annotations

from helpers import assert_no_server, one_line_error


def test_huge_env_value_names_the_file_and_variable(project, fake):
    secret = "s3cr3t" + "x" * 200_000
    (project.root / ".env").write_text(f"FAKE_SMALL=1\nFAKE_HUGE_TOKEN={secret}\n")
    line = one_line_error(project.cli("start"))
    assert "FAKE_HUGE_TOKEN" in line and str(project.root / ".env") in line, line
    assert "server.command" not in line and "s3cr3t" not in line
    assert_no_server(project)


def test_too_much_in_env_all_together_names_the_largest(project, fake):
    """Each value fits, all of them together do not (the kernel's ARG_MAX)."""
    import os

    count = os.sysconf("SC_ARG_MAX") // 100_000 + 2
    lines = [f"FAKE_PART{i}={'z' * (100_000 + i)}" for i in range(count)]
    (project.root / ".env").write_text("\n".join(lines) + "\n")
    line = one_line_error(project.cli("start"))
    assert f"FAKE_PART{count - 1}" in line and ".env" in line and "limit" in line, line
    assert "server.command" not in line and "zzzz" not in line
    assert_no_server(project)
