"""`logs`: the last lines of the server log, or the supervisor's events as readable lines; with
`follow`, new lines as they come (like `tail -f`, across a rotation of the file). `log_tail` is
also what a failed start and a fatal supervisor quote of a log."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .config import Settings

LOG_TAIL_LINES = 20


def show(settings: Settings, *, lines: int, follow: bool, supervisor: bool) -> None:
    path = settings.paths.supervisor_log if supervisor else settings.paths.server_log
    render = _event_line if supervisor else (lambda line: line)
    # Where the tail ends is where following begins: a line written in between is printed once,
    # and a line still being written is left whole to the follow.
    end, inode = _size_and_inode(path)
    if follow:
        end = _after_last_newline(path, end)
    for line in log_tail(path, lines=lines, end=end) if lines else []:
        print(render(line), flush=follow)
    if follow:
        try:
            _follow(path, render, end, inode)
        except KeyboardInterrupt:
            pass


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES, end: int | None = None) -> list[str]:
    """The last `lines` lines written to `path` after byte `offset` (and before byte `end`)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END) if end is None else end
            start = max(offset, size - 64 * 1024)
            fh.seek(start)
            data = fh.read(max(size - start, 0))
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > offset and text:
        text = text[1:]  # the first line was cut in the middle
    return text[-lines:]


def _follow(path: Path, render, offset: int, inode: int | None) -> None:
    """Print what is appended to `path` after byte `offset`; start again from the top when the
    file is replaced."""
    partial = b""
    while True:
        size, now_inode = _size_and_inode(path)
        if now_inode != inode or size < offset:  # rotated or truncated
            offset, inode, partial = 0, now_inode, b""
        if size > offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = partial + fh.read(size - offset)
            offset = size
            *complete, partial = data.split(b"\n")
            for raw in complete:
                print(render(raw.decode("utf-8", errors="replace")), flush=True)
        time.sleep(0.2)


def _after_last_newline(path: Path, end: int) -> int:
    try:
        with open(path, "rb") as fh:
            start = max(0, end - 64 * 1024)
            fh.seek(start)
            data = fh.read(end - start)
    except OSError:
        return end
    cut = data.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else start


def _size_and_inode(path: Path) -> tuple[int, int | None]:
    try:
        st = path.stat()
        return st.st_size, st.st_ino
    except OSError:
        return 0, None


def _event_line(line: str) -> str:
    """A JSON event of the supervisor log as `2026-12-02T12:00:00Z warning event key=value`;
    other lines (a traceback, the supervisor's own output) as they are."""
    try:
        event = json.loads(line)
    except ValueError:
        return line
    if not isinstance(event, dict):
        return line
    stamp = str(event.pop("timestamp", "")).replace("+00:00", "Z")
    level = event.pop("level", "info")
    name = event.pop("event", "")
    rest = " ".join(f"{key}={value}" for key, value in event.items())
    return f"{stamp} {level:<7} {name}" + (f" {rest}" if rest else "")
