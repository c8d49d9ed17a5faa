"""Why exec refused the server with E2BIG ("Argument list too long"), in terms the user can act on.

The kernel limits each single argument or environment string (MAX_ARG_STRLEN, 128 KiB on Linux)
and all of them together (ARG_MAX). The usual culprit is a huge value in `.env`, not
server.command, so the message names the variable and where it came from; never its value.
"""

from __future__ import annotations

import os
from pathlib import Path

from .fmt import human_size

MAX_ARG_STRLEN = 32 * 4096  # Linux: one string, its terminating NUL included


def explain_e2big(argv: list[str], env: dict[str, str], env_file: Path) -> str:
    from .config import read_env_file

    from_file = set(read_env_file(env_file)) - set(os.environ)

    def origin(key: str) -> str:
        return f"{env_file}" if key in from_file else "the environment of this command"

    sizes = sorted(((len(f"{k}={v}".encode()) + 1, k) for k, v in env.items()), reverse=True)
    if sizes and sizes[0][0] > MAX_ARG_STRLEN:
        size, key = sizes[0]
        return (f"cannot start the server: the variable {key} in {origin(key)} is {human_size(size)}, over "
                f"the {human_size(MAX_ARG_STRLEN)} one environment variable may hold; shorten it (or keep "
                "the value in a file and pass the file's path)")
    for number, arg in enumerate(argv, start=1):
        if len(arg.encode()) + 1 > MAX_ARG_STRLEN:
            return (f"cannot start the server: argument {number} of server.command is "
                    f"{human_size(len(arg.encode()))}, over the {human_size(MAX_ARG_STRLEN)} one argument "
                    "may hold; shorten it")
    total = sum(size for size, _ in sizes) + sum(len(a.encode()) + 1 for a in argv)
    largest = ", ".join(f"{key} ({origin(key)}, {human_size(size)})" for size, key in sizes[:3])
    return (f"cannot start the server: its environment and arguments ({human_size(total)}) exceed the "
            f"system's limit; the largest variables are {largest}; shorten them")
