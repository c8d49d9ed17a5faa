"""Off-site copies: push published bundles to a restic repository, list, fetch back, check.

Every regular bundle is pushed once it is published: in the foreground by a manual `backup`
(which reports the snapshot or the failure and still exits 0: the local backup succeeded), in a
detached child after `start` (spawn_push: the start never waits for the network). A bundle not
yet in the repository is pending (offsite_state.py); a failure is recorded, shown by `status`
and retried with backoff; nothing here deletes a local bundle.

restic groups snapshots by host and path for `forget`, and finds its parent snapshot by path, so
each bundle is backed up from one stable folder per project (`.offsite-stage/bundle` in the
backup dir, filled with hard links): dedup and the keep policy then work across bundles, and
the bundle's own name travels as a tag. kill -9 mid-push leaves at most a stale lock and unused
data in the repository (restic writes the snapshot last); the next restic command we run clears
the dead process's lock (restic.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

from .. import log
from ..envfile import read_env_file
from ..errors import ConfigError, OffsiteFailed, SparkqError, UsageError
from . import offsite_state, restic
from .offsite_state import configured, repository_of

KEEP_DEFAULT = {"last": 7, "daily": 14, "weekly": 8, "monthly": 24}  # about two years of months
TAG = "sparkq"
CREATED_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # the `created:` tag: a bundle's time in UTC, sortable as text
STAGE_DIR = ".offsite-stage"


# --- the repository and its secrets -------------------------------------------------------------


def target_of(settings) -> restic.Target:
    """The configured repository, password file and backend credentials, checked.

    A bad value in the `offsite` section is an error here even when sparkq.yml was read leniently:
    a push must never run `forget` with a default keep policy in place of the user's."""
    settings.strict_for("offsite")
    base = settings.paths.config_file.parent
    if not repository_of(settings):
        raise UsageError("off-site copies are not configured; add an `offsite:` section with repository and "
                         "password_file to sparkq.yml (see docs/BACKUP.md, Off-site copies)")
    pw = settings.offsite_password_file or os.environ.get("RESTIC_PASSWORD_FILE")
    if not pw:
        raise ConfigError("offsite.password_file is not set (nor RESTIC_PASSWORD_FILE); point it at a file that "
                          "holds the repository password, mode 600")
    password_file = _private_file(base, pw, "offsite.password_file", "the repository password")
    env: dict[str, str] = {}
    if settings.offsite_env_file:
        env = read_env_file(_private_file(base, settings.offsite_env_file, "offsite.env_file",
                                      "backend credentials"))
    return restic.Target(repository_of(settings), password_file, env, settings.offsite_lock_timeout)


def _private_file(base: Path, given: str, key: str, holds: str) -> Path:
    path = Path(given).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{key} {path} cannot be read ({exc.strerror}); create it with {holds}, mode 600") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key} {path} is not a regular file; point it at a file with {holds}")
    if st.st_mode & 0o077:
        raise ConfigError(f"{key} {path} has mode {stat.S_IMODE(st.st_mode):o}, readable by other users; "
                          f"it holds {holds}: run chmod 600 {path}")
    return path


def keep_policy(settings) -> dict[str, int]:
    return {**KEEP_DEFAULT, **(settings.offsite_keep or {})}


class _Busy(OffsiteFailed):
    """Another push of this project holds the off-site lock."""


@contextlib.contextmanager
def _pushing(settings, *, wait: float | None = None):
    """One push (or forget) per project at a time: they share the stage folder and the state.
    Another one is waited for as a restic lock is: said once, given up after `wait` seconds
    (offsite.lock_timeout by default; 0 for a background push, which leaves the work to it)."""
    import time

    paths = settings.paths
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(offsite_state.lock_file(paths), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        wait = settings.offsite_lock_timeout if wait is None else wait
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _Busy(f"waited {wait:.0f}s (offsite.lock_timeout) for another off-site push of this "
                                "project, which still runs; try again when it has ended") from None
                if not told:
                    print(f"sparkq: waiting for another off-site push of this project to finish (giving up "
                          f"after {wait:.0f}s)", file=sys.stderr, flush=True)
                    told = True
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


# --- push ---------------------------------------------------------------------------------------


@dataclass
class PushReport:
    pushed: list[dict] = field(default_factory=list)  # bundle, snapshot, data_added
    pending: list[str] = field(default_factory=list)
    error: str | None = None
    forgot: bool = False
    repository: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        lines = [f"off-site: {p['bundle']} -> snapshot {p['snapshot'][:8]} ({_size(p['data_added'])} new) "
                 f"in {self.repository}" for p in self.pushed]
        if self.error:
            lines.append(f"off-site: push failed: {self.error}; {len(self.pending)} pending, "
                         "retry with ./sparkq.sh backup-push")
        elif not self.pushed:
            lines.append("off-site: nothing pending")
        if self.forgot:
            lines.append("off-site: applied the keep policy (restic forget --prune)")
        return "\n".join(lines)


def push(settings, ref: str | None = None, *, all_: bool = False, honour_backoff: bool = False,
         background: bool = False) -> PushReport:
    """Push pending bundles (or `ref`, or every local bundle with `all_`), oldest first.

    Stops at the first failure (a backend that is down fails the rest alike) and records it.
    `honour_backoff` (a periodic caller such as the supervisor loop) skips the attempt while the
    backoff after the last failure runs; a start or a person asking always tries. `background`
    (a detached push) leaves the work to a push that is already running."""
    if not configured(settings):
        target_of(settings)  # raises: says how to configure it
    try:
        with _pushing(settings, wait=0 if background else None):
            return _push_locked(settings, ref, all_, honour_backoff)
    except _Busy:
        if background:
            return PushReport()
        raise


def _push_locked(settings, ref: str | None, all_: bool, honour_backoff: bool) -> PushReport:
    from .catalog import resolve, scan

    paths = settings.paths
    state = offsite_state.load(paths, repository_of(settings))
    if honour_backoff and not state.retry_due():
        return PushReport(error=(state.last_failure or {}).get("error"))
    regular, _pre = scan(paths.backup_dir)
    state.keep_only({e.name for e in regular})
    if ref is not None:
        chosen = [resolve(settings, ref)]
        if chosen[0].kind != "regular":
            raise UsageError(f"{chosen[0].name} is a pre-restore bundle; those stay on this machine "
                             "(docs/BACKUP.md, Off-site copies): push a regular backup")
    else:
        chosen = [e for e in reversed(regular) if all_ or e.name not in state.pushed]
    report = PushReport(pending=[e.name for e in chosen])
    if not chosen:
        state.clear_failure()  # nothing is waiting: an old failure no longer says anything
    try:
        target = target_of(settings)
        report.repository = target.shown
        runner = restic.find()
        for entry in chosen:
            done = _push_one(runner, target, paths, entry)
            state.record_push(entry.name, done["snapshot"], done["data_added"])
            report.pushed.append(done)
            report.pending.remove(entry.name)
            offsite_state.save(paths, state)
        if report.pushed and state.forget_due():
            report.forgot = _forget(runner, target, settings)
            state.last_forget_at = state.last_push_at  # a failed forget waits a day too
    except SparkqError as exc:
        # Recorded for status and the retry; the report (or the line below) tells the user, so
        # the log event stays out of the console unless --verbose.
        report.error = str(exc)
        state.record_failure(report.error)
        log.get().info("offsite_push_failed", error=report.error, pending=len(report.pending))
        if isinstance(exc, UsageError):
            raise  # a setting to fix (password file mode, ...): one line and exit 2
    finally:
        shutil.rmtree(_stage_root(paths), ignore_errors=True)
        with contextlib.suppress(OSError):
            (paths.backup_dir / STAGE_DIR).rmdir()  # unless another project's push uses it
        offsite_state.save(paths, state)
    return report


def note_stored(settings, name: str, snapshot: str) -> None:
    """A bundle fetched from the repository is stored there already: not pending, so the next
    start does not push it a second time. Best effort: the bundle is in place whatever happens
    here, and while a push runs (it owns the state) the worst case is one more copy off-site."""
    try:
        with _pushing(settings, wait=0):
            state = offsite_state.load(settings.paths, repository_of(settings))
            state.record_stored(name, snapshot)
            offsite_state.save(settings.paths, state)
    except (_Busy, OSError) as exc:
        log.get().info("offsite_note_stored_skipped", bundle=name, reason=str(exc))


def _push_one(runner: restic.Restic, target: restic.Target, paths, entry) -> dict:
    from . import history

    stage = _stage(_stage_root(paths), Path(entry.path))
    # created: the bundle's own time, so `latest` is the newest bundle even when an older one was
    # pushed later (after a failed push); the snapshot's time is only when it was pushed.
    created = entry.created_at.astimezone(timezone.utc).strftime(CREATED_FORMAT)
    tags = [TAG, entry.name, f"trigger:{entry.trigger or 'unknown'}", f"created:{created}"]
    project = history.project_id(paths)
    if project:
        tags.append(f"project:{project}")
    args = ["backup", "--json", *[x for t in tags for x in ("--tag", t)], str(stage)]
    if runner.can_skip_scan:
        args.insert(1, "--no-scan")
    out = _with_repair(runner, target, args)
    summary = next((r for r in restic.json_lines(out) if r.get("message_type") == "summary"), {})
    if not summary.get("snapshot_id"):
        raise OffsiteFailed(f"restic backup of {entry.name} reported no snapshot; run ./sparkq.sh backup-push again")
    log.get().info("offsite_pushed", bundle=entry.name, snapshot=summary["snapshot_id"][:8],
                   data_added=summary.get("data_added"))
    return {"bundle": entry.name, "snapshot": summary["snapshot_id"], "data_added": summary.get("data_added")}


def _with_repair(runner, target, args: list[str]) -> str:
    """Run restic; a repository that does not exist yet is initialised (the runner itself clears
    stale locks and waits for live ones).

    Only a location without restic's own files is initialised: `restic init` checks for a config
    file alone, and one missing from a repository whose keys and data are there (damaged, or
    half-copied) would get a second key and a new config, which leaves its snapshots unreadable.
    SparkQ can look first on a local path and a rest: server; elsewhere it says how to init."""
    try:
        return restic.run(runner, target, args)
    except restic.ResticError as exc:
        if not exc.no_repo:
            raise
        found = _restic_files(target)
        if isinstance(found, str):
            raise OffsiteFailed(f"no restic repository at {target.shown}, and SparkQ {found}; create it with "
                                f"`restic -r '{target.shown}' --password-file '{target.password_file}' init` "
                                "(with offsite.env_file's variables set, if any)") from None
        if found:
            raise OffsiteFailed(f"{target.shown} holds restic files ({', '.join(found)}) but no config: it may be "
                                "a damaged repository, and SparkQ does not initialise over it; check it with "
                                "restic, or point offsite.repository at an empty location") from None
        log.get().info("offsite_init", repository=target.shown)
        restic.run(runner, target, ["init"])
    return restic.run(runner, target, args)


# What `restic init` writes; any of them where a repository has no config means a damaged one.
_RESTIC_ENTRIES = ("config", "keys", "data", "index", "snapshots", "locks")


def _restic_files(target) -> list[str] | str:
    """restic's own entries found where the repository should be (empty: none, safe to init),
    or why SparkQ could not look (a backend other than local and rest:, a refused request)."""
    repo = target.repository.removeprefix("local:")
    if repo.startswith("/"):
        try:
            return sorted(n for n in os.listdir(repo) if n in _RESTIC_ENTRIES)
        except FileNotFoundError:
            return []
        except OSError as exc:
            return f"could not look into it ({exc.strerror})"
    if not repo.startswith("rest:"):
        return "creates a repository itself only on a local path or a rest: server"
    return _rest_keys(repo[len("rest:"):])


def _rest_keys(base_url: str) -> list[str] | str:
    """A rest: server's stored keys (restic's REST protocol, v2), as `_restic_files` answers."""
    import base64
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(base_url)
    host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname or ""
    base = url._replace(netloc=host + (f":{url.port}" if url.port else "")).geturl().rstrip("/")
    request = urllib.request.Request(base + "/keys/", headers={"Accept": "application/vnd.x.restic.rest.v2"})
    if url.username is not None:
        creds = f"{urllib.parse.unquote(url.username)}:{urllib.parse.unquote(url.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return ["keys"] if json.loads(resp.read() or b"[]") else []
    except urllib.error.HTTPError as exc:
        return [] if exc.code == 404 else f"could not look into it (HTTP {exc.code})"
    except (OSError, ValueError) as exc:
        return f"could not look into it ({exc})"


def _stage_root(paths) -> Path:
    """This project's stable folder: projects sharing a backup dir each have their own."""
    from .history import project_id

    return paths.backup_dir / STAGE_DIR / (project_id(paths) or paths.db.stem or "sparkq")


def _stage(stage: Path, bundle: Path) -> Path:
    """The bundle's files, hard-linked (copied across file systems) into the stable folder."""
    shutil.rmtree(stage, ignore_errors=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        stage.mkdir(mode=0o700, parents=True)  # the backup dir above is 0700 already
        shutil.copytree(bundle, stage / "bundle", symlinks=True, copy_function=link)
    except (OSError, shutil.Error) as exc:
        raise OffsiteFailed(f"cannot stage {bundle.name} for restic in {stage} ({exc}); "
                            "check the backup dir's free space and permissions") from None
    return stage / "bundle"


def _forget(runner, target, settings) -> bool:
    """Apply the keep policy to SparkQ's snapshots; a failure is logged, the pushes stand."""
    from .history import project_id

    keep = keep_policy(settings)
    # This project's snapshots only (a comma joins tags that must all be there): in a repository
    # shared by several projects, each keeps its own history by its own policy.
    project = project_id(settings.paths)
    tags = f"{TAG},project:{project}" if project else TAG
    args = ["forget", "--prune", "--tag", tags, *[x for k, n in keep.items() for x in (f"--keep-{k}", str(n))]]
    try:
        _with_repair(runner, target, args)
    except restic.ResticError as exc:
        log.get().warning("offsite_forget_failed", error=str(exc))
        return False
    return True


def spawn_push(settings) -> int | None:
    """Start a detached `backup-push --background`; never waits, never raises. Returns its PID."""
    if not configured(settings):
        return None
    argv = [sys.executable, "-m", "supervisor"]
    if settings.paths.config_file.exists():
        argv += ["--config", str(settings.paths.config_file)]
    try:
        child = subprocess.Popen([*argv, "backup-push", "--background"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                 close_fds=True, cwd=settings.paths.root,
                                 env={**os.environ, "SPARKQ_ROOT": str(settings.paths.root)})
    except OSError as exc:
        log.get().warning("offsite_spawn_failed", error=str(exc))
        return None
    log.get().info("offsite_push_started", pid=child.pid)
    return child.pid


def after_backup(settings, result) -> PushReport | None:
    """A manual backup's push, in the foreground; never raises (the local backup succeeded)."""
    if not configured(settings) or not result.name:
        return None
    try:
        return push(settings, result.name)
    except SparkqError as exc:
        return PushReport(pending=[result.name], error=str(exc))


def _size(n) -> str:
    from ..fmt import human_size

    return human_size(n) if isinstance(n, int) else "?"


__all__ = ["push", "spawn_push", "after_backup", "target_of", "repository_of", "keep_policy", "configured"]
