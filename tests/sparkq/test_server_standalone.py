"""The server package stands alone: it imports nothing from `supervisor` and runs, reads sparkq.yml
and exits with meaningful statuses where the supervisor cannot be imported (issue 13)."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

from helpers import REPO, Project, wait_serving

# Runs `python -m sparkq ARGS` with every `supervisor` import failing.
_WITHOUT_SUPERVISOR = (
    "import sys, runpy; sys.modules['supervisor'] = None; "
    "runpy.run_module('sparkq', run_name='__main__', alter_sys=True)"
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_server_package_imports_nothing_from_the_supervisor():
    for path in sorted((REPO / "sparkq").glob("*.py")):
        bad = {n for n in _imports(path) if n == "supervisor" or n.startswith("supervisor.")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def _run(project: Project, *args: str, **kw) -> subprocess.Popen:
    return project.popen(sys.executable, "-P", "-c", _WITHOUT_SUPERVISOR, *args, **kw)


def test_the_server_runs_from_sparkq_yml_without_the_supervisor(project: Project):
    project.config.write_text(f"server:\n  host: 127.0.0.1\n  port: {project.port}\ndatabase:\n  path: data/q.db\n")
    log = project.root / "server.err"
    with open(log, "w") as err:
        proc = _run(project, stdout=subprocess.DEVNULL, stderr=err)
    wait_serving(proc, project.url, log)
    assert (project.root / "data" / "q.db").exists()  # database.path, relative to sparkq.yml
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, log.read_text()


def test_a_bad_sparkq_yml_exits_2_with_one_line_without_the_supervisor(project: Project):
    for text, key in (("server:\n  port: not-a-number\n", "server.port"), ("database:\n  path: 5\n", "database.path"),
                      ("server: [1\n", "invalid YAML")):
        project.config.write_text(text)
        proc = _run(project, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2, err
        assert key in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
