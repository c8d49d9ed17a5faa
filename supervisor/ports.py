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


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while port_in_use(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
