"""Generic CRUD routes for the tables that are plain records, and the audit_log entries they write.

Each `_Resource` below gets list, create and get routes, plus update and delete where it allows
them; what a record refers to must exist, and a path may name a record by another unique column.
`audit` is shared with the config routes (app.py); `exists` with the task routes (tasks.py).
"""

# No `from __future__ import annotations`: the generic routes below annotate their body parameter
# with a model class held in a local variable, which FastAPI must see as a real object.

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Optional

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel

from . import storage
from .database import Database
from .models import (
    ProjectCreate, ProjectUpdate, PromptCreate, PromptUpdate, QueueCreate, RoleCreate, RoleUpdate, SessionCreate,
    TaskClassCreate, TaskClassUpdate, ToolCreate, ToolUpdate,
)


@dataclass(frozen=True)
class _Resource:
    path: str  # URL segment under /api
    table: str
    noun: str  # used in messages
    key: str  # primary-key column
    create: type
    update: Optional[type] = None  # None: no PUT/PATCH
    deletable: bool = True
    lookup: tuple[str, ...] = ()  # other unique columns a path segment may name
    refs: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # column -> (table, column, noun)
    filters: tuple[str, ...] = ()  # query parameters the list accepts

    @property
    def prefix(self) -> Optional[str]:
        return storage.ID_PREFIXES.get(self.table)


_TASK_CLASS_REF = {"task_class": ("task_classes", "name", "task class")}
RESOURCES = (
    _Resource("prompts", "prompts", "prompt", "id", PromptCreate, PromptUpdate, lookup=("command",)),
    _Resource("agent-roles", "agent_roles", "agent role", "id", RoleCreate, RoleUpdate, lookup=("key",)),
    _Resource("task-classes", "task_classes", "task class", "name", TaskClassCreate, TaskClassUpdate),
    _Resource("tools", "tools", "tool", "name", ToolCreate, ToolUpdate, refs=_TASK_CLASS_REF),
    _Resource("projects", "projects", "project", "id", ProjectCreate, ProjectUpdate),
    _Resource(
        "sessions", "sessions", "session", "id", SessionCreate, deletable=False,
        refs={"project_id": ("projects", "id", "project")}, filters=("project_id", "status"),
    ),
    _Resource(
        "queues", "queues", "queue", "id", QueueCreate, deletable=False,
        refs={"session_id": ("sessions", "id", "session")}, filters=("session_id", "status"),
    ),
)


def _find(conn: sqlite3.Connection, res: _Resource, ident: str) -> Optional[sqlite3.Row]:
    columns = (res.key, *res.lookup)
    where = " OR ".join(f"{c} = ?" for c in columns)
    sql = f"SELECT * FROM {res.table} WHERE {where} ORDER BY ({res.key} = ?) DESC LIMIT 1"
    return conn.execute(sql, [ident] * len(columns) + [ident]).fetchone()


def _get_or_404(conn: sqlite3.Connection, res: _Resource, ident: str) -> sqlite3.Row:
    row = _find(conn, res, ident)
    if row is None:
        raise HTTPException(404, f"{res.noun} {ident!r} not found")
    return row


def _check_refs(conn: sqlite3.Connection, res: _Resource, values: dict) -> None:
    for column, (table, target, noun) in res.refs.items():
        value = values.get(column)
        if value is not None and not exists(conn, table, target, value):
            raise HTTPException(422, f"unknown {noun} {value!r} in field '{column}'; create it first")


def exists(conn: sqlite3.Connection, table: str, column: str, value: Any) -> bool:
    return conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = ?)", (value,)).fetchone()[0] == 1


def audit(
    db: Database, conn: sqlite3.Connection, action: str, entity: str, entity_id: Any, detail: Any = None
) -> None:
    """One audit entry, in our columns (at, entity, entity_id, detail) and the original's
    (created_at, details); a text id is made up here, an integer one left to SQLite."""
    now, entity_id = storage.utc_now(), str(entity_id)
    detail_text = None if detail is None else json.dumps(detail)
    values = {
        "at": now, "created_at": now, "actor": "api", "action": action, "entity": entity, "entity_id": entity_id,
        "detail": detail_text,
        "details": json.dumps({"entity": entity, "entity_id": entity_id, "detail": detail}),
    }
    if "audit_log" not in db.integer_keys:
        values["id"] = storage.new_id("aud")
    conn.execute(
        f"INSERT INTO audit_log ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})", list(values.values())
    )


def _filled(res: _Resource, body: BaseModel) -> dict:
    """Values for the columns the original SparkQ declares NOT NULL that a request may leave out."""
    values = body.model_dump()
    if res.table == "prompts":
        return {"label": values.get("label") or values["command"]}
    if res.table == "agent_roles":
        return {"label": values.get("label") or values["key"], "description": values.get("description") or ""}
    if res.table == "sessions":
        return {"name": values.get("name") or "", "started_at": storage.utc_now()}
    return {}


def add_resource(router: APIRouter, db: Database, res: _Resource) -> None:
    create_model, update_model = res.create, res.update
    base, item = f"/{res.path}", f"/{res.path}/{{ident}}"

    def list_rows(request: Request) -> list[dict]:
        given = [(name, request.query_params[name]) for name in res.filters if name in request.query_params]
        where = " AND ".join(f"{name} = ?" for name, _ in given)
        sql = f"SELECT * FROM {res.table}" + (f" WHERE {where}" if where else "") + " ORDER BY rowid"
        with db.read() as conn:
            return [dict(r) for r in conn.execute(sql, [value for _, value in given])]

    def create_row(body: create_model) -> dict:
        values = {**body.model_dump(), **_filled(res, body)}
        numbered = res.table in db.integer_keys  # SQLite numbers the id (the original's roles)
        if numbered:
            values.pop(res.key, None)
        elif res.prefix and not values.get(res.key):
            values[res.key] = storage.new_id(res.prefix)
        values["created_at"] = values["updated_at"] = storage.utc_now()
        with db.write() as conn:
            _check_refs(conn, res, values)
            names = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            cur = conn.execute(f"INSERT INTO {res.table} ({names}) VALUES ({marks})", list(values.values()))
            key = cur.lastrowid if numbered else values[res.key]
            audit(db, conn, "create", res.table, key)
            return dict(_get_or_404(conn, res, str(key)))

    def get_row(ident: str) -> dict:
        with db.read() as conn:
            return dict(_get_or_404(conn, res, ident))

    def update_row(ident: str, body: update_model) -> dict:
        values = body.model_dump(exclude_unset=True)
        with db.write() as conn:
            key = _get_or_404(conn, res, ident)[res.key]
            if values:
                _check_refs(conn, res, values)
                values["updated_at"] = storage.utc_now()
                assignments = ", ".join(f"{name} = ?" for name in values)
                conn.execute(
                    f"UPDATE {res.table} SET {assignments} WHERE {res.key} = ?", [*values.values(), key]
                )
                audit(db, conn, "update", res.table, key, sorted(values))
            return dict(_get_or_404(conn, res, key))

    def delete_row(ident: str) -> Response:
        with db.write() as conn:
            key = _get_or_404(conn, res, ident)[res.key]
            try:
                conn.execute(f"DELETE FROM {res.table} WHERE {res.key} = ?", (key,))
            except sqlite3.IntegrityError:
                raise HTTPException(409, f"{res.noun} {key!r} is still in use; remove what refers to it first")
            audit(db, conn, "delete", res.table, key)
        return Response(status_code=204)

    router.add_api_route(base, list_rows, methods=["GET"])
    router.add_api_route(base, create_row, methods=["POST"], status_code=201)
    router.add_api_route(item, get_row, methods=["GET"])
    if update_model is not None:
        router.add_api_route(item, update_row, methods=["PUT", "PATCH"])
    if res.deletable:
        router.add_api_route(item, delete_row, methods=["DELETE"])
