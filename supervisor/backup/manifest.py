"""manifest.json: reading one safely and deciding whether it can be trusted.

`read` never follows a symlink, never blocks on a FIFO and never reads past MANIFEST_LIMIT;
`problem` checks the types every reader relies on, key by key, so a hostile or damaged manifest
makes its bundle `damaged`, never a crash. The keys themselves are listed in layout.py.
ListingCache answers backup-list from what it read last time while a manifest is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from .layout import DB_NAME, MANIFEST, MANIFEST_LIMIT

# The original SparkQ wrote a damaged database's multi-line integrity_check raw into its manifest,
# which is then not JSON while sparkq.yml, .env and the exports beside it are intact (ORIGINAL.md).
NOT_JSON = "manifest.json is not valid JSON"

# The manifest keys a listing shows; the listing cache keeps only these.
LISTED = ("backup_version", "created_at", "integrity_check", "trigger", "config_file",
          "configuration_files", "counts", "database")


_LISTING_CACHE_VERSION = 2  # 2: damaged manifests keep their listed keys


class ListingCache:
    """What backup-list read from each manifest, kept in one file in the data dir (so listing
    never writes into the backup dir).

    A thousand bundles mean a thousand manifests to open and parse on every listing; one JSON
    file of their listed keys is an order of magnitude cheaper. An entry is used only while the
    manifest's inode, size and mtime are the ones it was read with; a missing, damaged or
    unwritable cache just means reading the manifests.
    """

    def __init__(self, path: Path, backup_dir: Path) -> None:
        self.path = path
        self.dir = str(backup_dir)
        try:
            with open(path, "rb") as fh:
                saved = json.loads(fh.read())
            fits = saved["dir"] == self.dir and saved.get("v") == _LISTING_CACHE_VERSION
            self.old = saved["entries"] if fits and isinstance(saved["entries"], dict) else {}
        except (OSError, ValueError, KeyError, TypeError):
            self.old = {}
        self.new: dict[str, list] = {}

    def manifest(self, bundle: str, name: str) -> tuple[Any, str | None]:
        try:
            st = os.lstat(os.path.join(bundle, MANIFEST))
            stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
        except OSError:
            return read(bundle)
        hit = self.old.get(name)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == stamp:
            self.new[name] = hit
            return hit[1], hit[2]
        raw, damaged = read(bundle)
        # A damaged manifest that is still JSON keeps its keys too: its created_at orders it.
        listed = {k: raw[k] for k in LISTED if k in raw} if isinstance(raw, dict) else None
        self.new[name] = [stamp, listed, damaged]
        return listed, damaged

    def save(self) -> None:
        if self.new == self.old or not self.path.parent.is_dir():
            return
        from ..fsutil import atomic_write_bytes

        blob = json.dumps({"v": _LISTING_CACHE_VERSION, "dir": self.dir, "entries": self.new},
                          separators=(",", ":")).encode()
        try:
            atomic_write_bytes(self.path, blob, mode=0o600)
        except OSError:
            pass  # a read-only data dir: list from the manifests next time too


def read(bundle: str | Path) -> tuple[Any, str | None]:
    """(parsed manifest or None, why it cannot be trusted or None).

    Plain strings and os calls on purpose: backup-list reads a thousand of these per call."""
    path = os.path.join(bundle, MANIFEST)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, "manifest.json is missing"
    except OSError as exc:
        if os.path.islink(path):
            return None, "manifest.json is a symlink"
        return None, f"manifest.json cannot be read ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "manifest.json is not a regular file"
        if st.st_size > MANIFEST_LIMIT:
            return None, f"manifest.json is too large ({st.st_size} bytes)"
        chunks, total = [], 0
        while total <= MANIFEST_LIMIT:  # the size can change under us: never read past the limit
            chunk = os.read(fd, min(MANIFEST_LIMIT + 1 - total, max(st.st_size, 4096) + 1))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        return None, f"manifest.json cannot be read ({exc.strerror})"
    finally:
        os.close(fd)
    if total > MANIFEST_LIMIT:
        return None, "manifest.json is too large"
    data = b"".join(chunks)
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "manifest.json is not UTF-8 text"
    except ValueError as exc:
        return None, f"{NOT_JSON} ({exc})"
    except RecursionError:
        return None, "manifest.json is nested too deeply"
    return raw, problem(raw)


def db_problem(bundle: str | Path, name: str) -> str | None:
    """Why the bundle's sparkq.db cannot be used (a symlink, not a file), or None (also when absent)."""
    try:
        mode = os.lstat(os.path.join(bundle, DB_NAME)).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return f"{name}/{DB_NAME} is a symlink; refusing it (pick another backup)"
    if not stat.S_ISREG(mode):
        return f"{name}/{DB_NAME} is not a regular file; refusing it"
    return None


def _all_of(values, kind: type) -> bool:
    """Every value is exactly of `kind` (so no bool passes for int); C-speed for long lists."""
    return set(map(type, values)) <= {kind}


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and _all_of(v, str)


# Types the readers rely on, key by key (a missing key is fine; older writers left some out).
# JSON object keys are always strings. Checksum values are only checked for shape here; verify
# compares them with the files. backup-list runs this for every bundle, hence the set tricks.
_MANIFEST_CHECKS = {
    "created_at": lambda v: isinstance(v, str),
    "integrity_check": lambda v: isinstance(v, str),
    "trigger": lambda v: v is None or isinstance(v, str),
    "project_id": lambda v: isinstance(v, str),
    "config_file": lambda v: isinstance(v, bool),
    "configuration_files": lambda v: isinstance(v, dict),
    "database": lambda v: isinstance(v, dict),
    "counts": lambda v: isinstance(v, dict) and _all_of(v.values(), int),
    "files": lambda v: _str_list(v) or (isinstance(v, dict) and all(_str_list(x) for x in v.values())),
    "checksums": lambda v: isinstance(v, dict) and _all_of(v.values(), str) and set(map(len, v.values())) <= {64},
}
_ESCAPES = re.compile(r"^/|\\|\x00|(^|/)\.\.(/|$)|^$")  # absolute, backslash, NUL, "..", empty


def problem(m: Any) -> str | None:
    """Why a parsed manifest cannot be trusted, or None. Checks the types readers rely on."""
    if not isinstance(m, dict):
        return "manifest.json is not a JSON object"
    if not isinstance(m.get("backup_version"), str):
        return "manifest.json has no backup_version string"
    for key, ok in _MANIFEST_CHECKS.items():
        if key in m and not ok(m[key]):
            return f"manifest.json has a malformed {key!r}"
    for rel in m.get("checksums") or ():
        if _ESCAPES.search(rel):
            return f"manifest.json checksums name a path outside the bundle ({rel!r})"
    return None
