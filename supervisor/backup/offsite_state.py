"""What SparkQ remembers about off-site pushes: which bundles are there, the last failure, the
retry backoff, the last `forget`. One small JSON file in the data dir, written atomically under
the off-site lock (offsite.py); `status` reads it without restic, so it stays fast.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..fsutil import atomic_write_bytes

# Failed pushes wait 1, 2, 4 ... minutes before an automatic retry, at most 6 hours.
BACKOFF_FIRST_S = 60.0
BACKOFF_MAX_S = 6 * 3600.0
FORGET_EVERY_S = 24 * 3600.0  # `forget --prune` at most daily: pruning rewrites packs


def configured(settings) -> bool:
    """Off-site copies are on when a repository is set in sparkq.yml or RESTIC_REPOSITORY."""
    return bool(settings.offsite_repository or os.environ.get("RESTIC_REPOSITORY"))


def repository_of(settings) -> str:
    """The configured repository as restic gets it: a local path is made absolute (relative to
    sparkq.yml, `~` expanded), so every caller, whatever its working folder, means one place.
    Here, beside `configured`, so that `status` needs no restic code to tell what is pending."""
    repo = settings.offsite_repository or os.environ.get("RESTIC_REPOSITORY") or ""
    if repo.startswith("~"):
        repo = os.path.expanduser(repo)
    if repo and repo[0] != "/" and ":" not in repo.split("/")[0]:
        repo = str(settings.paths.config_file.parent / repo)
    return repo


def state_file(paths) -> Path:
    return paths.data_dir / f".{paths.db.stem or 'sparkq'}-offsite.json"


def lock_file(paths) -> Path:
    return paths.data_dir / f".{paths.db.stem or 'sparkq'}-offsite.lock"


@dataclass
class State:
    pushed: dict[str, dict] = field(default_factory=dict)  # bundle name -> snapshot, at, data_added
    # Which repository `pushed` and the failures are about (a hash: a URL may hold a password).
    # Pointing offsite.repository elsewhere makes every bundle pending again.
    repository: str | None = None
    failures: int = 0  # consecutive failed pushes
    last_failure: dict | None = None  # {"at": epoch, "error": one line}
    last_push_at: float | None = None
    retry_at: float | None = None
    last_forget_at: float | None = None

    def record_push(self, name: str, snapshot: str, data_added: int | None) -> None:
        self.pushed[name] = {"snapshot": snapshot, "at": time.time(), "data_added": data_added}
        self.failures, self.retry_at, self.last_push_at = 0, None, time.time()

    def record_stored(self, name: str, snapshot: str) -> None:
        """A bundle found in the repository without our push (fetched from it): not pending."""
        self.pushed.setdefault(name, {"snapshot": snapshot, "at": time.time(), "data_added": None})

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_failure = {"at": time.time(), "error": error}
        self.retry_at = time.time() + min(BACKOFF_FIRST_S * 2 ** (self.failures - 1), BACKOFF_MAX_S)

    def clear_failure(self) -> None:
        self.failures, self.retry_at = 0, None

    def retry_due(self, now: float | None = None) -> bool:
        return self.retry_at is None or (now or time.time()) >= self.retry_at

    def forget_due(self, now: float | None = None) -> bool:
        return self.last_forget_at is None or (now or time.time()) - self.last_forget_at >= FORGET_EVERY_S

    def keep_only(self, names: set[str]) -> None:
        """Forget what we knew of bundles that are gone locally: the file stays small."""
        self.pushed = {k: v for k, v in self.pushed.items() if k in names}


def load(paths, repository: str) -> State:
    """The state for `repository` (as repository_of gives it): a fresh one when what is
    recorded was about another repository, so nothing counts as pushed there."""
    rid = repository_id(repository)
    try:
        raw = json.loads(state_file(paths).read_bytes())
        state = State(**{k: raw[k] for k in State.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError):
        state = State()  # none yet, or damaged: every bundle counts as pending, which is safe
    if state.repository is None:  # written before the repository was recorded: it was this one
        state.repository = rid
    if state.repository != rid:
        state = State(repository=rid)
    return state


def repository_id(repository: str) -> str:
    """A repository's identity: without the password a URL may carry, which can change (rotated)
    while the repository stays the same one."""
    import hashlib

    from .restic import redact

    return hashlib.sha256(redact(repository).encode()).hexdigest()[:16]


def save(paths, state: State) -> None:
    atomic_write_bytes(state_file(paths), json.dumps(state.__dict__, indent=1).encode(), mode=0o600)


def summary(settings, bundle_names: list[str]) -> dict | None:
    """For `status`: pending bundles and the last failure; None when off-site is off.

    `bundle_names`: the regular bundles on disk (status scanned them already)."""
    if not configured(settings):
        return None
    state = load(settings.paths, repository_of(settings))
    pending = [n for n in bundle_names if n not in state.pushed]
    failed = state.last_failure if state.failures else None
    return {
        "pending": len(pending),
        "pending_bundles": pending,
        "last_push_at": _iso(state.last_push_at),
        "last_failure_at": _iso(failed["at"]) if failed else None,
        "last_failure_age_s": round(time.time() - failed["at"], 1) if failed else None,
        "last_error": failed["error"] if failed else None,
        "retry_at": _iso(state.retry_at) if failed else None,
    }


def summary_text(info: dict, duration) -> str:
    """`off-site: 2 pending, last push failed 3m ago: connection refused`."""
    parts = [f"{info['pending']} pending" if info["pending"] else "up to date"]
    if info["last_error"]:
        parts.append(f"last push failed {duration(info['last_failure_age_s'])} ago: {info['last_error']}")
    return "off-site: " + ", ".join(parts)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
