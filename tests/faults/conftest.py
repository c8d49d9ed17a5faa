"""Fault-injection settings: quick by default, `--long` for more iterations; one seeded RNG per run.

The seed comes from SPARKQ_FAULT_SEED when set (to replay a failure), else from the OS; it is
printed at the end of the run and in every failing kill test, so a failure can be repeated.
"""

from __future__ import annotations

import os
import random

import pytest

SEED = int(os.environ.get("SPARKQ_FAULT_SEED") or random.SystemRandom().randrange(1, 2**31))

# Kill points per kill -9 test: quick (CI) and --long (local).
KILL_POINTS = {"quick": 8, "long": 36}


def is_long(config) -> bool:
    return bool(config.getoption("--long"))


@pytest.fixture
def long(request) -> bool:
    """True when the run asked for the long fault suite (`--long`)."""
    return is_long(request.config)


@pytest.fixture
def rng(request) -> random.Random:
    """A random source seeded from the run's seed and the test's name (stable across -k choices)."""
    print(f"fault seed {SEED} (replay: SPARKQ_FAULT_SEED={SEED})")
    return random.Random(f"{SEED}:{request.node.name}")


def pytest_generate_tests(metafunc):
    """`kill_at`: stratified random fractions of a measured run, one per kill point. Each point
    falls in its own slice of [0, 1), so the kills cover the whole run (snapshot, verify, publish)."""
    if "kill_at" not in metafunc.fixturenames:
        return
    n = KILL_POINTS["long" if is_long(metafunc.config) else "quick"]
    r = random.Random(f"{SEED}:{metafunc.definition.name}")
    points = [(i + r.random()) / n for i in range(n)]
    metafunc.parametrize("kill_at", points, ids=[f"kill{i:02d}@{p:.3f}" for i, p in enumerate(points)])


def pytest_terminal_summary(terminalreporter, config):
    mode = "long" if is_long(config) else "quick"
    terminalreporter.write_line(f"faults: {mode} mode, seed {SEED} (replay: SPARKQ_FAULT_SEED={SEED})")
    for group, counts in sorted(config.stash.get(_PHASES, {}).items()):
        shown = ", ".join(f"{phase} {n}" for phase, n in sorted(counts.items()))
        terminalreporter.write_line(f"faults: {group}: kills landed in: {shown}")


@pytest.fixture
def phases(request):
    """Record where each kill landed (`phases(test_group, phase)`); the counts are printed at the end."""
    store = request.config.stash.setdefault(_PHASES, {})

    def record(group: str, phase: str) -> None:
        counts = store.setdefault(group, {})
        counts[phase] = counts.get(phase, 0) + 1

    return record


_PHASES = pytest.StashKey[dict]()
