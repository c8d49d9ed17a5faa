"""The supervisor `start` leaves running: `spawn_detached` starts `sparkq _supervise` in a
session of its own (lifecycle.start calls it, then waits for its report), and `serve_detached`
is what that process does: the first start, its result reported back, then the loop
(supervise.py).

The report goes into the state file once this supervisor is in charge; a supervisor that never
took charge (a server already runs, or the start was refused) answers in a reply file of its own
instead (runstate.write_reply), so the state of the one in charge is never overwritten.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .config import Settings
from .errors import FAILURE, OK, SparkqError
from .locking import file_lock
from .runstate import write_reply
from .signals import StopSignals
from .supervise import Supervisor


def spawn_detached(settings: Settings, *, trigger: str, skip_backup: bool) -> subprocess.Popen:
    """Start `sparkq _supervise` in a session of its own, its output in the supervisor log."""
    paths = settings.paths
    argv = [sys.executable, "-P", "-m", "supervisor", "_supervise", "--trigger", trigger]
    if skip_backup:
        argv.append("--skip-backup")
    env = dict(os.environ, SPARKQ_ROOT=str(paths.root))
    if paths.config_file.resolve() != (paths.root / "sparkq.yml").resolve():
        env["SPARKQ_CONFIG"] = str(paths.config_file)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.supervisor_log, "ab") as out:
        return subprocess.Popen(argv, cwd=paths.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def serve_detached(settings: Settings, *, trigger: str, skip_backup: bool) -> int:
    """The supervisor `start` leaves running: the first start's result goes to the state file
    (the waiting `start` prints it), then the loop."""
    from .lifecycle import running
    from .systemd import Notifier

    notifier = Notifier(None)  # only `run` speaks to systemd
    signals = StopSignals(notifier)
    signals.install()
    sup = Supervisor(settings, "start", notifier, signals)
    said: list[str] = []  # the backup line: on failure, `start` says the backup was taken
    in_charge = False  # until then the state file is another supervisor's (or nobody's)
    try:
        with file_lock(settings.paths.lockfile):
            notices: list[str] = []
            info = running(settings, notices)
            if info is not None:
                write_reply(settings.paths, os.getpid(), {"pid": info.pid, "url": info.url,
                                                          "already_running": True, "notices": notices})
                return OK
            sup.save()
            in_charge = True
            launched = sup.first_start(trigger, skip_backup, notices=notices,
                                       on_prepared=lambda _notices, line: said.append(line or ""))
    except SparkqError as exc:
        report = {"error": str(exc), "exit_code": exc.exit_code, "notices": [line for line in said if line]}
        if in_charge:
            sup.save(state="stopped", report=report)
        else:
            write_reply(settings.paths, os.getpid(), report)
        return exc.exit_code
    if launched.info is None:
        sup.save(state="stopped", report={"error": "stopped while starting", "exit_code": FAILURE})
    else:
        backup = launched.backup
        # "running" goes with the report in one write: `start` returns once it reads the report,
        # and a `status` right after must not still say "starting".
        sup.save(state="running",
                 report={"pid": launched.info.pid, "url": launched.info.url, "notices": launched.notices,
                         "backup": backup and backup.to_dict(), "backup_text": launched.backup_text})
    return sup.supervise(launched)
