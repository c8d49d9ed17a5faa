"""Routes of the task queue: enqueue, list, claim, get, complete and fail a task.

A task goes queued -> running (claimed) -> succeeded or failed; payload and result are stored as
JSON text.
"""

import json
import sqlite3
from typing import Any, Literal, Optional

from fastapi import APIRouter, HTTPException, Query, Response

from . import schema, storage
from .database import Database
from .models import ClaimBody, CompleteBody, FailBody, TaskCreate
from .resources import exists

Status = Literal[schema.TASK_STATUSES]  # one list, in schema.py


def _task_out(row: sqlite3.Row) -> dict:
    out = dict(row)
    for name in ("payload", "result"):
        if out.get(name) is not None:
            try:
                out[name] = json.loads(out[name])
            except ValueError:
                pass  # written by something else as plain text; hand it back as is
    return out


def task_routes(router: APIRouter, db: Database) -> None:
    def fetch(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise HTTPException(404, f"task {task_id!r} not found")
        return row

    def finish(task_id: str, status: str, result: Any, error: Optional[str]) -> dict:
        with db.write() as conn:
            row = fetch(conn, task_id)
            if row["status"] != "running":
                raise HTTPException(409, f"task {task_id!r} is {row['status']}; only a running task can finish")
            now = storage.utc_now()
            conn.execute(
                "UPDATE tasks SET status = ?, result = ?, error = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                (status, None if result is None else json.dumps(result), error, now, now, task_id),
            )
            return _task_out(fetch(conn, task_id))

    @router.post("/tasks", status_code=201)
    def enqueue(body: TaskCreate) -> dict:
        with db.write() as conn:
            if not exists(conn, "queues", "id", body.queue_id):
                raise HTTPException(422, f"unknown queue {body.queue_id!r}; create it with POST /api/queues")
            tool = conn.execute("SELECT * FROM tools WHERE name = ?", (body.tool_name,)).fetchone()
            if tool is None:
                raise HTTPException(422, f"unknown tool {body.tool_name!r}; see GET /api/tools")
            class_name = body.task_class or tool["task_class"]
            task_class = conn.execute("SELECT * FROM task_classes WHERE name = ?", (class_name,)).fetchone()
            if task_class is None:
                raise HTTPException(422, f"unknown task class {class_name!r}; see GET /api/task-classes")
            now = storage.utc_now()
            task_id = storage.new_id("tsk")
            conn.execute(
                "INSERT INTO tasks (id, queue_id, tool_name, task_class, payload, status, timeout, attempts,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, 0, ?, ?)",
                (task_id, body.queue_id, body.tool_name, class_name, json.dumps(body.payload),
                 body.timeout or task_class["timeout"], now, now),
            )
            return _task_out(fetch(conn, task_id))

    @router.get("/tasks")
    def list_tasks(
        queue_id: Optional[str] = None,
        status: Optional[Status] = None,
        limit: int = Query(500, ge=1, le=10_000),
    ) -> list[dict]:
        clauses, params = [], []
        for column, value in (("queue_id", queue_id), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with db.read() as conn:
            rows = conn.execute(f"SELECT * FROM tasks{where} ORDER BY created_at, rowid LIMIT ?", [*params, limit])
            return [_task_out(r) for r in rows]

    # Registered before /tasks/{task_id} so "claim" is never taken for an id.
    @router.post("/tasks/claim", responses={204: {"description": "no queued task"}})
    def claim(body: Optional[ClaimBody] = None):
        queue_id = body.queue_id if body else None
        with db.write() as conn:  # the write lock makes select-then-update atomic
            if queue_id is not None and not exists(conn, "queues", "id", queue_id):
                raise HTTPException(422, f"unknown queue {queue_id!r}")
            sql = "SELECT id FROM tasks WHERE status = 'queued'"
            sql += " AND queue_id = ?" if queue_id is not None else ""
            params = (queue_id,) if queue_id is not None else ()
            row = conn.execute(sql + " ORDER BY created_at, rowid LIMIT 1", params).fetchone()
            if row is None:
                return Response(status_code=204)
            now = storage.utc_now()
            conn.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, claimed_at = ?, started_at = ?,"
                " updated_at = ? WHERE id = ?",
                (now, now, now, row["id"]),
            )
            return _task_out(fetch(conn, row["id"]))

    @router.get("/tasks/{task_id}")
    def get_task(task_id: str) -> dict:
        with db.read() as conn:
            return _task_out(fetch(conn, task_id))

    @router.post("/tasks/{task_id}/complete")
    def complete(task_id: str, body: Optional[CompleteBody] = None) -> dict:
        return finish(task_id, "succeeded", body.result if body else None, None)

    @router.post("/tasks/{task_id}/fail")
    def fail(task_id: str, body: FailBody) -> dict:
        return finish(task_id, "failed", None, body.error)
