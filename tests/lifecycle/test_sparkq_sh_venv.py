"""issue 11.14: sparkq.sh never deletes or rebuilds a .venv it did not create in this run; when
.venv/bin/python cannot be executed by this user it names the checkout's owner and stops."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import SPARKQ_SH, tree_state


@pytest.fixture
def checkout():
    """A copy of sparkq.sh in a folder other users may enter (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="sparkq-sh-"))
    try:
        os.chmod(root, 0o755)
        shutil.copy2(SPARKQ_SH, root / "sparkq.sh")
        shutil.copy2(SPARKQ_SH.parent / "pyproject.toml", root / "pyproject.toml")
        venv = root / ".venv"
        (venv / "bin").mkdir(parents=True)
        for d in (venv, venv / "bin"):
            os.chmod(d, 0o755)
        (venv / "keep-me").write_text("a file the owner put here\n")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(argv, root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _python_script(root: Path, mode: int) -> Path:
    python = root / ".venv" / "bin" / "python"
    python.write_text("#!/bin/sh\necho fake python\n")
    os.chmod(python, mode)
    return python


def _refused(result, who: str) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "rm:" not in result.stderr and "creating" not in result.stderr
    assert "belongs to user root" in lines[0] and f"you are {who}" in lines[0], lines[0]
    return lines[0]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_user_is_told_who_owns_the_checkout(checkout):
    _python_script(checkout, 0o700)  # the owner's, not runnable by anyone else
    before = tree_state(checkout / ".venv")
    result = _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   "bash", str(checkout / "sparkq.sh"), "status"], checkout)
    line = _refused(result, "nobody")
    assert "cannot be executed" in line
    assert tree_state(checkout / ".venv") == before


def test_a_venv_whose_python_is_not_executable_is_left_alone(checkout):
    _python_script(checkout, 0o644)  # no execute bit at all: even root cannot run it
    before = tree_state(checkout / ".venv")
    result = _run(["bash", str(checkout / "sparkq.sh"), "status"], checkout)
    _refused(result, os.environ.get("USER") or "root")
    assert tree_state(checkout / ".venv") == before


def test_a_venv_without_python_is_not_rebuilt(checkout):
    before = tree_state(checkout / ".venv")
    result = _run(["bash", str(checkout / "sparkq.sh"), "status"], checkout)
    assert result.returncode == 1
    assert "no working bin/python" in result.stderr and "rm -rf" in result.stderr, result.stderr
    assert "creating" not in result.stderr
    assert tree_state(checkout / ".venv") == before


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_users_private_venv_is_not_called_broken(checkout):
    """A .venv of mode 0700 (the owner's umask 077): another user cannot even look inside, which
    must not read as "broken, remove it yourself"."""
    _python_script(checkout, 0o755)
    os.chmod(checkout / ".venv", 0o700)
    before = tree_state(checkout / ".venv")
    result = _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   "bash", str(checkout / "sparkq.sh"), "status"], checkout)
    line = _refused(result, "nobody")
    assert "rm -rf" not in line and "cannot be entered" in line
    assert tree_state(checkout / ".venv") == before
