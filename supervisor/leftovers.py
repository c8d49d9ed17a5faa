"""Processes a server command left behind.

A server that daemonizes (forks, starts a new session, and its first process exits) is no longer
in the process group we signal, nor a child we can wait for: `start` would report "exited" while
the copy keeps serving, unseen by `status` and `stop`. Every spawn therefore carries a random
token in its environment, which its descendants inherit; a process that carries it is ours to
stop, wherever it moved. A listener on our port, of our user, created after the spawn counts too
(a daemon may clear its environment). Nothing else is ever signalled.
"""

from __future__ import annotations

import os
import secrets
import time

from . import log

SPAWN_ENV = "SPARKQ_SPAWN_ID"


def new_token() -> str:
    return secrets.token_hex(12)


def find(token: str | None, *, port: int | None = None, since: float | None = None) -> list:
    """Live processes (not zombies, not this one) created at or after `since` that carry `token`,
    or listen on `port` and belong to our user."""
    import psutil

    me, found = os.getpid(), {}
    if token:
        for proc in psutil.process_iter(["create_time"]):
            # Nothing created before the spawn can carry its token; skipping those saves reading
            # the environment of every process on the machine.
            if proc.pid == me or (since is not None and (proc.info["create_time"] or 0) < since - 1.0):
                continue
            try:
                if (proc.environ().get(SPAWN_ENV) == token and proc.uids().real == os.getuid()
                        and proc.status() != psutil.STATUS_ZOMBIE):
                    found[proc.pid] = proc
            except psutil.Error:
                continue
    if port is not None and since is not None:
        for proc in _listeners(port):
            try:
                if (proc.pid not in found and proc.pid != me and proc.uids().real == os.getuid()
                        and proc.create_time() >= since - 1.0):
                    found[proc.pid] = proc
            except psutil.Error:
                continue
    return sorted(found.values(), key=lambda p: p.pid)


def find_after_exit(token: str | None, *, port: int | None = None, since: float | None = None,
                    looks: int = 4, gap: float = 0.1) -> list:
    """`find`, for a server that has just exited on its own. A daemon's middle process can exit
    between the scan's listing of /proc and its look at that process, and the grandchild appear
    just after the listing: one empty scan does not prove a plain exit, so look a few times
    (0.3 s more, on a path that reports a failed start anyway)."""
    for _ in range(looks - 1):
        left = find(token, port=port, since=since)
        if left:
            return left
        time.sleep(gap)
    return find(token, port=port, since=since)


def _listeners(port: int) -> list:
    import psutil

    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return []
    procs = []
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                procs.append(psutil.Process(conn.pid))
            except psutil.Error:
                continue
    return procs


def stop_all(token: str | None, *, port: int | None = None, since: float | None = None,
             timeout: float = 5.0) -> list[int]:
    """Stop what `find` reports (process.stop_procs: SIGTERM, SIGKILL after `timeout`); look
    again, since a process caught while forking may have left a child. Returns the PIDs that
    were signalled."""
    from .process import stop_procs  # not at the top: process imports this module (the token)

    signalled: list[int] = []
    deadline = time.monotonic() + timeout + 10
    while time.monotonic() < deadline:
        procs = find(token, port=port, since=since)
        if not procs:
            break
        signalled += [p.pid for p in procs if p.pid not in signalled]
        log.get().info("server_leftovers_stopped", pids=[p.pid for p in procs])
        stop_procs(procs, timeout)
    return signalled
