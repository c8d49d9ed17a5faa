"""Every write endpoint of our API works on a database the original SparkQ made, served by our
real server after it upgraded the file at start (issue 12 item 1)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import httpx
import pytest

from helpers import Project, wait_serving
from original import ORIGINAL_TABLES, make_original_db, original_start

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class Walk:
    """An httpx client that remembers which (method, route) pairs it has called."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10)
        self.called: set[tuple[str, str]] = set()

    def __call__(self, method: str, route: str, status: int, json=None, **ids) -> dict | None:
        self.called.add((method, route))
        path = route.format(**ids)
        response = self.client.request(method, path, json=json)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None


@pytest.fixture
def original_server(project: Project):
    make_original_db(project.db)
    yield from _serve(project)


def _serve(project: Project):
    log = project.root / "server.err"
    with open(log, "w") as err:
        proc = project.popen(sys.executable, "-P", "-m", "sparkq", "--port", str(project.port), "--db",
                             str(project.db), stdout=subprocess.DEVNULL, stderr=err)
    wait_serving(proc, project.url, log)
    walk = Walk(project.url)
    yield walk
    walk.client.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, log.read_text()


def _write_routes() -> set[tuple[str, str]]:
    from sparkq.app import create_app

    app = create_app(":memory:")
    return {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m in WRITE_METHODS}


def test_every_write_endpoint_works_on_an_upgraded_original_database(original_server, project: Project):
    w = original_server
    # config: the original's JSON-encoded values read as our API shows values
    assert w("GET", "/api/config/{ns}/{key}", 200, ns="ui", key="theme")["value"] == "dark"
    assert w("GET", "/api/config/{ns}/{key}", 200, ns="features", key="flags")["value"] == '{"beta": true}'
    assert w("PUT", "/api/config/{namespace}/{key}", 200, {"value": "light"}, namespace="ui", key="theme")["value"] \
        == "light"
    assert w("PUT", "/api/config/{namespace}/{key}", 200, {"value": 8}, namespace="limits", key="max")["value"] == "8"
    w("DELETE", "/api/config/{namespace}/{key}", 204, namespace="limits", key="max")

    # prompts: a prompt without a label gets one (the original requires it)
    prompt = w("POST", "/api/prompts", 201, {"command": "new-one", "template_text": "Do {x}"})
    assert prompt["label"] == "new-one"
    w("PUT", "/api/prompts/{ident}", 200, {"category": "misc"}, ident=prompt["id"])
    w("PATCH", "/api/prompts/{ident}", 200, {"active": False}, ident="p-1")  # the original's own row
    w("DELETE", "/api/prompts/{ident}", 204, ident=prompt["id"])

    # agent roles: integer ids, old and new, by id or key
    role = w("POST", "/api/agent-roles", 201, {"key": "ops"})
    assert role["id"] == 3 and role["label"] == "ops" and role["description"] == ""
    assert w("GET", "/api/agent-roles/{ident}", 200, ident="1")["key"] == "developer"
    w("PUT", "/api/agent-roles/{ident}", 200, {"label": "Operations"}, ident="3")
    w("PATCH", "/api/agent-roles/{ident}", 200, {"active": False}, ident="reviewer")
    w("DELETE", "/api/agent-roles/{ident}", 204, ident="ops")

    # task classes and tools
    w("POST", "/api/task-classes", 201, {"name": "BATCH", "timeout": 3600})
    w("PUT", "/api/task-classes/{ident}", 200, {"timeout": 1800}, ident="BATCH")
    w("PATCH", "/api/task-classes/{ident}", 200, {"description": "nightly"}, ident="FAST_SCRIPT")
    w("POST", "/api/tools", 201, {"name": "nightly", "task_class": "BATCH"})
    w("PUT", "/api/tools/{ident}", 200, {"description": "d"}, ident="nightly")
    w("PATCH", "/api/tools/{ident}", 200, {"task_class": "FAST_SCRIPT"}, ident="nightly")
    w("DELETE", "/api/tools/{ident}", 204, ident="nightly")
    w("DELETE", "/api/task-classes/{ident}", 204, ident="BATCH")

    # projects, sessions, queues
    proj = w("POST", "/api/projects", 201, {"name": "New"})
    w("PUT", "/api/projects/{ident}", 200, {"repo_path": "/src/new"}, ident=proj["id"])
    w("PATCH", "/api/projects/{ident}", 200, {"prd_path": "prd.md"}, ident="proj-1")
    session = w("POST", "/api/sessions", 201, {"project_id": proj["id"]})
    assert session["started_at"]
    w("POST", "/api/sessions/{session_id}/end", 200, session_id="sess-1")
    queue = w("POST", "/api/queues", 201, {"name": "new-queue", "session_id": session["id"]})
    w("DELETE", "/api/projects/{ident}", 409, ident=proj["id"])  # still referred to by the session

    # tasks on a new queue and on the original's queue
    for queue_id in (queue["id"], "queue-1"):
        task = w("POST", "/api/tasks", 201, {"queue_id": queue_id, "tool_name": "run-bash", "payload": {"n": 1}})
        claimed = w("POST", "/api/tasks/claim", 200, {"queue_id": queue_id})
        assert claimed["id"] == task["id"] and claimed["started_at"]
        w("POST", "/api/tasks/{task_id}/complete", 200, {"result": {"ok": True}}, task_id=task["id"])
    w("POST", "/api/tasks", 201, {"queue_id": "queue-1", "tool_name": "run-bash"})
    failing = w("POST", "/api/tasks/claim", 200, {})
    w("POST", "/api/tasks/{task_id}/fail", 200, {"error": "boom"}, task_id=failing["id"])
    assert w("GET", "/api/tasks/{task_id}", 200, task_id="task-1")["result"] == {"ok": True}

    missed = _write_routes() - w.called
    assert not missed, f"write endpoints not walked: {sorted(missed)}"

    # What our server wrote is a database the original can still start on and read.
    conn = sqlite3.connect(project.db)
    try:
        original_start(conn)
        audits = conn.execute("SELECT id, created_at, details, action FROM audit_log WHERE actor = 'api'").fetchall()
        assert audits and all(a[0] and a[1] and a[2] for a in audits)
        assert conn.execute("SELECT value FROM config WHERE key = 'theme'").fetchone()[0] == '"light"'
        for table, cols in ORIGINAL_TABLES.items():
            for col in cols:
                if "NOT NULL" in col:
                    name = col.split()[0]
                    nulls = conn.execute(f"SELECT count(*) FROM {table} WHERE {name} IS NULL").fetchone()[0]
                    assert nulls == 0, f"{table}.{name} has NULLs"
    finally:
        conn.close()


def test_text_role_ids_and_integer_audit_ids_of_our_older_databases_keep_working(project: Project):
    """Earlier versions of ours made agent_roles with text ids and audit_log with integer ids."""
    project.db.parent.mkdir(parents=True)
    conn = sqlite3.connect(project.db)
    conn.execute("CREATE TABLE agent_roles (id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, label TEXT,"
                 " description TEXT, active INTEGER NOT NULL DEFAULT 1, created_at TEXT, updated_at TEXT)")
    conn.execute("CREATE TABLE audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT, actor TEXT, action TEXT,"
                 " entity TEXT, entity_id TEXT, detail TEXT)")
    conn.execute("INSERT INTO agent_roles (id, key, label) VALUES ('rol_old', 'old', 'Old')")
    conn.commit()
    conn.close()
    walk = next(gen := _serve(project))
    try:
        role = walk("POST", "/api/agent-roles", 201, {"key": "sre"})
        assert role["id"].startswith("rol_")
        walk("PATCH", "/api/agent-roles/{ident}", 200, {"label": "Older"}, ident="rol_old")
        walk("PUT", "/api/config/{namespace}/{key}", 200, {"value": "x"}, namespace="ui", key="theme")
    finally:
        next(gen, None)
    conn = sqlite3.connect(project.db)
    try:
        assert {r[0] for r in conn.execute("SELECT typeof(id) FROM audit_log")} == {"integer"}
        assert conn.execute("SELECT count(*) FROM audit_log WHERE created_at IS NULL").fetchone()[0] == 0
    finally:
        conn.close()
