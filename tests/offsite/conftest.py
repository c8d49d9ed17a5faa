"""Off-site fixtures: real restic, no mocks. `./sparkq.sh test` installs restic and rclone;
without them these tests skip and say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Project, free_port
from offsite_helpers import PASSWORD, RestServer, need


@pytest.fixture
def restic_bin() -> str:
    return need("restic")


@pytest.fixture
def password_file(tmp_path) -> Path:
    path = tmp_path / "restic-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def local_repo(tmp_path, restic_bin) -> str:
    return str(tmp_path / "offsite-repo")


@pytest.fixture
def rest_server(tmp_path, restic_bin):
    server = RestServer(port=free_port(), root=tmp_path / "rest-root", user="sparkq", secret="url-secret-5521")
    server.root.mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hermetic_cache(project, tmp_path) -> Project:
    """restic's cache in the test's own folder, not in ~/.cache."""
    project.env["RESTIC_CACHE_DIR"] = str(tmp_path / "restic-cache")
    return project
