"""Off-site copies to a local restic repository: push on backup, list, status, start's background
push, the password-file check, a wrong password, kill -9 mid-push."""

from __future__ import annotations

import json
import os
import signal
import subprocess


from offsite_helpers import PASSWORD, offsite_config, reap_pushers
from helpers import SPARKQ_BIN, descendants, grow_db, wait_until


def _restic_check(repo: str, password_file) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD_FILE": str(password_file)}
    return subprocess.run(["restic", "check", "--no-cache"], env=env, capture_output=True, text=True, timeout=120)


def _setup(project, repo, password_file):
    offsite_config(project, repo, password_file)
    assert project.cli("setup").returncode == 0


def test_backup_pushes_and_lists(hermetic_cache, local_repo, password_file):
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    made = project.cli("backup")
    assert made.returncode == 0, made.stderr
    name = made.stdout.split()[1]
    assert f"off-site: {name} -> snapshot" in made.stdout
    listed = project.cli("backup-list", "--offsite", "--json")
    assert listed.returncode == 0, listed.stderr
    snaps = json.loads(listed.stdout)["snapshots"]
    assert [(s["bundle"], s["trigger"]) for s in snaps] == [(name, "manual")]
    assert isinstance(snaps[0]["data_added"], int) and snaps[0]["project"]
    text = project.cli("backup-list", "--offsite")
    assert name in text.stdout and "manual" in text.stdout
    status = project.cli("status", "--json")
    assert json.loads(status.stdout)["offsite"]["pending"] == 0
    assert "off-site: up to date" in project.cli("status").stdout
    verified = project.cli("backup-verify", "--offsite")
    assert verified.returncode == 0 and "ok" in verified.stdout
    read = project.cli("backup-verify", "--offsite", "--read-data", "--json")
    assert read.returncode == 0 and json.loads(read.stdout)["ok"] is True
    for proc in (made, listed, text, status, verified):
        assert PASSWORD not in proc.stdout + proc.stderr


def test_verify_tells_a_damaged_repository_from_an_unreachable_one(hermetic_cache, local_repo, password_file):
    """A repository with a pack gone fails verification (exit 5); one that cannot be reached is an
    off-site failure (exit 1), not a verdict on the copies."""
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    assert project.cli("backup").returncode == 0
    packs = [os.path.join(d, f) for d, _s, files in os.walk(os.path.join(local_repo, "data")) for f in files]
    # The largest pack holds file data; restic retries a missing tree pack for about a minute.
    os.rename(max(packs, key=os.path.getsize), os.path.join(local_repo, "lost-pack"))
    damaged = project.cli("backup-verify", "--offsite")
    assert damaged.returncode == 5 and "FAILED" in damaged.stdout, damaged.stdout + damaged.stderr
    index = [os.path.join(d, f) for d, _s, files in os.walk(os.path.join(local_repo, "index")) for f in files][0]
    os.chmod(index, 0o600)
    intact = open(index, "rb").read()
    with open(index, "r+b") as fh:  # a damaged index is damage too
        fh.seek(40)
        fh.write(b"garbage")
    bad_index = project.cli("backup-verify", "--offsite")
    assert bad_index.returncode == 5 and "LoadIndex" in bad_index.stdout, bad_index.stdout + bad_index.stderr
    with open(index, "wb") as fh:
        fh.write(intact)
    offsite_config(project, local_repo, password_file, "  lock_timeout: 1\n")
    holder = _restic_holder(project, local_repo, password_file, "backup", "--stdin")
    try:  # a backup in progress holds a lock: check cannot take its exclusive one, and gives up
        locked = project.cli("backup-verify", "--offsite")
        assert locked.returncode == 1, locked.stdout + locked.stderr
        waited, gave_up = locked.stderr.strip().splitlines()
        assert "waiting for another restic" in waited and "over 1s" in gave_up, locked.stderr
        assert f"locked by another restic (PID {holder.pid} " in gave_up, locked.stderr
    finally:
        holder.kill()
        holder.wait(timeout=10)
    os.rename(local_repo, local_repo + "-unplugged")
    os.makedirs(local_repo)  # the mount point of a disk that is not there
    gone = project.cli("backup-verify", "--offsite")
    assert gone.returncode == 1, gone.stdout + gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1 and "Traceback" not in gone.stderr


def _restic_holder(project, repo: str, password_file, *args: str) -> subprocess.Popen:
    """A restic of the user's own, running against the repository, once its lock is there."""
    locks = os.path.join(repo, "locks")
    before = set(os.listdir(locks))
    holder = project.popen("restic", *args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={"RESTIC_REPOSITORY": repo,
                                                           "RESTIC_PASSWORD_FILE": str(password_file)})
    wait_until(lambda: set(os.listdir(locks)) - before, timeout=30, what="the holder's restic lock")
    return holder


def test_commands_wait_for_a_live_restic_lock(hermetic_cache, local_repo, password_file, tmp_path):
    """A listing while another restic holds the repository exclusively (the background push's
    `forget --prune`, a user's `check`) waits for it, says so, and then succeeds."""
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    assert project.cli("backup").returncode == 0
    # `key passwd` holds an exclusive lock while it reads the new password from stdin; at end of
    # input it gives up ("an empty password is not a password") and changes nothing.
    holder = _restic_holder(project, local_repo, password_file, "key", "passwd")
    err = tmp_path / "list.err"
    try:
        with open(err, "w") as fh:
            lister = project.popen(str(SPARKQ_BIN), "backup-list", "--offsite", "--json",
                                   stdout=subprocess.PIPE, stderr=fh, text=True)
        wait_until(lambda: "waiting for another restic" in err.read_text(), timeout=30,
                   what="the listing to say it waits")
        assert lister.poll() is None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 1
        out, _ = lister.communicate(timeout=60)
        assert lister.returncode == 0, err.read_text()
        assert [s["trigger"] for s in json.loads(out)["snapshots"]] == ["manual"]
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_dead_restics_lock_is_cleared_by_any_command(hermetic_cache, local_repo, password_file):
    """A restic killed with -9 (a push, a user's backup) leaves its lock behind: a check after it
    clears that lock at once, not only the next push."""
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    assert project.cli("backup").returncode == 0
    holder = _restic_holder(project, local_repo, password_file, "backup", "--stdin")
    holder.kill()
    holder.wait(timeout=10)
    assert os.listdir(os.path.join(local_repo, "locks"))
    verified = project.cli("backup-verify", "--offsite")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "waiting" not in verified.stderr
    assert not os.listdir(os.path.join(local_repo, "locks"))


def test_unchanged_bundle_dedups(hermetic_cache, local_repo, password_file):
    """A second push of the same state adds almost nothing: stable path, content-defined chunks."""
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    grow_db(project.db, 8)
    assert project.cli("backup").returncode == 0
    again = project.cli("backup", "--json")
    added = json.loads(again.stdout)["offsite"]["pushed"][0]["data_added"]
    assert added < 1 << 20, added


def test_start_pushes_in_the_background(hermetic_cache, local_repo, password_file):
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    started = project.cli("start")
    assert started.returncode == 0, started.stderr
    try:
        def pushed():
            info = json.loads(project.cli("status", "--json").stdout)["offsite"]
            return info["pending"] == 0 and info["last_push_at"]
        wait_until(pushed, timeout=60, what="the background push after start")
        # The push may still be running its first `forget --prune`: the listing waits for it.
        listed = project.cli("backup-list", "--offsite", "--json")
        assert listed.returncode == 0, listed.stderr
        snaps = json.loads(listed.stdout)["snapshots"]
        assert [s["trigger"] for s in snaps] == ["start"]
    finally:
        project.cli("stop")
        reap_pushers(project.root)


def test_password_file_readable_by_others_is_refused(hermetic_cache, local_repo, password_file):
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    password_file.chmod(0o644)
    listed = project.cli("backup-list", "--offsite")
    assert listed.returncode == 2
    assert listed.stderr.count("\n") == 1 and f"chmod 600 {password_file}" in listed.stderr
    made = project.cli("backup")  # the local backup still succeeds and says why nothing went off-site
    assert made.returncode == 0 and "off-site: push failed" in made.stdout and "chmod 600" in made.stdout
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 1


def test_wrong_password_is_one_clear_line(hermetic_cache, local_repo, password_file, tmp_path):
    project = hermetic_cache
    _setup(project, local_repo, password_file)
    assert project.cli("backup").returncode == 0
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    offsite_config(project, local_repo, wrong)
    listed = project.cli("backup-list", "--offsite")
    assert listed.returncode == 1 and listed.stdout == ""
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong password" in lines[0], listed.stderr
    pushed = project.cli("backup-push", "--all")
    assert pushed.returncode == 1 and "wrong password" in pushed.stdout
    assert "Traceback" not in pushed.stderr + listed.stderr
    for proc in (listed, pushed):
        assert "not-the-password" not in proc.stdout + proc.stderr and PASSWORD not in proc.stdout + proc.stderr


def test_kill9_mid_push_then_next_push_completes(hermetic_cache, local_repo, password_file):
    project = hermetic_cache
    project.write_config()
    assert project.cli("setup").returncode == 0
    grow_db(project.db, 96)
    assert project.cli("backup").returncode == 0  # local only: off-site not configured yet
    offsite_config(project, local_repo, password_file)
    pusher = project.popen(str(SPARKQ_BIN), "backup-push", start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restic_writing():
        kids = descendants(pusher.pid, "restic")
        data = os.path.join(local_repo, "data")
        written = os.path.isdir(data) and any(files for _d, _s, files in os.walk(data))
        return kids if written else None
    wait_until(restic_writing, timeout=60, interval=0.01, what="restic to start writing packs")
    os.killpg(pusher.pid, signal.SIGKILL)
    pusher.wait(timeout=10)
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 1
    again = project.cli("backup-push")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "-> snapshot" in again.stdout
    checked = _restic_check(local_repo, password_file)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(project.cli("status", "--json").stdout)["offsite"]["pending"] == 0


def test_projects_sharing_a_backup_dir_push_their_own_bundles(hermetic_cache, local_repo, password_file, tmp_path):
    """Two databases, one backup dir, one repository: each project pushes its own bundles, from
    its own stable folder, tagged with its own project id."""
    project = hermetic_cache
    shared = tmp_path / "shared-backups"
    second_db = tmp_path / "second" / "sparkq.db"
    base = f"backup:\n  dir: '{shared}'\n"
    offsite_config(project, local_repo, password_file, base)
    assert project.cli("setup").returncode == 0
    other = tmp_path / "other.yml"
    other.write_text(project.config.read_text() + f"database:\n  path: '{second_db}'\n")
    assert project.cli("--config", str(other), "setup").returncode == 0
    first = project.cli("backup")
    second = project.cli("--config", str(other), "backup")
    assert "-> snapshot" in first.stdout and "-> snapshot" in second.stdout, first.stdout + second.stdout
    snaps = json.loads(project.cli("backup-list", "--offsite", "--json").stdout)["snapshots"]
    assert len({s["project"] for s in snaps}) == 2 and len({s["path"] for s in snaps}) == 2
    assert not (shared / ".offsite-stage").exists()
