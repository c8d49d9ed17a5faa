"""Turning SIGTERM into an exception where a half-done operation must clean up after itself."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigterm_unwinds():
    """Within the block, SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so the code inside can
    clean up or roll back: a half-started server is killed, a half-done restore is undone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
