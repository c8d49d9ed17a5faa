"""The server's one SQLite connection and the lock that guards it.

One SQLite connection serves every request; a lock serialises the worker threads on it and every
write runs in its own `BEGIN IMMEDIATE` transaction. That connection never checkpoints the WAL:
a background thread does (sparkq/checkpointer.py).

A database file deleted while the server runs lives on only in the server's open file; closing
it would lose every row. `close` notices (rescue.py) and writes the data back to its path first.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from . import rescue, schema, storage
from .checkpointer import Checkpointer


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
        # The file we opened, through any symlink, and its (device, inode): see rescue.py.
        self._real = Path(os.path.realpath(path))
        self._identity: tuple[int, int] | None = None

    def open(self) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = storage.connect(self.path, timeout=5.0)
                # A commit must never copy the WAL back itself; the checkpointer thread does.
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
                tables = (*storage.ID_PREFIXES, "audit_log")
                self.integer_keys = frozenset(t for t in tables if schema.integer_key(self._conn, t))
                self._identity = rescue.identity(self._real)
        self.checkpointer.start()

    def close(self) -> None:
        self.checkpointer.stop()  # first, so the final TRUNCATE below is the last word
        with self._lock:  # waits for a request still holding the connection
            if self._conn is not None:
                copy = rescue.copy_if_deleted(self._conn, self._real, self._identity)
                if copy is None:
                    storage.checkpoint_and_close(self._conn)
                else:  # the copy has every row: folding the WAL into a deleted file only costs time
                    self._conn.close()
                self._conn = None
                if copy is not None:
                    rescue.put_back(copy, self._real)

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
