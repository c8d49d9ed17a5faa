"""Turning SIGTERM into an exception where a half-done operation must clean up after itself, and
holding interrupts off while it does."""

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


@contextlib.contextmanager
def uninterrupted():
    """Within the block, Ctrl-C and SIGTERM are ignored: work that undoes a half-done operation
    (a restore's roll-back) must run to its end, and its own message then says what happened.
    Outside the main thread (where signals are not delivered) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
