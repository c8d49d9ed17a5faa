"""The SparkQ HTTP server as a real process on a real SQLite file."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import Project, free_port, wait_serving, wait_until
from sparkq import __version__
from sparkq.__main__ import exposure_warning


class Server:
    def __init__(self, project: Project, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.project, self.proc, self.url, self.log = project, proc, url, log
        self.client = httpx.Client(base_url=url, timeout=10)

    def stop(self) -> int:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def _start(project: Project, *args: str, port: int | None = None, name: str = "server") -> Server:
    port = port or project.port
    log = project.root / f"{name}.err"
    with open(log, "w") as err:
        proc = project.popen(
            sys.executable, "-P", "-m", "sparkq", *args, stdout=subprocess.DEVNULL, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(project, proc, url, log)
    wait_serving(proc, url, log)
    return server


@pytest.fixture
def server(project: Project):
    srv = _start(project, "--port", str(project.port), "--db", str(project.db))
    yield srv
    srv.client.close()


def _detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def test_without_flags_reads_sparkq_yml_and_creates_the_database(project: Project):
    assert not project.db.exists()
    srv = _start(project)  # host, port and db all come from the project's sparkq.yml
    health = srv.client.get("/health").json()
    assert health == {"status": "ok", "pid": srv.proc.pid, "version": __version__, "db": "ok"}
    assert project.db.exists()
    assert len(srv.client.get("/api/prompts").json()) == 33
    assert len(srv.client.get("/api/tools").json()) == 7
    assert srv.stop() == 0
    assert "WARNING" not in srv.log.read_text()


def test_prompts_crud(server: Server):
    c = server.client
    created = c.post("/api/prompts", json={"command": "haiku", "label": "Haiku", "template_text": "Write one."})
    assert created.status_code == 201, created.text
    prompt = created.json()
    assert prompt["id"].startswith("prm_") and prompt["active"] == 1 and prompt["category"] is None

    assert c.get(f"/api/prompts/{prompt['id']}").json() == prompt
    assert c.get("/api/prompts/haiku").json()["id"] == prompt["id"]  # by command too
    assert len(c.get("/api/prompts").json()) == 34

    patched = c.patch(f"/api/prompts/{prompt['id']}", json={"label": "Haiku!", "active": False}).json()
    assert (patched["label"], patched["active"], patched["template_text"]) == ("Haiku!", 0, "Write one.")
    put = c.put(f"/api/prompts/{prompt['id']}", json={"category": "Fun"}).json()
    assert put["category"] == "Fun" and put["label"] == "Haiku!"

    _detail(c.post("/api/prompts", json={"command": "haiku"}), 409)
    _detail(c.patch(f"/api/prompts/{prompt['id']}", json={"command": "code-review"}), 409)
    assert c.delete(f"/api/prompts/{prompt['id']}").status_code == 204
    _detail(c.get(f"/api/prompts/{prompt['id']}"), 404)
    _detail(c.delete(f"/api/prompts/{prompt['id']}"), 404)


def test_config_crud(server: Server):
    c = server.client
    entries = c.get("/api/config").json()
    assert {"namespace": "ui", "key": "theme", "value": "dark"}.items() <= next(
        e for e in entries if (e["namespace"], e["key"]) == ("ui", "theme")
    ).items()

    put = c.put("/api/config/ui/theme", json={"value": "light", "updated_by": "me"}).json()
    assert (put["value"], put["updated_by"]) == ("light", "me")
    assert c.get("/api/config/ui/theme").json()["value"] == "light"
    assert c.put("/api/config/limits/max", json={"value": 8}).json()["value"] == "8"
    assert [e["key"] for e in c.get("/api/config", params={"namespace": "limits"}).json()] == ["max"]

    assert c.delete("/api/config/limits/max").status_code == 204
    _detail(c.get("/api/config/limits/max"), 404)
    _detail(c.delete("/api/config/limits/max"), 404)
    _detail(c.put("/api/config/ui/theme", json={}), 422)
    _detail(c.put("/api/config/ui/theme", json={"value": None}), 422)


def test_task_classes_and_tools_crud(server: Server):
    c = server.client
    tc = c.post("/api/task-classes", json={"name": "BATCH", "timeout": 3600, "description": "nightly"})
    assert tc.status_code == 201, tc.text
    assert c.patch("/api/task-classes/BATCH", json={"timeout": 1800}).json()["timeout"] == 1800
    assert c.get("/api/task-classes/LLM_HEAVY").json()["timeout"] == 1200
    _detail(c.post("/api/task-classes", json={"name": "ZERO", "timeout": 0}), 422)
    _detail(c.patch("/api/task-classes/BATCH", json={"timeout": -5}), 422)
    _detail(c.post("/api/task-classes", json={"name": "BATCH", "timeout": 5}), 409)

    tool = c.post("/api/tools", json={"name": "nightly-job", "task_class": "BATCH", "description": "d"})
    assert tool.status_code == 201, tool.text
    assert c.get("/api/tools/llm-sonnet").json()["task_class"] == "LLM_HEAVY"
    _detail(c.post("/api/tools", json={"name": "ghost", "task_class": "NOPE"}), 422)
    _detail(c.patch("/api/tools/nightly-job", json={"task_class": "NOPE"}), 422)
    _detail(c.delete("/api/task-classes/BATCH"), 409)  # still used by nightly-job
    assert c.put("/api/tools/nightly-job", json={"task_class": "FAST_SCRIPT"}).json()["task_class"] == "FAST_SCRIPT"
    assert c.delete("/api/task-classes/BATCH").status_code == 204
    assert c.delete("/api/tools/nightly-job").status_code == 204
    _detail(c.get("/api/tools/nightly-job"), 404)
    assert len(c.get("/api/tools").json()) == 7


def test_agent_roles_and_projects_crud(server: Server):
    c = server.client
    assert len(c.get("/api/agent-roles").json()) == 8
    role = c.post("/api/agent-roles", json={"key": "sre", "label": "SRE"}).json()
    assert isinstance(role["id"], int)  # numbered by SQLite, as in the original SparkQ's schema
    assert c.get("/api/agent-roles/sre").json()["id"] == role["id"]
    assert c.patch(f"/api/agent-roles/{role['id']}", json={"active": False}).json()["active"] == 0
    _detail(c.post("/api/agent-roles", json={"key": "developer"}), 409)
    assert c.delete("/api/agent-roles/sre").status_code == 204

    project = c.post("/api/projects", json={"name": "Demo", "repo_path": "/src/demo"}).json()
    assert project["id"].startswith("prj_")
    assert c.patch(f"/api/projects/{project['id']}", json={"prd_path": "docs/prd.md"}).json()["prd_path"] == "docs/prd.md"
    named = c.post("/api/projects", json={"id": "demo2", "name": "Demo 2"}).json()
    assert named["id"] == "demo2"
    _detail(c.post("/api/projects", json={"id": "demo2", "name": "again"}), 409)
    session = c.post("/api/sessions", json={"project_id": "demo2"}).json()
    _detail(c.delete("/api/projects/demo2"), 409)  # a session refers to it
    assert session["status"] == "active"
    assert c.delete(f"/api/projects/{project['id']}").status_code == 204
    assert [p["id"] for p in c.get("/api/projects").json()] == ["prj_default", "demo2"]


def test_task_lifecycle(server: Server):
    c = server.client
    session = c.post("/api/sessions", json={"project_id": "prj_default", "name": "s1"}).json()
    queue = c.post("/api/queues", json={"session_id": session["id"], "name": "main"}).json()
    qid = queue["id"]
    assert [q["id"] for q in c.get("/api/queues", params={"session_id": session["id"]}).json()] == [qid]
    assert c.get(f"/api/queues/{qid}").json()["name"] == "main"

    first = c.post("/api/tasks", json={"queue_id": qid, "tool_name": "llm-haiku", "payload": {"prompt": "hi"}})
    assert first.status_code == 201, first.text
    first = first.json()
    assert (first["status"], first["task_class"], first["timeout"], first["payload"]) == (
        "queued", "LLM_LITE", 480, {"prompt": "hi"}
    )
    second = c.post("/api/tasks", json={"queue_id": qid, "tool_name": "run-bash", "timeout": 30}).json()
    assert (second["task_class"], second["timeout"]) == ("FAST_SCRIPT", 30)
    third = c.post("/api/tasks", json={"queue_id": qid, "tool_name": "run-bash", "task_class": "LLM_HEAVY"}).json()
    assert (third["task_class"], third["timeout"]) == ("LLM_HEAVY", 1200)

    _detail(c.post(f"/api/tasks/{first['id']}/complete", json={"result": 1}), 409)  # still queued

    claimed = c.post("/api/tasks/claim", json={"queue_id": qid})
    assert claimed.status_code == 200
    claimed = claimed.json()
    assert (claimed["id"], claimed["status"], claimed["attempts"]) == (first["id"], "running", 1)
    assert claimed["claimed_at"]

    done = c.post(f"/api/tasks/{first['id']}/complete", json={"result": {"ok": True}}).json()
    assert (done["status"], done["result"]) == ("succeeded", {"ok": True}) and done["finished_at"]
    _detail(c.post(f"/api/tasks/{first['id']}/complete", json={}), 409)
    _detail(c.post(f"/api/tasks/{first['id']}/fail", json={"error": "late"}), 409)

    assert c.post("/api/tasks/claim").json()["id"] == second["id"]  # no body: any queue
    _detail(c.post(f"/api/tasks/{second['id']}/fail", json={}), 422)
    failed = c.post(f"/api/tasks/{second['id']}/fail", json={"error": "exit status 1"}).json()
    assert (failed["status"], failed["error"]) == ("failed", "exit status 1")

    assert c.post("/api/tasks/claim", json={}).json()["id"] == third["id"]
    assert c.post(f"/api/tasks/{third['id']}/complete").json()["result"] is None
    assert c.post("/api/tasks/claim", json={"queue_id": qid}).status_code == 204

    by_status = c.get("/api/tasks", params={"queue_id": qid, "status": "succeeded"}).json()
    assert [t["id"] for t in by_status] == [first["id"], third["id"]]
    assert c.get(f"/api/tasks/{second['id']}").json()["status"] == "failed"

    ended = c.post(f"/api/sessions/{session['id']}/end").json()
    assert ended["status"] == "ended" and ended["ended_at"]
    _detail(c.post(f"/api/sessions/{session['id']}/end"), 409)
    assert c.get("/api/sessions", params={"status": "ended"}).json()[0]["id"] == session["id"]


def test_claims_are_atomic_under_concurrency(server: Server):
    c = server.client
    qid = c.post("/api/queues", json={"name": "race"}).json()["id"]
    ids = {c.post("/api/tasks", json={"queue_id": qid, "tool_name": "run-bash", "payload": i}).json()["id"]
           for i in range(40)}

    def worker(_n: int) -> list[str]:
        got = []
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while (r := client.post("/api/tasks/claim", json={"queue_id": qid})).status_code == 200:
                got.append(r.json()["id"])
        assert r.status_code == 204
        return got

    with ThreadPoolExecutor(8) as pool:
        claimed = [tid for batch in pool.map(worker, range(8)) for tid in batch]
    assert sorted(claimed) == sorted(ids)  # each task handed out exactly once


def test_bad_input_gets_a_clear_4xx(server: Server):
    c = server.client
    raw = {"headers": {"content-type": "application/json"}}
    assert "malformed JSON" in _detail(c.post("/api/prompts", content=b'{"command": ', **raw), 422)
    _detail(c.post("/api/prompts", content=b"[1, 2]", **raw), 422)
    _detail(c.post("/api/prompts", json={}), 422)
    assert "labl" in _detail(c.post("/api/prompts", json={"command": "x", "labl": "typo"}), 422)
    _detail(c.post("/api/prompts", json={"command": "has space"}), 422)
    _detail(c.patch("/api/prompts/code-review", json={"command": None}), 422)
    _detail(c.patch("/api/prompts/code-review", json={"active": "maybe"}), 422)
    _detail(c.post("/api/task-classes", json={"name": "T", "timeout": "soon"}), 422)
    _detail(c.post("/api/tasks", json={"queue_id": "nope", "tool_name": "run-bash"}), 422)
    qid = c.post("/api/queues", json={"name": "q"}).json()["id"]
    _detail(c.post("/api/tasks", json={"queue_id": qid, "tool_name": "no-such-tool"}), 422)
    _detail(c.post("/api/tasks", json={"queue_id": qid, "tool_name": "run-bash", "task_class": "X"}), 422)
    _detail(c.post("/api/tasks", json={"queue_id": qid, "tool_name": "run-bash", "timeout": 0}), 422)
    _detail(c.post("/api/tasks/claim", json={"queue_id": "nope"}), 422)
    _detail(c.post("/api/queues", json={"name": ""}), 422)
    _detail(c.post("/api/sessions", json={"project_id": "nope"}), 422)
    _detail(c.get("/api/tasks", params={"status": "done"}), 422)
    for path in ("/api/tasks/nope", "/api/sessions/nope", "/api/queues/nope", "/api/agent-roles/nope",
                 "/api/projects/nope", "/api/task-classes/nope", "/api/tools/nope"):
        _detail(c.get(path), 404)
    _detail(c.post("/api/tasks/nope/complete", json={}), 404)
    _detail(c.post("/api/sessions/nope/end"), 404)
    _detail(c.post("/api/task-classes", json={"name": "BIG", "timeout": 2**70}), 422)
    _detail(c.put("/api/config/ui/odd", content=b'{"value": "\\ud800"}', **raw), 422)
    assert c.get("/health").json()["status"] == "ok"


def test_sigterm_under_load_leaves_a_clean_database(server: Server, project: Project):
    qid = server.client.post("/api/queues", json={"name": "load"}).json()["id"]
    stop = threading.Event()
    acknowledged: list[str] = []
    bad: list[str] = []
    rounds = [0]

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/api/tasks", json={"queue_id": qid, "tool_name": "run-python", "payload": {"n": 1}})
                    if r.status_code == 201:
                        acknowledged.append(r.json()["id"])
                    else:
                        bad.append(f"enqueue {r.status_code} {r.text}")
                    r = c.post("/api/tasks/claim", json={"queue_id": qid})
                    if r.status_code == 200:
                        c.post(f"/api/tasks/{r.json()['id']}/complete", json={"result": "ok"})
                    elif r.status_code != 204:
                        bad.append(f"claim {r.status_code} {r.text}")
                    rounds[0] += 1
                except httpx.TransportError:
                    if server.proc.poll() is not None:
                        return  # the server is gone, as intended
                    # otherwise a connection was closed during shutdown; retry on a new one

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: rounds[0] >= 40, timeout=20, what="load to build up")
        assert server.stop() == 0, server.log_tail()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)

    assert bad == []
    assert not Path(f"{project.db}-wal").exists(), "WAL file left behind after a clean stop"
    assert not Path(f"{project.db}-shm").exists()
    conn = sqlite3.connect(project.db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0] for r in conn.execute("SELECT id FROM tasks")}
    finally:
        conn.close()
    assert set(acknowledged) <= stored  # every acknowledged write survived

    # The same file serves again after a restart, data intact.
    port = free_port()
    again = _start(project, "--port", str(port), "--db", str(project.db), port=port, name="again")
    assert len(again.client.get("/api/tasks", params={"queue_id": qid, "limit": 10_000}).json()) == len(stored)
    assert again.stop() == 0


def test_cli_rejects_bad_arguments(project: Project):
    proc = project.popen(sys.executable, "-P", "-m", "sparkq", "--port", "0", stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "port" in err

    project.config.write_text("server:\n  port: not-a-number\n")
    proc = project.popen(sys.executable, "-P", "-m", "sparkq", stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "server.port" in err


def test_exposure_warning_only_for_wildcard_hosts():
    for host in ("0.0.0.0", "::", "[::]"):
        assert "network" in exposure_warning(host)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert exposure_warning(host) is None
