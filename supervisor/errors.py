"""One error root and one exit-code map.

Domain code raises these; only the CLI turns them into a one-line message and an exit status.
Messages start with what failed and end with what to do.
"""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
NOT_RUNNING = 3  # `status` only, as LSB init scripts and `systemctl is-active` use it
NOT_FOUND = 4
VERIFY_FAILED = 5
IN_USE = 6
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def status_exit(state: str) -> int:
    """`status`: 0 while the server runs or is being brought back, 3 when it is stopped or the
    supervisor gave up (fatal)."""
    return NOT_RUNNING if state in ("stopped", "fatal") else OK


def exit_status(returncode: int) -> int:
    """A child's Popen return code as a shell reports it: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class SparkqError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = FAILURE


class UsageError(SparkqError):
    exit_code = USAGE


class ConfigError(UsageError):
    """sparkq.yml (or an environment variable) is malformed or has a wrong value."""


class BackupNotFound(SparkqError):
    exit_code = NOT_FOUND


class VerificationFailed(SparkqError):
    exit_code = VERIFY_FAILED


class InUse(SparkqError):
    exit_code = IN_USE


class BackupFailed(SparkqError):
    """Taking a backup failed; nothing partial was left."""


class StartFailed(SparkqError):
    """The server did not come up healthy."""


class BackupDiskFull(BackupFailed):
    """A backup ran out of space; nothing partial was left."""


class Interrupted(SparkqError):
    """Ctrl-C (or SIGTERM where it unwinds) stopped a command; what the command had changed is
    put back, and an operation that had something to undo says so in the message."""

    exit_code = INTERRUPTED


class OffsiteFailed(SparkqError):
    """An off-site operation (restic) failed; local bundles are untouched."""
