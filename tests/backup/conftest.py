from __future__ import annotations

import pytest

from helpers import ok


@pytest.fixture
def ready(project):
    """A set-up project with one backup (number 1) to restore."""
    ok(project.cli("setup"))
    ok(project.cli("backup"))
    return project
