"""Assemble a backup bundle: snapshot (snapshot.py), config copies, exports, manifest, publish
(publish.py), then retention (retention.py). What a bundle holds is specified in layout.py.

A bundle is built in a hidden `.tmp-<name>-<pid>` folder inside the backup dir, every file and
folder fsynced, then renamed into place under a name no other bundle has, so a bundle exists
whole or not at all. The rename refuses to replace anything and moves on to the next `_N`
suffix, so concurrent backups each get their own bundle (they share the supervisor lock; only
start, setup and restore exclude them). Retention (retention.py) runs after a publish, or for a
pre-start backup only once the server is healthy (lifecycle.py calls prune_after). The history
rules (whose bundles count, when a backup is not needed, a full disk) are in history.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import log
from ..fmt import human_size
from ..errors import BackupDiskFull, BackupFailed
from ..fsutil import fsync_dir, sha256_file
from ..locking import file_lock
from . import history, publish, snapshot
from .failures import os_failure
from .history import unshare_pre_restore
from .layout import (
    BACKUP_VERSION, DB_NAME, ENV_NAME, MANIFEST, PRE_RESTORE_PREFIX, PREFIX, PROJECT_KEY, TEMPLATE_FILES,
    TEMPLATES_MEMBER, YML_NAME, bundle_name, open_readonly,
)
from .retention import prune_for

_CHUNK = 1 << 20


@dataclass
class BackupResult:
    name: str | None = None
    path: str | None = None
    trigger: str = "manual"
    skipped: bool = False
    unchanged_since: str | None = None  # nothing written: that bundle holds this state already
    notice: str | None = None
    created_at: str | None = None
    db_size: int = 0
    integrity_check: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        pruned = ""
        if self.pruned:
            n = len(self.pruned)
            pruned = f"; pruned {n} old backup{'s' if n != 1 else ''}"
        if self.unchanged_since:
            return f"backup: unchanged since {self.unchanged_since}, none written{pruned}"
        if self.skipped:
            return f"backup skipped: {self.notice}"
        health = "integrity ok" if self.integrity_check == "ok" else "INTEGRITY CHECK FAILED"
        lines = [f"backup {self.name} ({human_size(self.db_size)}, {health}) in {self.duration_s:.2f}s{pruned}"]
        if self.integrity_check != "ok":
            lines.append(
                f"WARNING: the live database failed PRAGMA integrity_check ({self.integrity_check}); "
                "it was backed up as it is: consider restoring an older backup (./sparkq.sh backup-list)"
            )
        if self.notice:
            lines.append(self.notice)
        return "\n".join(lines)


# --- public entry points ----------------------------------------------------------------------


def create_backup(settings, *, trigger: str, progress: bool = False, locked: bool = False,
                  prune: bool = True, skip_unchanged: bool = False, beside_server: bool = False) -> BackupResult:
    """Validate retention, take one bundle, then prune old ones. Skips when there is no DB yet.

    `locked` says the caller holds the supervisor lock (the pre-start hook). Otherwise (a manual
    backup) the lock is taken shared: backups run beside each other and beside a running server,
    but never while start, setup or a restore changes the files they read.

    `skip_unchanged` (automatic backups): write nothing when the newest bundle of this project
    holds exactly this state (history.py). `prune=False` leaves retention to the caller, which
    calls prune_after once it is sure (a start: when the server is healthy). `beside_server`:
    a server is serving while we work, so leave it a core (snapshot.one_cpu, _check_and_hash).
    """
    keep = settings.backup_keep()  # a bad SPARKQ_BACKUP_KEEP fails before anything is written
    db = settings.paths.db
    if beside_server:  # not "no database yet", nor the wrong rows: the server's file went elsewhere
        from ..serverdb import trouble

        said = trouble(settings)
        if said:
            raise BackupFailed(f"{said}; nothing was backed up")
    if not db.exists():
        return BackupResult(trigger=trigger, skipped=True, notice=f"no database yet at {db}; nothing to back up")
    history.refuse_unusable_db(settings.paths)  # an emptied DB must not push good backups out
    if locked:
        return _backup_and_prune(settings, trigger, keep, progress, prune, skip_unchanged, beside_server)
    with file_lock(settings.paths.lockfile, shared=True):
        return _backup_and_prune(settings, trigger, keep, progress, prune, skip_unchanged, beside_server)


def prune_after(settings, result: BackupResult) -> BackupResult:
    """Retention for a backup taken with prune=False (also when it found the state unchanged:
    the newest bundle stands for it); nothing when there was no database to back up."""
    protect = result.name or result.unchanged_since
    if protect is None:
        return result
    pruned, problems = prune_for(settings, settings.backup_keep(), protect=protect)
    result.pruned = pruned
    result.notice = "; ".join(filter(None, [result.notice, *problems])) or None
    return result


def _backup_and_prune(settings, trigger: str, keep: int, progress: bool, prune: bool,
                      skip_unchanged: bool, beside_server: bool) -> BackupResult:
    started = time.monotonic()
    paths = settings.paths
    unshare_pre_restore(settings)
    pid = history.project_id(paths, create=True)
    base = history.baseline(paths.backup_dir, pid, _sparkq_version(), BACKUP_VERSION) if skip_unchanged else None
    made_room = _make_room(settings, keep)
    try:
        try:
            path, manifest = _write_bundle(settings, trigger=trigger, prefix=PREFIX, link_db=False,
                                           progress=progress, baseline=base, beside_server=beside_server)
        except BackupDiskFull:
            # The estimate was short: free what retention would free after a success, then once more.
            if made_room or not prune_for(settings, keep)[0]:
                raise
            path, manifest = _write_bundle(settings, trigger=trigger, prefix=PREFIX, link_db=False,
                                           progress=progress, baseline=base, beside_server=beside_server)
    except history.Unchanged as same:
        log.get().info("backup_unchanged", since=same.name, trigger=trigger)
        result = BackupResult(trigger=trigger, skipped=True, unchanged_since=same.name,
                              notice=f"unchanged since {same.name}, none written",
                              duration_s=round(time.monotonic() - started, 3))
        return prune_after(settings, result) if prune else result
    result = BackupResult(
        name=path.name,
        path=str(path),
        trigger=trigger,
        created_at=manifest["created_at"],
        db_size=manifest["database"]["bytes"],
        integrity_check=manifest["integrity_check"],
        counts=manifest["counts"],
        duration_s=round(time.monotonic() - started, 3),
    )
    return prune_after(settings, result) if prune else result


def _make_room(settings, keep: int) -> list[str]:
    """When the backup dir's disk is short of room for the new bundle, prune past `keep` first
    (what retention would delete after a success anyway; the newest good backup is spared), so
    that lowering SPARKQ_BACKUP_KEEP frees space for the next backup. Returns what was pruned."""
    paths = settings.paths
    free = history.free_bytes(paths.backup_dir)
    if free is None or free >= history.room_needed(paths, _config_members(paths)):
        return []
    if not os.access(paths.backup_dir, os.W_OK):  # read-only: the write reports it, nothing to free
        return []
    pruned = prune_for(settings, keep)[0]
    if pruned:
        log.get().warning("backup_pruned_for_space", names=pruned, keep=keep, free=free)
    return pruned


def _config_members(paths) -> dict[str, Path]:
    """The files a bundle copies as they are: bundle name -> source."""
    members = {YML_NAME: paths.config_file, ENV_NAME: paths.env_file}
    members.update({f"{TEMPLATES_MEMBER}/{t}": paths.templates_dir / t for t in TEMPLATE_FILES})
    return {rel: src for rel, src in members.items() if src.is_file()}


def write_bundle(
    settings,
    *,
    trigger: str,
    prefix: str = PREFIX,
    link_db: bool = False,
    progress: bool = False,
    before_publish: Callable[[], None] | None = None,
) -> Path:
    """Build one bundle and publish it; returns its final path.

    `link_db` hard-links the live DB instead of snapshotting it (restore's pre-restore copy, taken
    while the server is down and the DB checkpointed): only safe for a caller that holds the
    supervisor lock exclusively. A DB with a non-empty -wal beside it is snapshotted anyway.
    `before_publish` runs once the bundle is complete, before it is published; if it raises,
    the bundle is removed unpublished (restore waits there for the backup's verification).
    """
    return _write_bundle(settings, trigger=trigger, prefix=prefix, link_db=link_db, progress=progress,
                         before_publish=before_publish)[0]


# --- building a bundle ------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _write_bundle(settings, *, trigger: str, prefix: str, link_db: bool, progress: bool,
                  baseline=None, beside_server: bool = False,
                  before_publish: Callable[[], None] | None = None) -> tuple[Path, dict]:
    paths = settings.paths
    backup_dir = paths.backup_dir
    started = time.monotonic()
    publish.ensure_backup_dir(backup_dir)
    created = _now()
    base = bundle_name(prefix, created)
    try:
        name, tmp = publish.reserve(backup_dir, base)
    except OSError as exc:
        raise os_failure(exc, f"creating a temp dir in the backup dir {backup_dir}") from None
    try:
        with snapshot.one_cpu(beside_server):  # every thread of the bundle's work starts in _fill
            manifest = _fill(settings, tmp, trigger=trigger, link_db=link_db, progress=progress,
                             baseline=baseline, beside_server=beside_server,
                             as_is=prefix == PRE_RESTORE_PREFIX)
        manifest = {
            "backup_version": BACKUP_VERSION,
            "created_at": created.isoformat(),
            "timestamp": base[len(prefix) + 1:],
            **manifest,
        }
        _write_private(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        fsync_dir(tmp)
        if before_publish is not None:
            before_publish()
        final = publish.publish(tmp, backup_dir, name)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise os_failure(exc, f"writing the backup in {backup_dir}") from None
        raise
    try:
        fsync_dir(backup_dir)
    except OSError:
        pass  # the bundle is in place; the directory entry reaches the disk with the next sync
    duration = round(time.monotonic() - started, 3)
    logger = log.get()
    logger.info("backup_created", name=final.name, size=manifest["database"]["bytes"], duration=duration, trigger=trigger)
    if manifest["integrity_check"] not in ("ok", "no database"):
        logger.warning("backup_integrity_failed", name=final.name, integrity_check=manifest["integrity_check"])
    return final, manifest


def _fill(settings, tmp: Path, *, trigger: str, link_db: bool, progress: bool, baseline=None,
          beside_server: bool = False, as_is: bool = False) -> dict:
    """Write every member except the manifest into `tmp`; returns the manifest's other keys.

    With a `baseline` bundle, raises history.Unchanged right after the snapshot when the bundle
    would hold exactly what the baseline holds. `as_is` (a pre-restore bundle): a live database
    that is not one is kept byte for byte instead of refused, so a restore of the config alone
    still has its pre-restore copy of everything (its manifest says the check could not run)."""
    paths = settings.paths
    db = tmp / DB_NAME
    files: list[str] = []
    checksums: dict[str, str] = {}
    has_db = paths.db.exists()
    if has_db:
        if not (link_db and snapshot.link_quiescent(paths.db, db)):
            try:
                snapshot.take(paths.db, db, timeout=settings.lock_timeout, progress=progress)
            except snapshot.NotADatabase:
                if not as_is:
                    raise
                _copy_member(paths.db, db, DB_NAME, [], {})
        files.append(DB_NAME)
    snapshot_sha = None
    if has_db and baseline is not None:
        snapshot_sha = history.check_unchanged(baseline, db, _config_members(paths))

    # The slow parts run in helper threads (SQLite and hashlib release the GIL) while this one
    # makes the exports and small copies.
    integrity: dict[str, Any] = {}
    workers = []
    if has_db:
        if snapshot_sha is not None:
            integrity["sha"] = snapshot_sha
        workers = _check_and_hash(db, integrity, hash_it=snapshot_sha is None, beside_server=beside_server)
    try:
        config_file = _copy_member(paths.config_file, tmp / YML_NAME, YML_NAME, files, checksums)
        env_file = _copy_member(paths.env_file, tmp / ENV_NAME, ENV_NAME, files, checksums)
        counts, export_error = _write_exports(db, tmp, files, checksums) if has_db else ({}, None)
        (tmp / TEMPLATES_MEMBER).mkdir(mode=0o700)
        os.chmod(tmp / TEMPLATES_MEMBER, 0o700)
        for template in TEMPLATE_FILES:
            rel = f"{TEMPLATES_MEMBER}/{template}"
            _copy_member(paths.templates_dir / template, tmp / rel, rel, files, checksums)
        fsync_dir(tmp / TEMPLATES_MEMBER)
    finally:
        for w in workers:
            w.join()
    for key in ("sync", "check", "sha"):
        if isinstance(integrity.get(key), BaseException):
            err = integrity[key]
            raise os_failure(err, f"reading the snapshot {db}") if isinstance(err, OSError) else err
    if has_db:
        checksums = {DB_NAME: integrity["sha"], **checksums}
    size = db.stat().st_size if has_db else 0
    manifest = {
        "integrity_check": integrity.get("check", "no database"),
        "database": {"path": str(paths.db.absolute()), "size": human_size(size), "bytes": size},
        "config_file": config_file,
        "env_file": env_file,
        "counts": counts,
        "files": [*files, MANIFEST],
        "checksums": checksums,
        "trigger": trigger,
        "sqlite_version": sqlite3.sqlite_version,
        "sparkq_version": _sparkq_version(),
        "hostname": _hostname(),
    }
    project = history.project_id(paths, create=True)
    if project is not None:  # never a null: readers check the key's type
        manifest[PROJECT_KEY] = project
    if not has_db:
        manifest["database"]["present"] = False
    if export_error:
        manifest["exports_error"] = export_error
    return manifest


def _check_and_hash(db: Path, box: dict, *, hash_it: bool, beside_server: bool) -> list[threading.Thread]:
    """Start the snapshot's fsync (disk), integrity check and sha256 (CPU); results land in `box`.

    With no server running (a start's backup, a restore's pre-restore bundle, a manual backup of
    a stopped project) the check and the hash run at once at full priority: nobody waits on the
    CPU but the user, and a lowered priority made a restore several times slower on a busy
    machine. Beside a running server they run one after the other at a lower priority: on two
    cores, two busy threads tripled the p99 of its requests where one barely moved it
    (docs/PERFORMANCE.md), and a backup that takes a little longer in the background costs nobody.
    """
    cpu = [("check", snapshot.integrity)] + ([("sha", sha256_file)] if hash_it else [])
    queues = [cpu] if beside_server else [[job] for job in cpu]
    queues.append([("sync", snapshot.sync)])
    workers = [threading.Thread(target=_run_jobs, args=(box, jobs, db, beside_server), daemon=True)
               for jobs in queues]
    for w in workers:
        w.start()
    return workers


def _run_jobs(box: dict, jobs: list, db: Path, polite: bool) -> None:
    """Thread body: each (key, fn) of `jobs` in turn, `box[key]` = fn(db) or what it raised."""
    for key, fn in jobs:
        snapshot.into(box, key, fn, db, polite=polite)


def _write_exports(db: Path, tmp: Path, files: list[str], checksums: dict[str, str]) -> tuple[dict, str | None]:
    """Counts and JSON exports read from the snapshot, so they agree with the bundled DB."""
    from sparkq import storage

    from .exports import render_exports

    try:
        conn = open_readonly(db)
        try:
            counts = storage.counts(conn)
            rendered = render_exports(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        # A damaged live DB is still bundled; its exports cannot be read, which the manifest says.
        return {}, f"exports not written: {exc}"
    for filename, data in rendered.items():
        checksums[filename] = _write_private(tmp / filename, data)
        files.append(filename)
    return counts, None


def _copy_member(src: Path, dst: Path, rel: str, files: list[str], checksums: dict[str, str]) -> bool:
    """Copy `src` into the bundle as a 0600 file, hashing on the way; False when `src` is absent.

    Only a regular file is copied (a symlink to one is followed, as configured paths may be).
    Opening does not block: a FIFO (a secrets manager can serve .env as one) would wait for a
    writer forever; it, or a device, is left out with a warning instead."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_failure(exc, f"reading {src}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.get().warning("backup_member_skipped", path=str(src), reason="not a regular file")
        return False
    fin = os.fdopen(fd, "rb")
    digest = hashlib.sha256()
    with fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o600)
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(fd)
    files.append(rel)
    checksums[rel] = digest.hexdigest()
    return True


def _write_private(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o600)
        out.write(data)
        out.flush()
        os.fsync(fd)
    return hashlib.sha256(data).hexdigest()


def _sparkq_version() -> str | None:
    try:
        from sparkq import __version__
    except ImportError:
        return None
    return __version__


def _hostname() -> str:
    import socket

    return socket.gethostname()
