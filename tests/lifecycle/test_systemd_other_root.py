"""issue 11.7: with SPARKQ_ROOT set to another folder, `systemd-unit` prints a unit that runs this
checkout's sparkq.sh for that root (and may write the checkout's .venv)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import REPO


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_unit_for_another_root_runs_this_checkout(project):
    assert project.root != REPO and not (project.root / "sparkq.sh").exists()
    result = project.cli("systemd-unit")
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    assert f"ExecStart={REPO}/sparkq.sh run" in lines
    assert (REPO / "sparkq.sh").is_file()
    assert f"Environment=SPARKQ_ROOT={project.root}" in lines
    assert f"WorkingDirectory={project.root}" in lines
    rw = next(line for line in lines if line.startswith("ReadWritePaths=")).split("=", 1)[1].split()
    assert str(project.root) in rw  # its data, logs and backups live under it
    assert f"-{REPO}/.venv" in rw


def test_unit_for_the_checkout_itself_needs_no_root_variable(project, monkeypatch):
    from supervisor import config
    from supervisor.systemd import render_unit

    monkeypatch.setenv("SPARKQ_ROOT", str(REPO))
    lines = _lines(render_unit(config.load(root=REPO, lenient=True)))
    assert not any(line.startswith("Environment=SPARKQ_ROOT") for line in lines)
    rw = next(line for line in lines if line.startswith("ReadWritePaths=")).split("=", 1)[1].split()
    assert rw[0] == str(REPO) and f"-{REPO}/.venv" not in rw  # the root covers it


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_for_another_root_verifies(project, tmp_path):
    result = project.cli("systemd-unit")
    unit = tmp_path / "units" / "sparkq.service"
    unit.parent.mkdir()
    unit.write_text(result.stdout)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
