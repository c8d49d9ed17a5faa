from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers import Project, Reaper, base_env, free_port


# Legacy backups are named in local time: the in-process catalog reads hand-built UTC stamps as
# the helpers' subprocesses do (base_env sets TZ=UTC), whatever zone the machine is in.
os.environ["TZ"] = "UTC"
time.tzset()

# A shell without job control starts a background command (`./sparkq.sh test &`) with SIGINT
# ignored, and every process the tests start would inherit that: the Ctrl-C tests' SIGINT would
# then be lost. A handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true",
                     help="the long runs too: more fault iterations, and tests marked long")


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` (benchmark smoke runs and the like) run only with --long, to keep the
    default run near 10 minutes on 2 cores."""
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long run: ./sparkq.sh test --long")
    for item in items:
        if item.get_closest_marker("long"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def seed_db(tmp_path_factory) -> Path:
    """A set-up, checkpointed SparkQ database (33 prompts, ...) to copy into backups."""
    from sparkq import storage

    path = tmp_path_factory.mktemp("seed") / "seed.db"
    storage.setup_database(path)
    return path


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.kill_all()


@pytest.fixture
def project(tmp_path, reaper, monkeypatch) -> Project:
    """A fresh project root with sparkq.yml on a free port; SPARKQ_ROOT points at it in-process too."""
    root = tmp_path / "proj"
    root.mkdir()
    p = Project(root=root, port=free_port(), env=base_env(root), reaper=reaper)
    p.write_config()
    for key in list(__import__("os").environ):
        if key.startswith("SPARKQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SPARKQ_ROOT", str(root))
    return p
