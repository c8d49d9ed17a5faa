"""Off-site defects found by a new user, one test per class (real restic, real repositories):
a damaged repository is never initialised over; one project's keep policy never touches
another's snapshots; what counts as pushed belongs to one repository; `latest` is the newest
bundle; refs, secrets and paths are handled as the docs say; nothing is fetched for a restore
that is refused; a damaged local copy is named, not silently used."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import live_state, one_line_error
from offsite_helpers import PASSWORD, offsite_config, reap_pushers


def _ok(proc):
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


def _restic(repo: str, password_file, *args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD_FILE": str(password_file)}
    return subprocess.run(["restic", "--no-cache", *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bundles(project) -> list[str]:
    return sorted(p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_2"))


def _snapshots(project) -> list[dict]:
    return json.loads(_ok(project.cli("backup-list", "--offsite", "--json")).stdout)["snapshots"]


@pytest.mark.parametrize("backend", ["local", "rest"])
def test_a_repository_without_its_config_is_never_initialised_over(hermetic_cache, local_repo, rest_server,
                                                                    password_file, backend):
    project = hermetic_cache
    repo = local_repo if backend == "local" else rest_server.url
    keys = (local_repo if backend == "local" else str(rest_server.root)) + "/keys"
    offsite_config(project, repo, password_file)
    _ok(project.cli("setup"))
    assert "-> snapshot" in _ok(project.cli("backup")).stdout
    before = sorted(os.listdir(keys))
    config = os.path.join(local_repo if backend == "local" else str(rest_server.root), "config")
    os.unlink(config)  # damaged: keys and data are there, the config is not
    made = _ok(project.cli("backup"))  # the local backup still succeeds
    assert "off-site: push failed" in made.stdout
    if backend == "local":  # (the REST server answers differently; neither is initialised over)
        assert "holds restic files (" in made.stdout and "keys" in made.stdout and "but no config" in made.stdout
        assert "does not initialise over it" in made.stdout
    assert sorted(os.listdir(keys)) == before and not os.path.exists(config)


def test_a_folder_with_other_files_is_still_initialised(hermetic_cache, local_repo, password_file):
    """A new drive's lost+found is not a damaged repository."""
    project = hermetic_cache
    os.makedirs(os.path.join(local_repo, "lost+found"))
    offsite_config(project, local_repo, password_file)
    _ok(project.cli("setup"))
    assert "-> snapshot" in _ok(project.cli("backup")).stdout


def test_forget_keeps_to_this_projects_snapshots(hermetic_cache, local_repo, password_file, tmp_path):
    project = hermetic_cache
    other = tmp_path / "other-project"
    other.mkdir()
    (other / "file").write_text("another project's data\n")
    assert _restic(local_repo, password_file, "init").returncode == 0
    for i in range(3):  # three snapshots of another project in the same repository
        (other / "file").write_text(f"version {i}\n")
        made = _restic(local_repo, password_file, "backup", "--tag", "sparkq", "--tag", "project:someone-else",
                       "--tag", f"sparkq_2020010{i}_000000", ".", cwd=other)
        assert made.returncode == 0, made.stderr
    offsite_config(project, local_repo, password_file, "  keep: {last: 1, daily: 1, weekly: 1, monthly: 1}\n")
    _ok(project.cli("setup"))
    pushed = _ok(project.cli("backup"))
    assert "applied the keep policy" in pushed.stdout  # the first push forgets at once
    theirs = [s for s in _snapshots(project) if s["project"] == "someone-else"]
    assert len(theirs) == 3


def test_pushed_means_pushed_to_the_configured_repository(hermetic_cache, local_repo, password_file, tmp_path):
    project = hermetic_cache
    offsite_config(project, local_repo, password_file)
    _ok(project.cli("setup"))
    _ok(project.cli("backup"))
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 0
    offsite_config(project, str(tmp_path / "another-repo"), password_file)
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 1
    assert "-> snapshot" in _ok(project.cli("backup-push")).stdout
    assert len(_snapshots(project)) == 1


def test_latest_is_the_newest_bundle_not_the_last_pushed(hermetic_cache, local_repo, password_file):
    project = hermetic_cache
    _ok(project.cli("setup"))
    _ok(project.cli("backup"))  # off-site not configured yet: both stay local
    _ok(project.cli("backup"))
    older, newer = _bundles(project)[:2]
    offsite_config(project, local_repo, password_file)
    _ok(project.cli("backup-push", newer))
    _ok(project.cli("backup-push", older))  # pushed last, taken first
    assert [s["bundle"] for s in _snapshots(project)] == [newer, older]
    os.rename(project.backup_dir / older, project.backup_dir.parent / older)  # out of the way
    os.rename(project.backup_dir / newer, project.backup_dir.parent / newer)
    out = _ok(project.cli("backup-restore", "--offsite", "latest", "--yes"))
    assert f"Restored from {newer}" in out.stdout


def test_refs_and_pre_restore_bundles(hermetic_cache, local_repo, password_file):
    project = hermetic_cache
    offsite_config(project, local_repo, password_file)
    _ok(project.cli("setup"))
    _ok(project.cli("backup"))
    _ok(project.cli("backup-restore", "1", "--db-only", "--yes"))
    pre = next(p.name for p in project.backup_dir.iterdir() if p.name.startswith("sparkq_preRestore_"))
    line = one_line_error(project.cli("backup-push", pre), codes={2})
    assert "pre-restore bundle" in line
    for ref in ("", " "):
        line = one_line_error(project.cli("backup-restore", "--offsite", ref, "--yes"), codes={2})
        assert "empty backup reference" in line


def test_a_refused_offsite_restore_downloads_nothing(hermetic_cache, local_repo, password_file, reaper):
    project = hermetic_cache
    offsite_config(project, local_repo, password_file)
    _ok(project.cli("setup"))
    _ok(project.cli("backup"))
    name = _bundles(project)[0]
    os.rename(project.backup_dir / name, project.backup_dir.parent / name)
    before = sorted(os.listdir(project.backup_dir))
    one_line_error(project.cli("backup-restore", "--offsite", name), codes={2})  # no terminal, no --yes
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sqlite3, sys; c = sqlite3.connect({str(project.db)!r}); "
                               "c.execute('BEGIN EXCLUSIVE'); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reaper.add(holder.pid)
    try:
        assert holder.stdout.readline().strip() == "ready"
        one_line_error(project.cli("backup-restore", "--offsite", name, "--yes"), codes={6})
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert sorted(os.listdir(project.backup_dir)) == before


def test_a_damaged_local_copy_is_named_and_a_dead_fetch_is_cleared(hermetic_cache, local_repo, password_file):
    project = hermetic_cache
    offsite_config(project, local_repo, password_file)
    _ok(project.cli("setup"))
    _ok(project.cli("backup"))
    name = _bundles(project)[0]
    db = project.backup_dir / name / "sparkq.db"
    db.write_bytes(db.read_bytes()[:-4096] + b"\0" * 4096)
    before = live_state(project)
    line = one_line_error(project.cli("backup-restore", "--offsite", name, "--yes"), codes={5})
    assert "local copy" in line and "move it out" in line
    assert live_state(project) == before
    os.rename(project.backup_dir / name, project.backup_dir.parent / "damaged")
    from supervisor.backup.offsite_repo import _HOST

    dead = project.backup_dir / f".tmp-offsite-fetch-{_HOST}-999999999"  # a fetch killed mid-download
    elsewhere = project.backup_dir / ".tmp-offsite-fetch-otherhost-999999999"  # another host's: not ours
    elsewhere.mkdir()
    dead.mkdir()
    (dead / "big").write_bytes(b"x" * 1024)
    _ok(project.cli("backup-restore", "--offsite", name, "--db-only", "--yes"))
    assert not dead.exists() and elsewhere.exists()
    _ok(project.cli("backup"))  # retention cleans dead writers' temps, but not other hosts' fetches
    assert elsewhere.exists()


def test_unreachable_bad_values_and_home_paths(hermetic_cache, password_file, tmp_path):
    project = hermetic_cache
    _ok(project.cli("setup"))
    offsite_config(project, f"rest:http://127.0.0.1:{_closed_port()}/", password_file)
    line = one_line_error(project.cli("backup-list", "--offsite"), codes={1})
    assert "cannot reach" in line and "no restic repository" not in line
    offsite_config(project, "/tmp/x", password_file, "  keep: {last: -1}\n")
    line = one_line_error(project.cli("backup-list", "--offsite"), codes={2})
    assert "offsite.keep" in line
    offsite_config(project, "/tmp/x", password_file, "  keep: {last: 99999999999999999999}\n")
    one_line_error(project.cli("backup-verify", "--offsite"), codes={2})
    home = tmp_path / "home"
    home.mkdir()
    project.env["HOME"] = str(home)
    offsite_config(project, "~/offsite-repo", password_file)
    _ok(project.cli("backup"))
    assert (home / "offsite-repo" / "config").is_file()
    assert not (project.root / "~").exists()


def test_secrets_in_a_repository_string_are_hidden():
    from supervisor.backup.restic import redact

    assert redact("rest:http://user:PW@with@at@127.0.0.1:8000/") == "rest:http://user:***@127.0.0.1:8000/"
    shown = redact("rclone::s3,access_key_id=AKIA1,secret_access_key=SECRET2:bucket/path")
    assert "AKIA1" not in shown and "SECRET2" not in shown and "bucket/path" in shown


def test_a_pending_bundle_with_no_failure_is_pushed_by_the_loop(hermetic_cache, local_repo, password_file,
                                                                 monkeypatch):
    """A push killed mid-way records no failure; the supervisor loop still pushes what is pending."""
    from supervisor import config
    from supervisor.signals import StopSignals
    from supervisor.supervise import Supervisor
    from supervisor.systemd import Notifier

    project = hermetic_cache
    _ok(project.cli("setup"))
    _ok(project.cli("backup"))  # before off-site was configured: pending, and no failure
    offsite_config(project, local_repo, password_file)
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 1
    monkeypatch.setenv("RESTIC_CACHE_DIR", project.env["RESTIC_CACHE_DIR"])  # the push child's env
    loop = Supervisor(config.load(), "run", Notifier(None), StopSignals(Notifier(None)))
    loop.next_offsite_check = 0.0
    loop.periodic()
    reap_pushers(project.root)
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 0
    assert PASSWORD not in project.cli("status").stdout
