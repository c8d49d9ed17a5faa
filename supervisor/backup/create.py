"""Take a backup bundle: online snapshot, exports, manifest, atomic publish, then retention.

A bundle is built in a hidden `.tmp-<name>-<pid>` folder inside the backup dir, every file and
folder fsynced, then renamed into place under a name no other bundle has, so a bundle exists
whole or not at all. The rename refuses to replace anything and moves on to the next `_N`
suffix, so concurrent backups each get their own bundle (they share the supervisor lock; only
start, setup and restore exclude them). Retention (retention.py) runs after a publish, or for a
pre-start backup only once the server is healthy (lifecycle.py calls prune_after). The history
rules (whose bundles count, when a backup is not needed, a full disk) are in history.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import log
from ..fmt import human_size
from ..locking import supervisor_lock
from ..errors import BackupDiskFull, BackupFailed
from ..fsutil import fsync_dir, fsync_file, sha256_file
from . import history
from .history import unshare_pre_restore  # noqa: F401 - restore.py takes it from here
from .retention import prune_for

BACKUP_VERSION = "2.0"
DB_NAME = "sparkq.db"
YML_NAME = "sparkq.yml"
ENV_NAME = ".env"
MANIFEST_NAME = "manifest.json"
TEMPLATES_SUBDIR = "setup_templates"
TEMPLATE_FILES = ("sparkq.yml.example", ".env.example", "requirements.txt.example")
PREFIX = "sparkq"
PRE_RESTORE_PREFIX = "sparkq_preRestore"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_CHUNK = 1 << 20
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


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
                  prune: bool = True, skip_unchanged: bool = False) -> BackupResult:
    """Validate retention, take one bundle, then prune old ones. Skips when there is no DB yet.

    `locked` says the caller holds the supervisor lock (the pre-start hook). Otherwise (a manual
    backup) the lock is taken shared: backups run beside each other and beside a running server,
    but never while start, setup or a restore changes the files they read.

    `skip_unchanged` (automatic backups): write nothing when the newest bundle of this project
    holds exactly this state (history.py). `prune=False` leaves retention to the caller, which
    calls prune_after once it is sure (a start: when the server is healthy).
    """
    keep = settings.backup_keep()  # a bad SPARKQ_BACKUP_KEEP fails before anything is written
    db = settings.paths.db
    if not db.exists():
        return BackupResult(trigger=trigger, skipped=True, notice=f"no database yet at {db}; nothing to back up")
    if locked:
        return _backup_and_prune(settings, trigger, keep, progress, prune, skip_unchanged)
    with supervisor_lock(settings.paths.lockfile, shared=True):
        return _backup_and_prune(settings, trigger, keep, progress, prune, skip_unchanged)


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
                      skip_unchanged: bool) -> BackupResult:
    started = time.monotonic()
    paths = settings.paths
    unshare_pre_restore(settings)
    pid = history.project_id(paths, create=True)
    base = history.baseline(paths.backup_dir, pid, _sparkq_version(), BACKUP_VERSION) if skip_unchanged else None
    made_room = _make_room(settings, keep)
    try:
        try:
            path, manifest = _write_bundle(settings, trigger=trigger, prefix=PREFIX, link_db=False,
                                           progress=progress, baseline=base)
        except BackupDiskFull:
            # The estimate was short: free what retention would free after a success, then once more.
            if made_room or not prune_for(settings, keep)[0]:
                raise
            path, manifest = _write_bundle(settings, trigger=trigger, prefix=PREFIX, link_db=False,
                                           progress=progress, baseline=base)
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
    members.update({f"{TEMPLATES_SUBDIR}/{t}": paths.templates_dir / t for t in TEMPLATE_FILES})
    return {rel: src for rel, src in members.items() if src.is_file()}


def write_bundle(
    settings,
    *,
    trigger: str,
    prefix: str = PREFIX,
    link_db: bool = False,
    progress: bool = False,
) -> Path:
    """Build one bundle and publish it; returns its final path.

    `link_db` hard-links the live DB instead of snapshotting it (restore's pre-restore copy, taken
    while the server is down and the DB checkpointed): only safe for a caller that holds the
    supervisor lock exclusively. A DB with a non-empty -wal beside it is snapshotted anyway.
    """
    return _write_bundle(settings, trigger=trigger, prefix=prefix, link_db=link_db, progress=progress)[0]


def snapshot_db(src: Path, dst: Path, *, timeout: float, progress: bool = False) -> None:
    """Copy the live DB `src` to `dst` in one consistent step (SQLite backup API, pages=-1).

    The copy stands alone: it is switched to rollback (DELETE) journal mode, so opening it never
    creates -wal/-shm files. Mode 0600, fsynced. Waits at most `timeout` seconds for a lock.
    """
    _snapshot_unsynced(Path(src), Path(dst), timeout, progress)
    _fsync_snapshot(Path(dst))


# --- building a bundle ------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _write_bundle(settings, *, trigger: str, prefix: str, link_db: bool, progress: bool,
                  baseline=None) -> tuple[Path, dict]:
    paths = settings.paths
    backup_dir = paths.backup_dir
    started = time.monotonic()
    _ensure_backup_dir(backup_dir)
    created = _now()
    stamp = created.strftime("%Y%m%d_%H%M%S")
    try:
        name, tmp = _reserve(backup_dir, f"{prefix}_{stamp}")
    except OSError as exc:
        raise _os_failure(exc, f"creating a temp dir in the backup dir {backup_dir}") from None
    try:
        manifest = _fill(settings, tmp, trigger=trigger, link_db=link_db, progress=progress, baseline=baseline)
        manifest = {
            "backup_version": BACKUP_VERSION,
            "created_at": created.isoformat(),
            "timestamp": stamp,
            **manifest,
        }
        _write_private(tmp / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
        fsync_dir(tmp)
        final = _publish(tmp, backup_dir, name)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _os_failure(exc, f"writing the backup in {backup_dir}") from None
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


def _fill(settings, tmp: Path, *, trigger: str, link_db: bool, progress: bool, baseline=None) -> dict:
    """Write every member except the manifest into `tmp`; returns the manifest's other keys.

    With a `baseline` bundle, raises history.Unchanged right after the snapshot when the bundle
    would hold exactly what the baseline holds."""
    paths = settings.paths
    db = tmp / DB_NAME
    files: list[str] = []
    checksums: dict[str, str] = {}
    has_db = paths.db.exists()
    if has_db:
        if not (link_db and _link_db(paths.db, db)):
            _snapshot_unsynced(paths.db, db, settings.lock_timeout, progress)
        files.append(DB_NAME)
    snapshot_sha = None
    if has_db and baseline is not None:
        snapshot_sha = history.check_unchanged(baseline, db, _config_members(paths))

    # The slow parts run at once: integrity check and hash (CPU; SQLite and hashlib release the
    # GIL), the snapshot's fsync (disk), and here the exports and small copies.
    integrity: dict[str, Any] = {}
    workers = []
    if has_db:
        workers = [
            threading.Thread(target=_into, args=(integrity, "check", _integrity, db), daemon=True),
            threading.Thread(target=_into, args=(integrity, "sync", _fsync_snapshot, db), daemon=True),
        ]
        if snapshot_sha is None:
            workers.append(threading.Thread(target=_into, args=(integrity, "sha", sha256_file, db), daemon=True))
        else:
            integrity["sha"] = snapshot_sha
        for w in workers:
            w.start()
    try:
        config_file = _copy_member(paths.config_file, tmp / YML_NAME, YML_NAME, files, checksums)
        env_file = _copy_member(paths.env_file, tmp / ENV_NAME, ENV_NAME, files, checksums)
        counts, export_error = _write_exports(db, tmp, files, checksums) if has_db else ({}, None)
        (tmp / TEMPLATES_SUBDIR).mkdir(mode=0o700)
        os.chmod(tmp / TEMPLATES_SUBDIR, 0o700)
        for template in TEMPLATE_FILES:
            rel = f"{TEMPLATES_SUBDIR}/{template}"
            _copy_member(paths.templates_dir / template, tmp / rel, rel, files, checksums)
        fsync_dir(tmp / TEMPLATES_SUBDIR)
    finally:
        for w in workers:
            w.join()
    for key in ("sync", "check", "sha"):
        if isinstance(integrity.get(key), BaseException):
            err = integrity[key]
            raise _os_failure(err, f"reading the snapshot {db}") if isinstance(err, OSError) else err
    if has_db:
        checksums = {DB_NAME: integrity["sha"], **checksums}
    size = db.stat().st_size if has_db else 0
    manifest = {
        "integrity_check": integrity.get("check", "no database"),
        "database": {"path": str(paths.db.absolute()), "size": human_size(size), "bytes": size},
        "config_file": config_file,
        "env_file": env_file,
        "counts": counts,
        "files": [*files, MANIFEST_NAME],
        "checksums": checksums,
        "trigger": trigger,
        "sqlite_version": sqlite3.sqlite_version,
        "sparkq_version": _sparkq_version(),
        "hostname": _hostname(),
    }
    project = history.project_id(paths, create=True)
    if project is not None:  # never a null: readers check the key's type
        manifest[history.MANIFEST_KEY] = project
    if not has_db:
        manifest["database"]["present"] = False
    if export_error:
        manifest["exports_error"] = export_error
    return manifest


def _into(box: dict, key: str, fn, *args) -> None:
    _yield_cpu()
    try:
        box[key] = fn(*args)
    except BaseException as exc:  # handed back to the main thread
        box[key] = exc


def _yield_cpu() -> None:
    """Run the calling thread at a lower priority: on two cores, hashing and the integrity check
    would otherwise take the CPU from the server's writers and stretch their commit latency.
    Linux applies it to this thread only; elsewhere it is skipped.

    The snapshot itself keeps its priority on purpose. Its read transaction is what costs a live
    server most: until it ends, the server's WAL cannot be checkpointed and grows with every
    commit, and each commit gets slower. Slowed down, the snapshot took three times as long
    beside a busy writer, and the writer's p99 latency suffered more than from any CPU it took.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _write_exports(db: Path, tmp: Path, files: list[str], checksums: dict[str, str]) -> tuple[dict, str | None]:
    """Counts and JSON exports read from the snapshot, so they agree with the bundled DB."""
    from sparkq import storage

    from .exports import render_exports

    try:
        conn = _open_readonly(db)
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


def _integrity(db: Path) -> str:
    try:
        conn = _open_readonly(db)
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"integrity_check could not run: {exc}"
    return "ok" if rows == ["ok"] else "; ".join(rows)


def _open_readonly(db: Path) -> sqlite3.Connection:
    # immutable: the snapshot is ours alone, so no locks and never a -wal/-shm beside it
    return sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)


def _link_db(live: Path, target: Path) -> bool:
    """Hard-link a quiescent live DB into the bundle; False means: snapshot it instead."""
    # Link the file itself: link(2) does not follow a symlinked database.path, and a bundle
    # holding the symlink would fail every check (and hold no data).
    live = Path(os.path.realpath(live))
    wal = live.with_name(live.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return False
    try:
        os.link(live, target)
    except OSError:
        return False  # another filesystem, or links not allowed: fall back to a snapshot
    os.chmod(target, 0o600)  # same inode as the live DB, which restore is about to replace
    return True


def _copy_member(src: Path, dst: Path, rel: str, files: list[str], checksums: dict[str, str]) -> bool:
    """Copy `src` into the bundle as a 0600 file, hashing on the way; False when `src` is absent."""
    try:
        fin = open(src, "rb")
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _os_failure(exc, f"reading {src}") from None
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


# --- backup dir, names, publishing ----------------------------------------------------------


def _ensure_backup_dir(backup_dir: Path) -> None:
    try:
        st = os.stat(backup_dir)
    except FileNotFoundError:
        try:
            backup_dir.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(backup_dir, 0o700)
            os.chmod(backup_dir, 0o700)
            fsync_dir(backup_dir.parent)
            return
        except OSError as exc:
            raise _os_failure(exc, f"creating the backup dir {backup_dir}") from None
    except OSError as exc:
        raise _os_failure(exc, f"opening the backup dir {backup_dir}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BackupFailed(
            f"backup failed: the backup dir {backup_dir} is not a directory; "
            "move that file away or point backup.dir in sparkq.yml elsewhere"
        )
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
        with contextlib.suppress(OSError):
            os.chmod(backup_dir, 0o700)


def _reserve(backup_dir: Path, base: str) -> tuple[str, Path]:
    """Pick the first free `base[_N]` and create our temp dir for it (mkdir is the reservation)."""
    pid = os.getpid()
    taken = set(os.listdir(backup_dir))
    for n in range(10_000):
        name = base if n == 0 else f"{base}_{n}"
        if name in taken or f"{name}.db" in taken or any(t.startswith(f".tmp-{name}-") for t in taken):
            continue
        tmp = backup_dir / f".tmp-{name}-{pid}"
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:  # another thread of this process took it just now
            continue
        os.chmod(tmp, 0o700)
        return name, tmp
    raise BackupFailed(f"backup failed: no free bundle name for {base} in {backup_dir}; remove stale entries")


def _publish(tmp: Path, backup_dir: Path, name: str) -> Path:
    """Rename `tmp` onto the first free name from `name` on; never replaces anything."""
    match = re.fullmatch(r"(?P<base>.+_\d{8}_\d{6})(?:_(?P<n>\d+))?", name)
    base, n = (match["base"], int(match["n"] or 0)) if match else (name, 0)
    for _ in range(10_000):
        final = backup_dir / name
        try:
            _rename_noreplace(tmp, final)
            return final
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
        n += 1
        name = f"{base}_{n}"
    raise BackupFailed(f"backup failed: no free bundle name for {base} in {backup_dir}; remove stale entries")


_renameat2: Any = None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing (renameat2 RENAME_NOREPLACE)."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = (fn, ctypes)
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2:
        fn, ctypes = _renameat2
        at_fdcwd, noreplace = -100, 1
        if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem lacks the flag
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


# --- the snapshot and its failures ------------------------------------------------------------


def _snapshot_unsynced(src: Path, dst: Path, timeout: float, progress: bool) -> None:
    _check_header(src)
    cancel = threading.Event()
    with _trickle_flush(dst):
        if not progress:
            _copy_db(src, dst, timeout, cancel)
        else:
            _with_progress(lambda: _copy_db(src, dst, timeout, cancel), src, dst, cancel)


@contextlib.contextmanager
def _trickle_flush(dst: Path, every: int = 32 << 20):
    """Write the snapshot back to disk while it grows (every `every` bytes, from a helper thread).

    A large copy would otherwise pile up dirty pages until the kernel throttles every writer on
    the disk, the live server's WAL appends included: commit stalls of up to a second at 1 GiB.
    The final fsync then has little left to do.
    """
    stop = threading.Event()

    def run() -> None:
        _yield_cpu()
        fd, flushed = None, 0
        try:
            while not stop.wait(0.1):
                if fd is None:
                    with contextlib.suppress(OSError):
                        fd = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
                    continue
                size = os.fstat(fd).st_size
                if size - flushed >= every:
                    os.fdatasync(fd)
                    flushed = size
        except OSError:
            pass  # only an optimization: the final fsync reports real errors
        finally:
            if fd is not None:
                os.close(fd)

    flusher = threading.Thread(target=run, daemon=True)
    flusher.start()
    try:
        yield
    finally:
        stop.set()
        flusher.join()


def _fsync_snapshot(dst: Path) -> None:
    try:
        fsync_file(dst)
    except OSError as exc:
        raise _os_failure(exc, f"writing the snapshot {dst}") from None


class _Cancelled(Exception):
    pass


class _LockTimeout(Exception):
    pass


def _check_header(src: Path) -> None:
    try:
        with open(src, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except IsADirectoryError:
        raise BackupFailed(f"backup failed: {src} is a directory, not a database; check database.path in sparkq.yml") from None
    except OSError as exc:
        raise _os_failure(exc, f"reading the database {src}") from None
    if head and head != _SQLITE_MAGIC:
        raise BackupFailed(
            f"backup failed: {src} is not a SQLite database; check database.path in sparkq.yml "
            "or restore a backup (./sparkq.sh backup-list)"
        )


def _copy_db(src: Path, dst: Path, timeout: float, cancel: threading.Event) -> None:
    try:
        # Create it ourselves: SQLite would use 0644 minus the umask.
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.chmod(dst, 0o600)
    except OSError as exc:
        raise _os_failure(exc, f"creating the snapshot {dst}") from None
    try:
        source = sqlite3.connect(str(src), timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _sqlite_failure(exc, src, dst, timeout) from None
    try:
        target = sqlite3.connect(str(dst), isolation_level=None, check_same_thread=False)
        try:
            # No journal and no syncs while copying into a private new file: we fsync it once after.
            target.execute("PRAGMA journal_mode=OFF")
            target.execute("PRAGMA synchronous=OFF")
            deadline = time.monotonic() + timeout

            def step(status: int, _remaining: int, _total: int) -> None:
                if cancel.is_set():
                    raise _Cancelled
                # The busy handler already waited `timeout`; the backup loop would retry forever.
                if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() >= deadline:
                    raise _LockTimeout

            # pages=-1: one step, one read transaction, so the copy is one consistent state
            # (a stepwise copy restarts whenever another connection commits).
            source.backup(target, pages=-1, progress=step, sleep=0.05)
            # The copied header keeps the source's WAL flag; a rollback-mode file stands alone.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except _LockTimeout:
        raise _locked(src, timeout) from None
    except sqlite3.Error as exc:
        raise _sqlite_failure(exc, src, dst, timeout) from None
    finally:
        source.close()


def _with_progress(work, src: Path, dst: Path, cancel: threading.Event) -> None:
    """Run `work` in a thread; show `snapshot NN%` on stderr from the size of the growing copy."""
    total = 0
    for p in (src, src.with_name(src.name + "-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    box: dict[str, Any] = {}
    worker = threading.Thread(target=_into, args=(box, "done", work), daemon=True)
    worker.start()

    def show(done: int) -> None:
        pct = min(100, done * 100 // total) if total else 100
        sys.stderr.write(f"\rbackup: snapshot {pct:3d}% ({human_size(done)} of {human_size(total)})\033[K")
        sys.stderr.flush()

    try:
        while worker.is_alive():
            worker.join(0.2)
            with contextlib.suppress(OSError):
                show(dst.stat().st_size)
    except BaseException:
        cancel.set()
        worker.join()
        raise
    finally:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    if isinstance(box.get("done"), BaseException):
        raise box["done"]


# Lowering keep works because a backup short of space prunes past keep before it writes.
_FREE_SPACE_HINT = ("older backups are untouched; free space there (df -h {where}) or keep fewer backups: "
                    "SPARKQ_BACKUP_KEEP=2 ./sparkq.sh backup prunes past 2 before writing")


def _locked(src: Path, timeout: float) -> BackupFailed:
    return BackupFailed(
        f"backup failed: the database {src} stayed locked for over {timeout:g}s (backup.lock_timeout); "
        "stop the server or the process holding the lock (./sparkq.sh stop), then retry"
    )


def _sqlite_failure(exc: sqlite3.Error, src: Path, dst: Path, timeout: float) -> BackupFailed:
    from sparkq.storage import is_busy

    if is_busy(exc):
        return _locked(src, timeout)
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return BackupFailed(
            f"backup failed: {src} is not a SQLite database ({exc}); check database.path in sparkq.yml "
            "or restore a backup (./sparkq.sh backup-list)"
        )
    if code == sqlite3.SQLITE_FULL:
        return BackupDiskFull(f"backup failed: writing the snapshot of {src} into {dst.parent.parent} failed "
                              f"({exc}): disk full; {_FREE_SPACE_HINT.format(where=dst.parent.parent)}")
    if code == sqlite3.SQLITE_IOERR:
        return BackupFailed(
            f"backup failed: writing the snapshot of {src} into {dst.parent.parent} failed ({exc}): "
            f"the disk is full or failing; check free space with `df -h {dst.parent.parent}`; "
            "older backups are untouched"
        )
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH):
        return BackupFailed(
            f"backup failed: cannot open {src} or write {dst} ({exc}); "
            f"check permissions with `ls -la {src.parent} {dst.parent.parent}`"
        )
    return BackupFailed(f"backup failed: snapshot of {src} failed ({exc}); run `./sparkq.sh status` and retry")


def _os_failure(exc: OSError, doing: str) -> BackupFailed:
    where = Path(exc.filename) if exc.filename else None
    what = f"{doing} failed ({exc.strerror or exc}"
    what += f": {where})" if where is not None and str(where) not in doing else ")"
    probe = where.parent if where is not None else Path(".")
    if exc.errno in _DISK_FULL:
        return BackupDiskFull(f"backup failed: {what}: disk full; {_FREE_SPACE_HINT.format(where=probe)}")
    if exc.errno in _NO_PERMISSION:
        return BackupFailed(f"backup failed: {what}; check permissions with `ls -la {probe}`")
    if exc.errno == errno.ENOTDIR:
        return BackupFailed(f"backup failed: {what}: part of that path is a file, not a directory; "
                            "check backup.dir in sparkq.yml")
    return BackupFailed(f"backup failed: {what}; check the disk and the permissions there")
