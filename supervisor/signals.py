"""What the supervisor loop looks after however long a wait lasts (`Supervisor.tick`,
supervise.py): the signals that ask it to stop or leave (StopSignals), systemd's watchdog
(Watchdog) and, as PID 1 of a container, orphans to reap (reap_orphans).

SIGTERM during a one-shot operation, such as a start waiting or a restore placing files, is
interrupts.py's.
"""

from __future__ import annotations

import os
import signal
import time

from . import log
from .runstate import RELEASE


class StopSignals:
    """Remember that SIGTERM/SIGINT/SIGHUP asked us to stop, or RELEASE asked us to leave; the
    loop acts on it. The handler only records: stopping the server happens in one place."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, RELEASE)

    def __init__(self, notifier):
        self.notifier = notifier
        self.signum: int | None = None
        self.previous: dict = {}

    @property
    def stopping(self) -> bool:
        return self.signum is not None

    @property
    def released(self) -> bool:
        return self.signum == RELEASE

    @property
    def forward(self) -> int:
        """What the server gets: SIGINT stays SIGINT (Ctrl-C); a hang-up asks for a clean stop."""
        return signal.SIGINT if self.signum == signal.SIGINT else signal.SIGTERM

    def install(self) -> None:
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            self.notifier.send("STOPPING=1")
            log.get().info("stop_requested", signal=signal.Signals(signum).name)


class Watchdog:
    """systemd's watchdog: WATCHDOG=1 every half of WATCHDOG_USEC, from the loop itself, so a
    stuck loop stops pinging and systemd restarts us."""

    def __init__(self, notifier):
        self.notifier = notifier
        usec = os.environ.get("WATCHDOG_USEC", "")
        owner = os.environ.get("WATCHDOG_PID", "")
        ours = not owner or (owner.isdigit() and int(owner) == os.getpid())
        self.every = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and ours else None
        self.next = 0.0

    def ping_if_due(self) -> None:
        if self.every is None or time.monotonic() < self.next:
            return
        self.notifier.send("WATCHDOG=1")
        self.next = time.monotonic() + self.every


def reap_orphans(server_pid: int | None) -> None:
    """As PID 1 of a container, orphans are re-parented to us: collect the ones that exited so
    none stays a zombie. The server is left to its Popen, which reads its status."""
    if os.getpid() != 1:
        return
    import psutil

    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        if child.pid == server_pid:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue
