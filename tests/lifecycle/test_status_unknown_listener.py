"""`status` with no server of ours but something listening on our port says so, instead of a
bare "stopped" while a server answers there."""

from __future__ import annotations

import socket


def test_status_names_a_foreign_listener_on_our_port(project):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", project.port))
        sock.listen()
        result = project.cli("status")
    assert result.returncode == 3
    assert f"port {project.port} is in use" in result.stdout, result.stdout
    quiet = project.cli("status")
    assert "in use" not in quiet.stdout
