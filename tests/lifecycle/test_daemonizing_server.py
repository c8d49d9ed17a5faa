"""issue 11.11: a server command that daemonizes is detected, said so in one line, and what it
left is stopped: never an unknown server left behind. Two shapes: one that forks away at once
(double fork + setsid, the first process exits 0), and one that answers first and forks into the
background later, which its supervisor notices as an exit and cleans up after."""

from __future__ import annotations

from helpers import listening, wait_until


def _check_refused_and_cleaned(fake, result):
    project = fake.project
    for proc in fake.running():  # belt and braces for teardown
        project.reaper.add(proc.pid)
    assert result.returncode != 0, result.stdout
    said = [line for line in result.stderr.splitlines() if "daemonizes" in line]
    assert len(said) == 1 and said[0].startswith("sparkq: the server command exited with status 0 but left PID"), \
        result.stderr
    assert "exited with status 0 while starting" not in result.stderr
    wait_until(lambda: not fake.running(), timeout=20, what="the daemonized server to be stopped")
    assert not listening(project.port)
    assert not project.pidfile.exists()
    assert project.cli("status").returncode == 3


def test_start_detects_a_daemonizing_server_and_stops_it(fake):
    fake.configure("daemonize", start_timeout=30)
    _check_refused_and_cleaned(fake, fake.project.cli("start", "--skip-backup"))


def test_a_daemon_that_clears_its_environment_is_found_by_its_port(fake):
    fake.configure("daemonize-clear-env", start_timeout=30)
    _check_refused_and_cleaned(fake, fake.project.cli("start", "--skip-backup"))


def test_run_detects_a_daemonizing_server_too(fake):
    fake.configure("daemonize", start_timeout=30)
    _check_refused_and_cleaned(fake, fake.project.cli("run", "--skip-backup", timeout=60))


def test_a_server_that_forks_away_after_answering_is_reported_and_stopped(fake):
    project = fake.project
    fake.configure("fork-after-answer", start_timeout=30)
    started = project.cli("start", "--skip-backup")
    assert started.returncode == 0, started.stderr
    project.reaper.adopt_pidfile(project.pidfile)
    # Its supervisor sees the server it started exit, finds the copy by the spawn's token and
    # stops it: nothing serves unsupervised, and status says stopped.
    wait_until(lambda: _events(project, "server_leftovers_stopped"), timeout=30, what="the copy stopped")
    wait_until(lambda: not fake.running(), what="the forked server to be gone")
    # The supervisor logs the stop before it removes the pidfile: wait for that too.
    wait_until(lambda: not project.pidfile.exists(), what="the pidfile removed")
    assert not listening(project.port)
    status = wait_until(lambda: (st := project.cli("status")).returncode == 3 and st, what="the supervisor gone")
    assert status.stdout.startswith("stopped"), status.stdout
    assert "status 0" in status.stdout  # its last exit


def _events(project, name: str) -> list:
    log = project.root / "sparkq" / "logs" / "supervisor.log"
    return [line for line in log.read_text().splitlines() if f'"event": "{name}"' in line]
