"""The `offsite:` section and the secrets rules, without a repository."""

from __future__ import annotations

import shutil

from supervisor.backup.restic import redact


def test_redact_hides_url_passwords():
    assert redact("rest:https://user:s3cr3t@host:8000/repo") == "rest:https://user:***@host:8000/repo"
    assert redact('Head "http://u:p%40ss@127.0.0.1:1/config": refused') == 'Head "http://u:***@127.0.0.1:1/config": refused'
    assert redact("sftp:user@host:/srv/repo") == "sftp:user@host:/srv/repo"
    assert redact("/var/backups/repo") == "/var/backups/repo"


def test_keep_policy_is_checked(project):
    project.write_config("offsite:\n  repository: /tmp/x\n  keep: {daily: 0}\n")
    bad = project.cli("backup-list", "--offsite")
    assert bad.returncode == 2 and "'offsite.keep' must be a mapping of last/daily/weekly/monthly" in bad.stderr
    project.write_config("offsite:\n  repository: /tmp/x\n  keep: {hourly: 3}\n")
    assert project.cli("backup-list", "--offsite").returncode == 2


def test_lock_timeout_is_checked(project):
    for bad_value in ("0", "-5", "soon"):
        project.write_config(f"offsite:\n  repository: /tmp/x\n  lock_timeout: {bad_value}\n")
        bad = project.cli("backup-list", "--offsite")
        assert bad.returncode == 2 and "'offsite.lock_timeout' must be a number of seconds > 0" in bad.stderr


def test_missing_password_file_says_what_to_do(project, tmp_path):
    project.write_config(f"offsite:\n  repository: {tmp_path / 'repo'}\n  password_file: {tmp_path / 'nope'}\n")
    out = project.cli("backup-list", "--offsite")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "mode 600" in out.stderr


def test_not_configured_is_one_line(project):
    out = project.cli("backup-push")
    assert out.returncode == 2 and "not configured" in out.stderr and out.stderr.count("\n") == 1


def test_restic_missing_names_the_install(project, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o600)
    project.write_config(f"offsite:\n  repository: {tmp_path / 'repo'}\n  password_file: {pw}\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # A PATH with our Python but without restic.
    python = shutil.which("python3")
    (bindir / "python3").symlink_to(python)
    out = project.cli("backup-list", "--offsite", env={"PATH": str(bindir)})
    assert out.returncode == 1 and "apt-get install restic" in out.stderr and out.stderr.count("\n") == 1
    assert project.cli("status", env={"PATH": str(bindir)}).returncode == 3  # status never needs restic


def test_env_file_readable_by_others_is_refused(project, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o600)
    creds = tmp_path / "restic.env"
    creds.write_text("AWS_SECRET_ACCESS_KEY=never-show-this\n")
    creds.chmod(0o644)
    project.write_config(f"offsite:\n  repository: s3:s3.example.com/bucket\n  password_file: {pw}\n"
                         f"  env_file: {creds}\n")
    out = project.cli("backup-list", "--offsite")
    assert out.returncode == 2 and f"chmod 600 {creds}" in out.stderr
    assert "never-show-this" not in out.stdout + out.stderr
