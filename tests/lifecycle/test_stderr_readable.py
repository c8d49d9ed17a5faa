"""Outside a terminal, stderr carries readable one-line messages, never raw JSON log lines; the
log file keeps the JSON."""

from __future__ import annotations

import json


def test_warnings_on_stderr_are_readable_lines_and_json_stays_in_the_log(project, fake):
    (project.root / ".env").write_text("this is not a KEY=VALUE line\n")
    result = project.cli("start", "--skip-backup")  # not a TTY: captured
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "expected the .env warning"
    for line in lines:
        assert not line.lstrip().startswith("{"), result.stderr
        assert line.startswith("sparkq: "), line
    assert any("env_file_lines_skipped" in line and "lines=[1]" in line for line in lines), result.stderr
    log = project.root / "sparkq" / "logs" / "supervisor.log"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["event"] == "env_file_lines_skipped" for e in events)
    assert project.cli("stop").returncode == 0
