"""Off-site test support: the password, a REST backend served by `rclone serve restic` on a
free loopback port (started and killed by PID), and the sparkq.yml section."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from helpers import Project, listening, wait_until

PASSWORD = "correct-horse-offsite-7731"


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (./sparkq.sh test installs it with apt-get when run as root)")
    return found


@dataclass
class RestServer:
    port: int
    root: Path
    user: str
    secret: str
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rest:http://{self.user}:{self.secret}@127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [need("rclone"), "serve", "restic", "--addr", f"127.0.0.1:{self.port}", "--user", self.user,
             "--pass", self.secret, str(self.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: listening(self.port) or self.proc.poll() is not None, timeout=20, what="rclone serve")
        assert self.proc.poll() is None, "rclone serve restic exited"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def offsite_config(project: Project, repository: str, password_file: Path, extra: str = "") -> None:
    project.write_config(f"offsite:\n  repository: '{repository}'\n  password_file: '{password_file}'\n{extra}")


def background_pushers(root: Path) -> list[psutil.Process]:
    """The detached `backup-push --background` children a start left for this project."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        argv = proc.info["cmdline"] or []
        if "backup-push" in argv and "--background" in argv and proc.info["cwd"] == str(root):
            found.append(proc)
    return found


def reap_pushers(root: Path, timeout: float = 60) -> None:
    """Wait for this project's background pushes to finish; kill (by PID) what is left after that."""
    try:
        wait_until(lambda: not background_pushers(root), timeout=timeout, what="background pushes")
    finally:
        for proc in background_pushers(root):
            proc.kill()
