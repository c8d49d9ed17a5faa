"""systemd integration: render the unit files for this install, and sd_notify for `sparkq run`.

The unit templates live in systemd/ at the top of the checkout, with @PLACEHOLDERS@ that
`render_unit` fills in (absolute paths, the user, timeouts derived from sparkq.yml).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import quote

from . import log
from .errors import UsageError
from .paths import CODE_ROOT


def _template_dir() -> Path:
    # The templates of the code that will run, not whatever a SPARKQ_ROOT folder may hold.
    candidate = CODE_ROOT / "systemd"
    if (candidate / "sparkq.service").is_file():
        return candidate
    raise UsageError(f"unit templates not found in {candidate}; reinstall SparkQ from its checkout")


def _escape(value: str) -> str:
    """A path as systemd reads it: `%` starts a specifier, whitespace splits words."""
    if any(c in value for c in "\n\"\\"):
        raise UsageError(f"path {value!r} cannot be written into a systemd unit; move SparkQ to a plainer path")
    value = value.replace("%", "%%")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _offsite_paths(settings) -> list[Path]:
    """What the background pushes write outside the project: a local restic repository named
    in sparkq.yml, and restic's cache in the service user's home (ProtectHome=read-only)."""
    import pwd

    if not settings.offsite_repository:  # RESTIC_* of a shell are not the service's environment
        return []
    from .backup.offsite_state import repository_of

    repo = repository_of(settings)
    local = repo[len("local:"):] if repo.startswith("local:") else repo
    found = [Path(local)] if local.startswith("/") else []
    return found + [Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "restic"]


def render_unit(settings, user: bool = False) -> str:
    """The system unit (or with `user`, the user unit) for this install, ready to install."""
    import pwd

    paths = settings.paths
    root = paths.root.resolve()
    code = CODE_ROOT.resolve()
    name = "sparkq-user.service" if user else "sparkq.service"
    text = (_template_dir() / name).read_text(encoding="utf-8")

    # The service runs this checkout's sparkq.sh (the project root may be another folder, given
    # by SPARKQ_ROOT). It writes the DB, backups, logs, and (on restore) sparkq.yml and .env in
    # the root; sparkq.sh may (re)install the checkout's .venv. A DB, backup dir or .venv outside
    # the root is added; the leading '-' keeps a missing one from failing the start.
    covered = [root]
    writable = [_escape(str(root))]
    extras = [paths.db.parent, paths.log_dir, paths.backup_dir, paths.config_file.parent,
              code / ".venv", code / "sparkq.egg-info", *_offsite_paths(settings)]
    for extra in extras:
        extra = extra.resolve()
        if not any(_within(extra, done) for done in covered):
            covered.append(extra)
            writable.append(_escape("-" + str(extra)))
    env = []
    if root != code:
        env.append("SPARKQ_ROOT=" + str(root))
    if paths.config_file.resolve() != root / "sparkq.yml":
        env.append("SPARKQ_CONFIG=" + str(paths.config_file.resolve()))
    env_lines = "".join(f"Environment={_escape(item)}\n" for item in env)

    stop_timeout = settings.stop_timeout
    start_timeout = settings.start_timeout
    # PrivateTmp= mounts an empty /tmp: an install under /tmp would vanish from the service's view.
    in_tmp = any(_within(where, Path(t)) for t in ("/tmp", "/var/tmp") for where in (root, code))
    values = {
        "@DOC@": _escape("file:" + quote(str(code / "README.md"))),
        "@WORKDIR@": str(root).replace("%", "%%"),  # taken verbatim: no quotes here
        "@PRIVATE_TMP@": "no" if in_tmp else "yes",
        "@EXEC@": _escape(str(code / "sparkq.sh")),
        "@USER@": pwd.getpwuid(os.getuid()).pw_name,
        "@READ_WRITE_PATHS@": " ".join(writable),
        "@ENVIRONMENT@\n": env_lines,
        # `run` escalates to SIGKILL itself after stop_timeout; systemd must wait longer than that.
        "@TIMEOUT_STOP_SEC@": str(int(max(30, stop_timeout + 20))),
        # the first run may install .venv; `run` extends this while the pre-start backup runs.
        "@TIMEOUT_START_SEC@": str(int(max(600, start_timeout + 120))),
        # `run` pings from its loop; the longest the loop blocks is a stop escalating to SIGKILL.
        "@WATCHDOG_SEC@": str(int(max(30, 2 * (stop_timeout + 10)))),
    }
    # The template's own header says how to render it; the rendered unit says where it came from.
    body = text[text.index("[Unit]"):]
    for key, value in values.items():
        body = body.replace(key, value)
    kind = "user" if user else "system"
    return f"# SparkQ {kind} unit for {root}, written by `sparkq systemd-unit{' --user' if user else ''}`.\n{body}"


# --- sd_notify -------------------------------------------------------------------------------


class Notifier:
    """Send sd_notify datagrams to $NOTIFY_SOCKET; does nothing when it is unset."""

    def __init__(self, address: str | None):
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None

    @classmethod
    def from_env(cls) -> "Notifier":
        return cls(os.environ.get("NOTIFY_SOCKET"))

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            log.get().warning("sd_notify_failed", socket=self.address, error=str(exc))

    def extend_timeout(self, seconds: float, every: float = 10.0):
        """While the block runs, keep asking systemd for `seconds` more start time."""
        return _Extender(self, seconds, every)


class _Extender:
    def __init__(self, notifier: Notifier, seconds: float, every: float):
        self.notifier, self.seconds, self.every = notifier, seconds, every
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            self.notifier.send(f"EXTEND_TIMEOUT_USEC={int(self.seconds * 1_000_000)}")
            if self.done.wait(self.every):
                return

    def __enter__(self):
        if self.notifier.address:
            self.thread = threading.Thread(target=self._loop, name="sd-notify-extend", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()
