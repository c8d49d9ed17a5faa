"""The restic runner: find the binary, check its version, build its environment, run it.

restic is the engine for off-site copies (encryption, dedup, retention, `check`); this module
only knows how to call it. The policy (what to push, when, what to record) is in offsite.py.
Secrets never go on a command line: the repository and the password file reach restic through
RESTIC_REPOSITORY / RESTIC_PASSWORD_FILE, backend credentials through its environment, and any
user:password in a repository URL is redacted before a message is shown or logged.

A repository locked by another restic is waited for, as the supervisor lock is (locking.py):
locks left by dead processes are cleared at once with `restic unlock` (which removes only
those), a live holder (our own background push or its `forget --prune`, a user's restic) for up
to `offsite.lock_timeout` seconds, saying so on stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OffsiteFailed

MIN_VERSION = (0, 14)  # Debian bookworm's restic: everything used here works from it on
INSTALL_HINT = "install restic 0.14 or newer (Debian/Ubuntu: sudo apt-get install restic; macOS: brew install restic)"

# user:password@ in a URL: the password runs to the last @ before the host (it may hold an @).
_URL_SECRET = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<secret>[^/\s]*)@", re.I)
# key=value options of an rclone or other backend string (rclone::s3,secret_access_key=...:bucket).
_OPTION_SECRET = re.compile(r"(?P<key>\b[a-z0-9_]*(?:secret|key|token|pass|password|sas|auth)[a-z0-9_]*)=[^,:\s]+",
                            re.I)
# restic could not talk to the backend at all: the repository may well be there.
_UNREACHABLE = ("connection refused", "no such host", "dial tcp", "i/o timeout", "network is unreachable",
                "connection reset", "tls:", "x509:", "timeout awaiting response", "server misbehaving")
# What restic says when a repository is not there yet (local and REST backends alike).
_NO_REPO = ("Is there a repository at the following location?", "repository does not exist")
_REPLACED = {"RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE", "RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE",
             "RESTIC_PASSWORD_COMMAND"}
# A lock another restic holds (restic 0.14 to 0.17 say it this way). Other failures to create a
# lock (permissions, a read-only backend) are not waited for: their own message says more.
_LOCKED = re.compile(r"already locked(?: exclusively)?(?: by (?P<holder>[^\n]*))?")


def redact(text: str) -> str:
    """`rest:https://user:secret@host/` -> `rest:https://user:***@host/`, and a backend option
    such as `secret_access_key=...` -> `secret_access_key=***`."""
    text = _URL_SECRET.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _OPTION_SECRET.sub(lambda m: f"{m['key']}=***", text)


@dataclass(frozen=True)
class Target:
    """One restic repository with what it takes to open it (never printed whole)."""

    repository: str
    password_file: Path
    env: dict[str, str]  # backend credentials from offsite.env_file; values are secrets
    lock_timeout: float = 120.0  # offsite.lock_timeout: how long to wait for another restic's lock

    @property
    def shown(self) -> str:
        return redact(self.repository)


@dataclass(frozen=True)
class Restic:
    binary: str
    version: tuple[int, int, int]

    @property
    def can_skip_scan(self) -> bool:
        return self.version >= (0, 15, 0)  # `backup --no-scan` saves a walk over the bundle


def find() -> Restic:
    """The system's restic and its version, or one line naming what to install."""
    binary = shutil.which("restic")
    if binary is None:
        raise OffsiteFailed(f"off-site copies need restic, which is not installed; {INSTALL_HINT}")
    try:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OffsiteFailed(f"cannot run {binary} ({exc}); {INSTALL_HINT}") from None
    found = re.search(r"restic (\d+)\.(\d+)\.(\d+)", out)
    if not found:
        raise OffsiteFailed(f"cannot tell the version of {binary} (it said {out.strip()[:60]!r}); {INSTALL_HINT}")
    version = tuple(int(x) for x in found.groups())
    if version[:2] < MIN_VERSION:
        raise OffsiteFailed(f"restic {'.'.join(map(str, version))} is too old; {INSTALL_HINT}")
    return Restic(binary, version)  # type: ignore[arg-type]


class ResticError(OffsiteFailed):
    """restic ran and failed; the message is its own last line, redacted."""

    def __init__(self, message: str, *, no_repo: bool = False, locked: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.no_repo, self.locked, self.unreachable = no_repo, locked, unreachable


def run(restic: Restic, target: Target, args: list[str], *, timeout: float | None = None,
        cwd: Path | None = None) -> str:
    """Run `restic ARGS` against `target`; stdout on success, ResticError otherwise.

    A repository locked by another restic is waited for (see the module's docstring)."""
    try:
        return _run_once(restic, target, args, timeout=timeout, cwd=cwd)
    except ResticError as exc:
        if not exc.locked:
            raise
    _run_once(restic, target, ["unlock"])  # removes the locks of dead processes (a push killed mid-way)
    return _retry_while_locked(restic, target, args, timeout=timeout, cwd=cwd)


def _retry_while_locked(restic: Restic, target: Target, args: list[str], **kw) -> str:
    """Run again until no live restic holds the repository, up to target.lock_timeout seconds."""
    wait = target.lock_timeout
    deadline = time.monotonic() + wait
    delay = 0.0
    while True:
        try:
            return _run_once(restic, target, args, **kw)
        except ResticError as exc:
            if not exc.locked:
                raise
            last = exc
        if time.monotonic() >= deadline:
            raise ResticError(f"{last} for over {wait:.0f}s (offsite.lock_timeout); let it finish, or end it "
                              "if it hangs, then try again", locked=True)
        if not delay:  # said once, like a wait for the supervisor lock
            print(f"sparkq: waiting for another restic to release its lock on {target.shown} "
                  f"(giving up after {wait:.0f}s)", file=sys.stderr, flush=True)
        delay = min(delay * 2 or 0.5, 5.0)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))


def _run_once(restic: Restic, target: Target, args: list[str], *, timeout: float | None = None,
              cwd: Path | None = None) -> str:
    # Ours replace whatever names a repository or a password in the caller's environment.
    env = {k: v for k, v in os.environ.items() if k not in _REPLACED}
    env.update(target.env)
    env.update(RESTIC_REPOSITORY=target.repository, RESTIC_PASSWORD_FILE=str(target.password_file))
    try:
        proc = subprocess.run([restic.binary, *args], capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ResticError(f"restic {args[0]} did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise ResticError(f"cannot run restic ({exc.strerror}); {INSTALL_HINT}") from None
    if proc.returncode != 0:
        raise _error(args[0], proc.stderr, proc.returncode, target)
    return proc.stdout


def run_json(restic: Restic, target: Target, args: list[str], **kw):
    out = run(restic, target, [*args, "--json"], **kw)
    return json.loads(out) if out.strip() else None


def json_lines(text: str) -> list[dict]:
    """`backup --json` prints one JSON object a line (status lines, then the summary)."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def _error(command: str, stderr: str, code: int, target: Target) -> ResticError:
    text = redact(stderr)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    unreachable = any(marker in text.lower() for marker in _UNREACHABLE)
    no_repo = any(marker in text for marker in _NO_REPO) and not unreachable
    held = _LOCKED.search(text)
    locked = held is not None
    if "wrong password" in text:
        why = f"wrong password for {target.shown} (the password file {target.password_file} does not open it)"
    elif unreachable:
        first = next((ln for ln in lines if any(m in ln.lower() for m in _UNREACHABLE)), lines[0] if lines else "")
        why = f"cannot reach {target.shown} ({first.removeprefix('Fatal: ')[:200]})"
    elif no_repo:
        why = f"no restic repository at {target.shown}"
    elif held is not None:
        by = f" ({held['holder'].strip()})" if held["holder"] else ""
        why = f"the repository {target.shown} is locked by another restic{by}"
    else:
        fatal = [ln for ln in lines if ln.lower().startswith("fatal")]
        why = (fatal or lines or [f"exit status {code}"])[-1].removeprefix("Fatal: ")
        why = why[:300]
    return ResticError(f"restic {command} failed: {why}", no_repo=no_repo, locked=locked, unreachable=unreachable)
