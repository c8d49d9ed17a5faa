"""supervisor.config: defaults, validation errors that name the key, lenient recovery loading."""

from __future__ import annotations

import pytest

from supervisor import config
from supervisor.errors import ConfigError


def load(project, text: str, **kw):
    project.config.write_text(text)
    return config.load(**kw)


def test_defaults_when_sections_missing(project):
    s = load(project, "server:\n  port: 6001\n")
    assert s.port == 6001
    assert s.host == "127.0.0.1"
    assert s.stop_timeout == 10 and s.start_timeout == 30 and s.command is None
    assert (s.restart, s.backoff_max, s.start_retries, s.retry_window) == ("on-failure", 60, 5, 600)
    assert (s.health_interval, s.health_failures) == (10, 3)
    assert s.paths.db == project.root / "sparkq/data/sparkq.db"
    assert s.paths.backup_dir == project.root / "sparkq/data/backups"
    assert s.backup_keep() == 7


@pytest.mark.parametrize(
    "text, needle",
    [
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  port: '5005'\n", "server.port"),
        ("server:\n  stop_timeout: -1\n", "server.stop_timeout"),
        ("server:\n  command: run-me\n", "server.command"),
        ("backup:\n  keep: 0\n", "backup.keep"),
        ("server:\n  - a\n  - b\n", "'server' must be a mapping"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("server:\n\tport: 1\n", "line 2"),
        ("database:\n  path: [1, 2]\n", "database.path"),
    ],
)
def test_errors_name_the_key(project, text, needle):
    with pytest.raises(ConfigError) as err:
        load(project, text)
    msg = str(err.value)
    assert needle in msg
    assert "sparkq.yml" in msg
    assert "\n" not in msg


def test_unknown_keys_warn(project):
    s = load(project, "server:\n  colour: blue\nmystery: 1\npurge:\n  older_than_days: 3\n")
    assert any("server.colour" in w for w in s.warnings)
    assert any("mystery" in w for w in s.warnings)
    assert not any("purge" in w for w in s.warnings)


def test_lenient_keeps_every_good_key_when_one_value_is_bad(project):
    s = load(project, "server:\n  stop_timeout: ten\n  port: 4723x\ndatabase:\n  path: mydata/q.db\n",
             lenient=True)
    assert s.paths.db == project.root / "mydata/q.db"
    assert "'server.stop_timeout' must be" in s.notice and "(and 1 more)" in s.notice
    assert s.stop_timeout == 10 and s.port == 5005  # the defaults, for those keys only
    with pytest.raises(config.ConfigError, match="server.stop_timeout"):
        load(project, "server:\n  stop_timeout: ten\n")


def test_lenient_falls_back_with_notice(project):
    s = load(project, "server: [\n", lenient=True)
    assert s.notice and "using default paths" in s.notice
    assert s.paths.db == project.root / "sparkq/data/sparkq.db"
    project.config.unlink()
    s = config.load(lenient=True)
    assert "not found" in s.notice


def test_not_utf8_is_a_config_error(project):
    project.config.write_bytes(b"server:\n  host: \xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        config.load()


def test_relative_paths_resolve_against_config_folder(project, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "alt.yml").write_text("database:\n  path: db/x.db\nbackup:\n  dir: bk\n")
    monkeypatch.setenv("SPARKQ_CONFIG", str(other / "alt.yml"))
    s = config.load()
    assert s.paths.db == other / "db/x.db"
    assert s.paths.backup_dir == other / "bk"
    assert s.paths.pidfile == other / "db/x.pid"  # runtime files follow the database (issue 11.8)


@pytest.mark.parametrize("raw", ["0", "-3", "abc", "1e9", "", "2.5", "\u00b2", "\u0663"])
def test_keep_env_rejects_non_whole_numbers(project, monkeypatch, raw):
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", raw)
    with pytest.raises(ConfigError, match="SPARKQ_BACKUP_KEEP"):
        config.load().backup_keep()


def test_keep_env_wins_over_file(project, monkeypatch):
    s = load(project, "backup:\n  keep: 3\n")
    assert s.backup_keep() == 3
    monkeypatch.setenv("SPARKQ_BACKUP_KEEP", "14")
    assert s.backup_keep() == 14


@pytest.mark.parametrize("line", ["restart: sometimes", "start_retries: 0", "health_interval: -1",
                                  "backoff_max: 0", "health_failures: 0", "retry_window: 0"])
def test_supervision_keys_are_validated(project, line):
    with pytest.raises(ConfigError, match=line.split(":")[0]):
        load(project, f"server:\n  {line}\n")


@pytest.mark.parametrize("url,good", [("/health", True), ("/api/health?x=1", True), ("health", False),
                                      ("ftp://x/health", False), ("http://127.0.0.1:8000/health", True),
                                      ("https://example.test/h", True), ("http://:80/", False),
                                      ("http://h:port/", False), ("/he alth", False)])
def test_health_url_is_a_path_or_an_http_url(project, url, good):
    text = f"server:\n  health_url: {url!r}\n"
    if good:
        assert load(project, text).values["server.health_url"] == url
    else:
        with pytest.raises(ConfigError, match="server.health_url"):
            load(project, text)


def test_a_mistyped_config_file_is_an_error_for_every_command(project):
    # status and stop load leniently, but defaults beside a name that does not exist would call
    # a running server stopped: a missing --config (or SPARKQ_CONFIG) file is exit 2 for all.
    for command in ("status", "stop", "backup-list"):
        proc = project.cli("--config", "sparkq-typo.yml", command)
        assert proc.returncode == 2 and "config file not found" in proc.stderr, (command, proc.stderr)
