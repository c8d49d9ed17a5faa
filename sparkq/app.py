"""HTTP API of the SparkQ server (FastAPI): the app, its config and session routes, its error shapes.

The other routes live by job: the plain records in resources.py, the task queue in tasks.py; their
request bodies are in models.py and the one connection they share in database.py. Endpoints are
plain `def`, so they run in the thread pool and never block the event loop. On shutdown (after
uvicorn has let in-flight requests finish) the WAL is checkpointed and the connection closed,
leaving one self-contained file.

Bad input answers 4xx with `{"detail": "<one readable sentence>"}`: path ids that do not exist 404,
ids named inside a body that do not exist 422, duplicates and illegal state changes 409.
"""

import os
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import __version__, storage
from .database import Database, DatabaseClosed
from .models import ConfigPut
from .resources import RESOURCES, add_resource, audit
from .tasks import task_routes


# ---------------------------------------------------------------------------------------------
# Routes with behaviour of their own: config entries and session end.


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
            audit(db, conn, "put", "config", f"{namespace}/{key}")
            return fetch(conn, namespace, key)

    @router.delete("/config/{namespace}/{key}", status_code=204)
    def delete_config(namespace: str, key: str) -> Response:
        with db.write() as conn:
            fetch(conn, namespace, key)
            conn.execute("DELETE FROM config WHERE namespace = ? AND key = ?", (namespace, key))
            audit(db, conn, "delete", "config", f"{namespace}/{key}")
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
    task_routes(router, db)
    for res in RESOURCES:
        add_resource(router, db, res)
    app.include_router(router)
    return app
