"""systemd units rendered for an install, and sd_notify datagrams."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess

import pytest

from helpers import REPO
from supervisor import config
from supervisor.systemd import Notifier, render_unit


def _stub_sparkq_sh(root) -> None:
    # `systemd-analyze verify` checks that ExecStart names an executable file.
    script = root / "sparkq.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)


def _lines(unit: str) -> list[str]:
    return [line for line in unit.splitlines() if line and not line.startswith("#")]


def test_system_unit_is_filled_in(project):
    unit = render_unit(config.load(root=project.root), user=False)
    lines = _lines(unit)
    assert "@" not in "\n".join(lines)
    me = pwd.getpwuid(os.getuid()).pw_name
    for expected in ("Type=notify", "NotifyAccess=main", f"User={me}", f"WorkingDirectory={project.root}",
                     f"ExecStart={REPO}/sparkq.sh run", "Restart=on-failure", "KillMode=mixed",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "WantedBy=default.target"):
        assert expected in lines, expected
    assert any(line.startswith(f"ReadWritePaths={project.root} ") for line in lines), lines
    stop = next(int(line.split("=")[1]) for line in lines if line.startswith("TimeoutStopSec="))
    assert stop > 10  # above server.stop_timeout, so `run` can escalate itself
    # this test root lives under /tmp, which PrivateTmp= would hide from the service
    assert "PrivateTmp=no" in lines


def test_user_unit_via_cli(project):
    result = project.cli("systemd-unit", "--user")
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    assert not any(line.startswith("User=") for line in lines)
    assert f"ExecStart={REPO}/sparkq.sh run" in lines and "WantedBy=default.target" in lines


def test_outside_paths_and_odd_characters_are_escaped(tmp_path, monkeypatch):
    root = tmp_path / "my sparkq %h"
    root.mkdir()
    (root / "sparkq.yml").write_text(f"database:\n  path: {tmp_path}/elsewhere/x.db\nserver:\n  stop_timeout: 50\n")
    monkeypatch.setenv("SPARKQ_ROOT", str(root))
    lines = _lines(render_unit(config.load(root=root), user=False))
    escaped = str(root).replace("%", "%%")
    assert f'Environment="SPARKQ_ROOT={escaped}"' in lines
    rw = next(line for line in lines if line.startswith("ReadWritePaths="))
    assert rw.startswith(f'ReadWritePaths="{escaped}" -{tmp_path}/elsewhere '), rw
    assert "TimeoutStopSec=70" in lines


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify_prints_nothing(project, tmp_path):
    _stub_sparkq_sh(project.root)
    result = project.cli("systemd-unit")
    assert result.returncode == 0, result.stderr
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / "sparkq.service").write_text(result.stdout)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_dir / "sparkq.service")],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == ""


@pytest.mark.parametrize("abstract", [True, False])
def test_notifier_sends_datagrams(tmp_path, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"sparkq-notify-test-{os.getpid()}"
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify.sock")
            sock.bind(address)
        sock.settimeout(5)
        notifier = Notifier(address)
        notifier.send("READY=1", "MAINPID=42")
        assert sock.recv(1024) == b"READY=1\nMAINPID=42"
        with notifier.extend_timeout(90, every=60):
            assert sock.recv(1024) == b"EXTEND_TIMEOUT_USEC=90000000"


def test_notifier_without_socket_is_silent():
    Notifier(None).send("READY=1")  # no error, nothing to send to


def test_a_local_offsite_repository_and_restics_cache_are_writable(tmp_path, monkeypatch):
    # The service's background pushes write the repository and restic's cache; ProtectSystem=strict
    # and ProtectHome=read-only would make every push fail.
    root = tmp_path / "proj"
    root.mkdir()
    (root / "sparkq.yml").write_text(f"offsite:\n  repository: local:{tmp_path}/repo\n"
                                     f"  password_file: {tmp_path}/pw\n")
    monkeypatch.setenv("SPARKQ_ROOT", str(root))
    rw = next(line for line in _lines(render_unit(config.load(root=root), user=False))
              if line.startswith("ReadWritePaths="))
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert f" -{tmp_path}/repo" in rw and f" -{home}/.cache/restic" in rw, rw
