"""HTTP API of the SparkQ server (FastAPI).

One SQLite connection serves every request; a lock serialises the worker threads on it and every
write runs in its own `BEGIN IMMEDIATE` transaction. That connection never checkpoints the WAL:
a background thread does (sparkq/checkpointer.py). Endpoints are plain `def`, so they run in the
thread pool and never block the event loop. On shutdown (after uvicorn has let in-flight requests
finish) the WAL is checkpointed and the connection closed, leaving one self-contained file.

Bad input answers 4xx with `{"detail": "<one readable sentence>"}`: path ids that do not exist 404,
ids named inside a body that do not exist 422, duplicates and illegal state changes 409.
"""

# No `from __future__ import annotations`: the generic routes below annotate their body parameter
# with a model class held in a local variable, which FastAPI must see as a real object.

import json
import os
import sqlite3
import threading
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from . import __version__, storage
from .checkpointer import Checkpointer

_MAX_INT = 2**31 - 1  # SQLite stores up to 2**63 - 1; a timeout beyond 68 years is a typo
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Text = Annotated[str, Field(max_length=100_000)]
Status = Literal[storage.TASK_STATUSES]  # one list, in storage.py


class DatabaseClosed(Exception):
    """A request arrived after the connection was closed for shutdown."""


class Database:
    """The server's single connection and the lock that guards it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: Optional[sqlite3.Connection] = None
        self._lock = threading.Lock()
        self.integer_keys: frozenset[str] = frozenset()  # tables whose ids SQLite numbers
        self.checkpointer = Checkpointer(path, self.held)

    def open(self) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = storage.connect(self.path, timeout=5.0)
                # A commit must never copy the WAL back itself; the checkpointer thread does.
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
                tables = (*storage.ID_PREFIXES, "audit_log")
                self.integer_keys = frozenset(t for t in tables if storage.integer_key(self._conn, t))
        self.checkpointer.start()

    def close(self) -> None:
        self.checkpointer.stop()  # first, so the final TRUNCATE below is the last word
        with self._lock:  # waits for a request still holding the connection
            if self._conn is not None:
                storage.checkpoint_and_close(self._conn)
                self._conn = None

    @contextmanager
    def held(self) -> Iterator[None]:
        """The request lock alone: no request uses the connection while it is held."""
        with self._lock:
            yield

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise DatabaseClosed()
            yield self._conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self.read() as conn, storage.transaction(conn):
            yield conn


# ---------------------------------------------------------------------------------------------
# Request bodies. `extra="forbid"` turns a misspelt field into a 422 instead of a silent no-op.


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptCreate(_Body):
    command: Name
    label: Optional[str] = None
    template_text: Text = ""
    description: Optional[str] = None
    category: Optional[str] = None
    active: bool = True


class PromptUpdate(_Body):
    command: Optional[Name] = None
    label: Optional[str] = None
    template_text: Optional[Text] = None
    description: Optional[str] = None
    category: Optional[str] = None
    active: Optional[bool] = None


class RoleCreate(_Body):
    key: Name
    label: Optional[str] = None
    description: Optional[str] = None
    active: bool = True


class RoleUpdate(_Body):
    key: Optional[Name] = None
    label: Optional[str] = None
    description: Optional[str] = None
    active: Optional[bool] = None


class TaskClassCreate(_Body):
    name: Name
    timeout: int = Field(gt=0, le=_MAX_INT)
    description: Optional[str] = None


class TaskClassUpdate(_Body):
    timeout: Optional[int] = Field(None, gt=0, le=_MAX_INT)
    description: Optional[str] = None


class ToolCreate(_Body):
    name: Name
    task_class: Name
    description: Optional[str] = None


class ToolUpdate(_Body):
    task_class: Optional[Name] = None
    description: Optional[str] = None


class ProjectCreate(_Body):
    id: Optional[Name] = None
    name: str = Field(min_length=1)
    repo_path: Optional[str] = None
    prd_path: Optional[str] = None


class ProjectUpdate(_Body):
    name: Optional[str] = Field(None, min_length=1)
    repo_path: Optional[str] = None
    prd_path: Optional[str] = None


class SessionCreate(_Body):
    project_id: Optional[str] = None
    name: Optional[str] = None


class QueueCreate(_Body):
    name: str = Field(min_length=1)
    session_id: Optional[str] = None


class ConfigPut(_Body):
    value: Any
    updated_by: Optional[str] = None


class TaskCreate(_Body):
    queue_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    task_class: Optional[str] = None
    timeout: Optional[int] = Field(None, gt=0, le=_MAX_INT)
    payload: Any = None


class ClaimBody(_Body):
    queue_id: Optional[str] = None


class CompleteBody(_Body):
    result: Any = None


class FailBody(_Body):
    error: str = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Generic CRUD for the tables that are plain records.


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
        if value is not None and not _exists(conn, table, target, value):
            raise HTTPException(422, f"unknown {noun} {value!r} in field '{column}'; create it first")


def _exists(conn: sqlite3.Connection, table: str, column: str, value: Any) -> bool:
    return conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = ?)", (value,)).fetchone()[0] == 1


def _audit(
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


def _add_resource(router: APIRouter, db: Database, res: _Resource) -> None:
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
            _audit(db, conn, "create", res.table, key)
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
                _audit(db, conn, "update", res.table, key, sorted(values))
            return dict(_get_or_404(conn, res, key))

    def delete_row(ident: str) -> Response:
        with db.write() as conn:
            key = _get_or_404(conn, res, ident)[res.key]
            try:
                conn.execute(f"DELETE FROM {res.table} WHERE {res.key} = ?", (key,))
            except sqlite3.IntegrityError:
                raise HTTPException(409, f"{res.noun} {key!r} is still in use; remove what refers to it first")
            _audit(db, conn, "delete", res.table, key)
        return Response(status_code=204)

    router.add_api_route(base, list_rows, methods=["GET"])
    router.add_api_route(base, create_row, methods=["POST"], status_code=201)
    router.add_api_route(item, get_row, methods=["GET"])
    if update_model is not None:
        router.add_api_route(item, update_row, methods=["PUT", "PATCH"])
    if res.deletable:
        router.add_api_route(item, delete_row, methods=["DELETE"])


# ---------------------------------------------------------------------------------------------
# Routes with behaviour of their own: config entries, session end, and the task queue.


def _config_out(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["value"] = storage.decode_config_value(out["value"])
    return out


def _config_routes(router: APIRouter, db: Database) -> None:
    def fetch(conn: sqlite3.Connection, namespace: str, key: str) -> dict:
        row = conn.execute("SELECT * FROM config WHERE namespace = ? AND key = ?", (namespace, key)).fetchone()
        if row is None:
            raise HTTPException(404, f"config entry {namespace}/{key} not found")
        return _config_out(row)

    @router.get("/config")
    def list_config(namespace: Optional[str] = None) -> list[dict]:
        sql = "SELECT * FROM config" + (" WHERE namespace = ?" if namespace else "") + " ORDER BY namespace, key"
        with db.read() as conn:
            return [_config_out(r) for r in conn.execute(sql, (namespace,) if namespace else ())]

    @router.get("/config/{namespace}/{key}")
    def get_config(namespace: str, key: str) -> dict:
        with db.read() as conn:
            return fetch(conn, namespace, key)

    @router.put("/config/{namespace}/{key}")
    def put_config(namespace: str, key: str, body: ConfigPut) -> dict:
        if body.value is None:
            raise HTTPException(422, "value must not be null; use DELETE to remove the entry")
        value = storage.encode_config_value(body.value)  # JSON text, as the original stores it
        with db.write() as conn:
            conn.execute(
                "INSERT INTO config (namespace, key, value, updated_at, updated_by) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET "
                "value = excluded.value, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (namespace, key, value, storage.utc_now(), body.updated_by or "api"),
            )
            _audit(db, conn, "put", "config", f"{namespace}/{key}")
            return fetch(conn, namespace, key)

    @router.delete("/config/{namespace}/{key}", status_code=204)
    def delete_config(namespace: str, key: str) -> Response:
        with db.write() as conn:
            fetch(conn, namespace, key)
            conn.execute("DELETE FROM config WHERE namespace = ? AND key = ?", (namespace, key))
            _audit(db, conn, "delete", "config", f"{namespace}/{key}")
        return Response(status_code=204)


def _session_routes(router: APIRouter, db: Database) -> None:
    @router.post("/sessions/{session_id}/end")
    def end_session(session_id: str) -> dict:
        with db.write() as conn:
            row = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise HTTPException(404, f"session {session_id!r} not found")
            if row["status"] == "ended":
                raise HTTPException(409, f"session {session_id!r} has already ended")
            now = storage.utc_now()
            conn.execute(
                "UPDATE sessions SET status = 'ended', ended_at = ?, updated_at = ? WHERE id = ?",
                (now, now, session_id),
            )
            return dict(conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone())


def _task_out(row: sqlite3.Row) -> dict:
    out = dict(row)
    for name in ("payload", "result"):
        if out.get(name) is not None:
            try:
                out[name] = json.loads(out[name])
            except ValueError:
                pass  # written by something else as plain text; hand it back as is
    return out


def _task_routes(router: APIRouter, db: Database) -> None:
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
            if not _exists(conn, "queues", "id", body.queue_id):
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
            if queue_id is not None and not _exists(conn, "queues", "id", queue_id):
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


# ---------------------------------------------------------------------------------------------
# Error shapes: always {"detail": "<sentence>"}.


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON body ({err.get('ctx', {}).get('error', err.get('msg'))})")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _describe_validation(exc)})

    @app.exception_handler(sqlite3.IntegrityError)
    async def _conflict(_request: Request, exc: sqlite3.IntegrityError) -> JSONResponse:
        message = str(exc)
        if message.startswith("UNIQUE") or message.startswith("PRIMARY KEY"):
            fields = message.split(":", 1)[-1].strip()
            return JSONResponse(status_code=409, content={"detail": f"already exists: {fields} must be unique"})
        if "FOREIGN KEY" in message:
            return JSONResponse(status_code=409, content={"detail": "refers to, or is referred to by, other rows"})
        if message.startswith("NOT NULL"):
            column = message.split(":", 1)[-1].strip()
            return JSONResponse(status_code=422, content={"detail": f"{column} must not be null"})
        return JSONResponse(status_code=422, content={"detail": f"rejected by the database: {message}"})

    @app.exception_handler(sqlite3.OperationalError)
    async def _busy(_request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        if storage.is_busy(exc):
            return JSONResponse(
                status_code=503, headers={"Retry-After": "1"},
                content={"detail": "database is busy (another process holds a lock); retry shortly"},
            )
        raise exc

    @app.exception_handler(OverflowError)
    @app.exception_handler(UnicodeEncodeError)
    async def _unstorable(_request: Request, exc: Exception) -> JSONResponse:
        # a number SQLite cannot hold, or text with lone surrogates (valid JSON, invalid UTF-8)
        return JSONResponse(status_code=422, content={"detail": f"value cannot be stored: {exc}"})

    @app.exception_handler(DatabaseClosed)
    async def _closed(_request: Request, _exc: DatabaseClosed) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": "server is shutting down"})


def create_app(db_path: Path) -> FastAPI:
    """The FastAPI application serving the database at `db_path` (already set up by the caller)."""
    db = Database(Path(db_path))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        db.open()
        try:
            yield
        finally:
            db.close()  # uvicorn calls this after in-flight requests have finished

    app = FastAPI(title="SparkQ", version=__version__, lifespan=lifespan)
    app.state.db = db
    _install_error_handlers(app)

    @app.get("/health")
    def health():
        body = {"status": "ok", "pid": os.getpid(), "version": __version__, "db": "ok"}
        try:
            with db.read() as conn:
                conn.execute("SELECT 1").fetchone()
        except (sqlite3.Error, DatabaseClosed) as exc:
            body.update(status="error", db=f"error: {exc or 'closed'}")
            return JSONResponse(status_code=503, content=body)
        return body

    router = APIRouter(prefix="/api")
    _config_routes(router, db)
    _session_routes(router, db)
    _task_routes(router, db)
    for res in RESOURCES:
        _add_resource(router, db, res)
    app.include_router(router)
    return app
