"""sparkq.yml: duplicate keys are refused (issue 11, small ones), and the original SparkQ's own
sections pass through without warnings while a wildcard host is never silent (issue 12.9)."""

from __future__ import annotations

import pytest

from helpers import one_line_error
from supervisor import config
from supervisor.errors import ConfigError

# The sparkq.yml the original SparkQ writes (its sections and keys, see ORIGINAL.md).
ORIGINAL_YML = """\
project:
  name: sparkq-local
  repo_path: .

server:
  host: 0.0.0.0
  port: {port}

database:
  path: sparkq/data/sparkq.db
  mode: wal

purge:
  older_than_days: 3

sparkq_scripts_dir: sparkq/scripts
script_dirs:
  - sparkq/scripts/tools

task_classes:
  FAST_SCRIPT:
    timeout: 120

tools:
  run-bash:
    description: Bash script
    task_class: FAST_SCRIPT

queue_runner:
  poll_interval: 30
  base_url: http://localhost:5005

features:
  flags: {{}}

defaults:
  queue: {{}}
  model: llm-sonnet
"""


@pytest.mark.parametrize("text, key, line", [
    ("server:\n  port: 6001\nbackup:\n  keep: 3\nserver:\n  port: 6002\n", "server", 5),
    ("server:\n  port: 6001\n  host: 127.0.0.1\n  port: 6002\n", "port", 4),
    ("server: {port: 1, port: 2}\n", "port", 1),
])
def test_duplicate_keys_are_refused_with_file_key_and_line(project, text, key, line):
    project.config.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load()
    msg = str(err.value)
    assert str(project.config) in msg and f"'{key}'" in msg and f"line {line}" in msg, msg
    assert "\n" not in msg


def test_duplicate_key_stops_a_command(project):
    project.config.write_text(project.config.read_text() + f"server:\n  port: {project.port}\n")
    line = one_line_error(project.cli("start"), codes={2})
    assert "appears twice" in line and "sparkq.yml" in line


def test_duplicate_key_is_not_hidden_by_the_parse_cache(project):
    """A parse cached before the check existed must not let the file through."""
    text = "server:\n  port: 6001\nserver:\n  port: 6002\n"
    project.config.write_text(text)
    with pytest.raises(ConfigError):
        config.load()
    with pytest.raises(ConfigError):  # and again, now that a cache could exist
        config.load()


def test_original_sections_pass_through_without_warnings(project):
    project.config.write_text(ORIGINAL_YML.format(port=project.port))
    settings = config.load()
    assert settings.warnings == []
    assert settings.port == project.port
    result = project.cli("status")
    assert "unknown key" not in result.stderr, result.stderr


def test_unknown_keys_inside_our_sections_still_warn(project):
    project.config.write_text(ORIGINAL_YML.format(port=project.port).replace(
        "  mode: wal\n", "  mode: delete\n  colour: blue\n"))
    warnings = config.load().warnings
    assert any("database.mode" in w for w in warnings), warnings
    assert any("database.colour" in w for w in warnings), warnings
    assert len(warnings) == 2, warnings


def test_status_says_the_wildcard_host_exposes_the_api(project):
    project.config.write_text(ORIGINAL_YML.format(port=project.port))
    result = project.cli("status")
    assert result.returncode == 3
    text = result.stdout + result.stderr
    assert "0.0.0.0" in text and "other machines" in text, text
