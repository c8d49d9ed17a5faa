"""Whether a TCP port is taken: the bind test the server itself would do (before a start, in
`status`, and while `restart` waits for the old server's port to be released)."""

from __future__ import annotations

import errno
import socket
import time


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (a bind test, as the server would do it)."""
    bind_host = host or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the server will report the bad host itself
    for family, type_, proto, _name, addr in infos:
        with socket.socket(family, type_, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def holder(settings) -> str:
    """Who holds the configured port, for a refusal or a warning: "another program", or a SparkQ
    server this config does not know (started with another database.path or sparkq.yml, beside
    which its pidfile is), named with its PID and database and how to stop it, since `stop`
    under this config cannot see it."""
    import psutil

    from .process import probe_health

    ok, body = probe_health(settings.health_url_for(settings.base_url), timeout=1.0)
    pid = body.get("pid") if ok and isinstance(body, dict) else None
    if not isinstance(pid, int) or "version" not in body:
        return "another program"
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return "another program"
    if "sparkq" not in argv:  # our server runs as `python -m sparkq ...`
        return "another program"
    db = argv[argv.index("--db") + 1] if "--db" in argv[:-1] else "?"
    # Its supervisor would restart it after a kill: stopping it needs the settings it runs with.
    return (f"a SparkQ server started with other settings (PID {pid}, database {db}): "
            "put database.path back to that database and run ./sparkq.sh stop")


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while port_in_use(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
