"""What is in the off-site repository: list SparkQ's snapshots, bring one back, check it.

`backup-restore --offsite REF` fetches the snapshot into a hidden temp folder beside the backups,
verifies the bundle's checksums and database there, moves it in under its own name and then takes
the normal restore path (restore.py: refusals, the pre-restore bundle, atomic placement). On a
new machine that is the whole disaster recovery: a sparkq.yml with the `offsite` section (or the
two RESTIC_* variables), then `backup-restore --offsite latest --yes`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import log
from ..errors import BackupNotFound, OffsiteFailed, UsageError, VerificationFailed
from ..fsutil import remove_stale_temps, temp_entry
from . import offsite_state, restic
from .layout import BUNDLE_RE, FETCH_TEMP, PRE_RESTORE_PREFIX
from .offsite import CREATED_FORMAT, TAG, note_stored, target_of

_OWN_TAGS = (TAG,)
_TAG_PREFIXES = ("trigger:", "project:", "created:")


@dataclass
class Snapshot:
    id: str
    time: str
    host: str
    bundle: str | None
    trigger: str | None
    project: str | None
    path: str
    data_added: int | None = None
    created: str | None = None  # the bundle's time (offsite.CREATED_FORMAT); older pushes lack it

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _snapshot(raw: dict, known: dict[str, dict]) -> Snapshot:
    tags = raw.get("tags") or []
    plain = [t for t in tags if t not in _OWN_TAGS and not t.startswith(_TAG_PREFIXES)]
    pick = {p: next((t[len(p):] for t in tags if t.startswith(p)), None) for p in _TAG_PREFIXES}
    bundle = plain[0] if plain else None
    added = (raw.get("summary") or {}).get("data_added")  # restic >= 0.17 records it
    if added is None and bundle in known and raw["id"].startswith(known[bundle].get("snapshot") or "-"):
        added = known[bundle].get("data_added")
    return Snapshot(id=raw["id"], time=raw.get("time", ""), host=raw.get("hostname", ""), bundle=bundle,
                    trigger=pick["trigger:"], project=pick["project:"], path=(raw.get("paths") or [""])[0],
                    data_added=added, created=pick["created:"])


def snapshots(settings) -> list[Snapshot]:
    """SparkQ's snapshots in the repository, newest bundle first (a bundle pushed late, after a
    failed push, is still older than the ones taken after it)."""
    target = target_of(settings)
    raw = restic.run_json(restic.find(), target, ["snapshots", "--tag", TAG]) or []
    known = offsite_state.load(settings.paths, target.repository).pushed
    found = [_snapshot(r, known) for r in raw if isinstance(r, dict) and r.get("id")]
    return sorted(found, key=_newest, reverse=True)


def _newest(snap: Snapshot) -> tuple[datetime, datetime]:
    """The bundle's own time (its `created:` tag), else the snapshot's; then the snapshot's."""
    pushed = _when(snap.time)
    try:
        made = datetime.strptime(snap.created, CREATED_FORMAT).replace(tzinfo=timezone.utc) if snap.created else pushed
    except ValueError:
        made = pushed
    return made, pushed


def _when(text: str) -> datetime:
    """restic's time (RFC 3339 with nanoseconds and an offset) as an aware datetime."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@dataclass
class OffsiteList:
    repository: str
    snapshots: list[Snapshot] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"repository": self.repository, "snapshots": [s.to_dict() for s in self.snapshots]}

    def text(self) -> str:
        if not self.snapshots:
            return f"no SparkQ snapshots in {self.repository} yet (push one: ./sparkq.sh backup-push)"
        from ..fmt import human_size

        lines = [f"off-site: {self.repository}",
                 f"{'SNAPSHOT':<10} {'BUNDLE':<36} {'TRIGGER':<9} {'CREATED (UTC)':<20} {'HOST':<16} ADDED"]
        for s in self.snapshots:
            added = human_size(s.data_added) if isinstance(s.data_added, int) else "-"
            # The bundle's own time: the order of the list.
            when = _newest(s)[0].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"{s.id[:8]:<10} {s.bundle or '?':<36} {s.trigger or '?':<9} {when:<20} {s.host:<16} {added}")
        return "\n".join(lines)


def list_offsite(settings) -> OffsiteList:
    return OffsiteList(target_of(settings).shown, snapshots(settings))


def find(settings, ref: str) -> Snapshot:
    """REF: `latest`, a bundle name, or a snapshot id (or its first characters)."""
    from . import history

    if not ref.strip():
        raise UsageError("empty backup reference; give latest, a bundle name or a snapshot id "
                         "(see ./sparkq.sh backup-list --offsite)")
    found = snapshots(settings)
    if not found:
        raise BackupNotFound(f"the repository {target_of(settings).shown} holds no SparkQ snapshot; "
                             "push one first (./sparkq.sh backup-push) or check offsite.repository")
    if ref == "latest":
        mine = history.project_id(settings.paths)
        own = [s for s in found if mine and s.project == mine]
        readable = [s for s in (own or found) if s.bundle and BUNDLE_RE.fullmatch(s.bundle)
                    and not s.bundle.startswith(PRE_RESTORE_PREFIX)]
        return (readable or own or found)[0]
    matches = [s for s in found if s.bundle == ref] or [s for s in found if s.id.startswith(ref.lower())]
    if not matches:
        raise BackupNotFound(f"no off-site snapshot {ref!r}; see ./sparkq.sh backup-list --offsite")
    return matches[0]


def fetch(settings, ref: str) -> str:
    """Bring snapshot REF back as a verified local bundle; returns its name (for restore)."""
    from .catalog import scan
    from .publish import ensure_backup_dir
    from .verify import verify_entry

    snap = find(settings, ref)
    if not snap.bundle:
        raise OffsiteFailed(f"snapshot {snap.id[:8]} carries no bundle name tag; it was not pushed by SparkQ")
    backup_dir = settings.paths.backup_dir
    ensure_backup_dir(backup_dir)
    if os.path.lexists(backup_dir / snap.bundle):
        regular, pre = scan(backup_dir)
        local = [e for e in regular + pre if e.name == snap.bundle]
        problems = verify_entry(local[0]) if local else ["it is not a bundle SparkQ reads"]
        if problems:  # never replaced or removed here: it is the user's, damaged or not
            raise VerificationFailed(
                f"the local copy of {snap.bundle} failed verification ({problems[0]}); nothing was changed; "
                f"move it out of {backup_dir}, then run this again to fetch the off-site copy")
        log.get().info("offsite_fetch_local", bundle=snap.bundle)
        note_stored(settings, snap.bundle, snap.id)
        return snap.bundle  # the same bundle is here already, and whole
    # A hidden temp folder with the host in its name: one on a shared backup dir is told apart
    # from another host's, and a fetch killed mid-download is cleaned up like any dead writer's.
    fetching = f"{FETCH_TEMP}{_HOST}"
    remove_stale_temps(backup_dir / fetching)
    tmp = backup_dir / temp_entry(fetching)
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o700)
    try:
        restic.run(restic.find(), target_of(settings), ["restore", snap.id, "--target", str(tmp)])
        got = tmp / snap.path.lstrip("/")
        if not (got / "manifest.json").is_file():
            raise OffsiteFailed(f"snapshot {snap.id[:8]} holds no SparkQ bundle at {snap.path}")
        os.rename(got, tmp / snap.bundle)
        regular, _pre = scan(tmp)
        if not regular:
            raise OffsiteFailed(f"snapshot {snap.id[:8]}: {snap.bundle} is not a bundle name SparkQ reads")
        problems = verify_entry(regular[0])
        if problems:
            raise VerificationFailed(f"the off-site copy {snap.bundle} failed verification: {problems[0]}; "
                                     "nothing was changed; try an older one (./sparkq.sh backup-list --offsite)")
        os.rename(tmp / snap.bundle, backup_dir / snap.bundle)
        note_stored(settings, snap.bundle, snap.id)
        log.get().info("offsite_fetched", bundle=snap.bundle, snapshot=snap.id[:8])
        return snap.bundle
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_HOST = socket.gethostname().replace("-", "_") or "host"



@dataclass
class CheckReport:
    repository: str
    ok: bool
    read_data: bool
    message: str

    @property
    def exit_code(self) -> int:
        from ..errors import OK, VERIFY_FAILED

        return OK if self.ok else VERIFY_FAILED

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        what = "every pack read and checked" if self.read_data else "structure checked"
        head = f"off-site: {self.repository}: " + ("ok" if self.ok else "FAILED")
        return f"{head} ({what})" + ("" if self.ok else f": {self.message}")


# How `restic check` ends when it found damage: in the packs, trees and snapshots, or in the index.
_CHECK_VERDICTS = ("repository contains errors", "LoadIndex returned errors")


def check(settings, *, read_data: bool = False) -> CheckReport:
    """`restic check` (with --read-data: download and verify every pack)."""
    target = target_of(settings)
    try:
        restic.run(restic.find(), target, ["check", *(["--read-data"] if read_data else [])])
    except restic.ResticError as exc:
        # Only restic's own verdict is a failed verification (exit 5). A backend it cannot reach,
        # a wrong password or a lock says nothing about the copies: an off-site failure (exit 1).
        if not any(verdict in str(exc) for verdict in _CHECK_VERDICTS):
            raise
        return CheckReport(target.shown, False, read_data, str(exc))
    return CheckReport(target.shown, True, read_data, "no errors were found")
