"""The project's `.env`: reading it, and explaining an environment exec refuses as too large.

`read_env_file` parses KEY=VALUE lines for the server's environment (the real environment wins
over it). `explain_e2big` turns exec's E2BIG ("Argument list too long") into terms the user can
act on: the kernel limits each single argument or environment string (MAX_ARG_STRLEN, 128 KiB on
Linux) and all of them together (ARG_MAX). The usual culprit is a huge value in `.env`, not
server.command, so the message names the variable and where it came from; never its value.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import log
from .fmt import human_size


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file: KEY=VALUE lines, `#` comments, optional `export `, optional quotes.

    Lines that are not UTF-8 or not KEY=VALUE are skipped with one warning naming their line
    numbers only; values are never logged.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.get().warning("env_file_unreadable", path=str(path), error=exc.strerror)
        return {}
    result: dict[str, str] = {}
    bad: list[int] = []
    for number, raw_line in enumerate(data.splitlines(), start=1):
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError:
            bad.append(number)
            continue
        if not line or line.startswith("#"):
            continue
        parsed = _env_line(line)
        if parsed is None:
            bad.append(number)
        else:
            result[parsed[0]] = parsed[1]
    if bad:
        log.get().warning("env_file_lines_skipped", path=str(path), lines=bad,
                          hint="each line must be KEY=VALUE in UTF-8")
    return result


def _env_line(line: str) -> tuple[str, str] | None:
    if line.startswith("export "):
        line = line[len("export "):].lstrip()
    key, sep, value = line.partition("=")
    key = key.strip()
    if not sep or not key or not (key[0].isalpha() or key[0] == "_") or not all(
        c.isalnum() or c == "_" for c in key
    ) or not key.isascii():
        return None
    value = value.strip()
    if value and value[0] in "\"'":
        close = value.find(value[0], 1)
        rest = value[close + 1:].strip() if close > 0 else ""
        if close < 0 or (rest and not rest.startswith("#")):
            return None  # an opening quote never closed, or text after the closing one
        value = value[1:close]
    else:
        value = value.split(" #", 1)[0].rstrip()
    return key, value


# --- too large for exec ----------------------------------------------------------------------

MAX_ARG_STRLEN = 32 * 4096  # Linux: one string, its terminating NUL included


def explain_e2big(argv: list[str], env: dict[str, str], env_file: Path) -> str:
    """Why exec refused the server with E2BIG: the variable (or argument) too large, and where it
    came from."""
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
