"""`backup-verify`: is a backup whole? Checksums, no symlinks, and SQLite's own integrity check.

Hashing the files and `PRAGMA integrity_check` of the database both mostly wait on I/O or run
in C with the GIL released, so they run side by side in two threads.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OK, VerificationFailed
from ..fsutil import sha256_file
from .catalog import resolve, scan
from .entry import Entry
from .dbfiles import open_backup_db
from .exports import export_problems
from .layout import DB_NAME, JOURNAL, ORIGINAL_VERSION, WAL



def verify_entry(entry: Entry, notes: list[str] | None = None) -> list[str]:
    """Every problem found in `entry`; an empty list means the backup is good.

    `notes` (when given) collects what is worth saying but does not make the backup bad.
    """
    notes = [] if notes is None else notes
    if entry.path.is_symlink():
        return [f"{entry.name} is a symlink; refusing it"]
    problems: list[str] = []
    if entry.format == "bundle":
        if entry.damaged:
            problems.append(entry.damaged)
        problems += _symlinks_and_oddities(entry)
        problems += _sidecars_of_ours(entry)
        problems += export_problems(entry)  # what backup-export would refuse, verify refuses too
    checksums = (entry.manifest or {}).get("checksums") or {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sparkq-verify") as pool:
        hashed = pool.submit(_check_checksums, entry, checksums)
        checked = pool.submit(_check_database, entry, notes)
        problems += hashed.result() + checked.result()
    return list(dict.fromkeys(problems))  # the same symlink can be found by two checks


def _symlinks_and_oddities(entry: Entry) -> list[str]:
    """Symlinks (never followed) and anything that is neither a file nor a folder."""
    problems = []
    for top, dirs, files in os.walk(entry.path):
        base = Path(top)
        for name in sorted(dirs + files):
            path = base / name
            rel = path.relative_to(entry.path).as_posix()
            try:
                mode = os.lstat(path).st_mode
            except OSError as exc:
                problems.append(f"{rel} cannot be read ({exc.strerror})")
                continue
            if stat.S_ISLNK(mode):
                problems.append(f"{entry.name}/{rel} is a symlink; refusing it (pick another backup)")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                problems.append(f"{rel} is not a regular file")
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return problems


def _sidecars_of_ours(entry: Entry) -> list[str]:
    """A -wal or -journal beside the database of a bundle of ours, which never has one: SQLite
    would read it as part of the database (rows, or a roll-back) that no checksum covers."""
    if not entry.ours:
        return []
    problems = []
    for suffix in (WAL, JOURNAL):
        name = DB_NAME + suffix
        if os.path.lexists(entry.path / name):
            problems.append(f"{entry.name}/{name} is not part of the backup (a bundle of ours holds its database "
                            "alone) and could change what a restore puts back; remove it, or pick another backup")
    return problems


def _check_checksums(entry: Entry, checksums: dict) -> list[str]:
    problems = []
    for rel, expected in sorted(checksums.items()):
        try:
            path = entry.member(rel)
        except VerificationFailed as exc:
            problems.append(str(exc))
            continue
        if path is None:
            problems.append(f"{rel} is missing (listed in the manifest's checksums)")
            continue
        try:
            actual = sha256_file(path)
        except (OSError, VerificationFailed) as exc:
            problems.append(f"{rel} cannot be read ({exc})")
            continue
        if actual != expected.lower():
            problems.append(f"{rel}: checksum mismatch (the file changed since the backup was taken)")
    return problems


def _check_database(entry: Entry, notes: list[str]) -> list[str]:
    import sqlite3

    from sparkq import storage

    try:
        db = entry.db_file
        wal = entry.wal_file if db is not None else None
    except VerificationFailed as exc:
        return [str(exc)]
    shown = entry.name if entry.format == "legacy" else f"{entry.name}/{DB_NAME}"
    if db is None:
        database = (entry.manifest or {}).get("database")
        if isinstance(database, dict) and database.get("present") is False:
            return []  # taken when the project had no database yet (e.g. a pre-restore bundle)
        return [f"{shown} is missing"]
    try:
        with open_backup_db(db, wal) as conn:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
            counted = storage.counts(conn) if rows == ["ok"] else {}
    except (sqlite3.Error, OSError) as exc:
        return [f"{shown} is not a readable SQLite database ({exc})"]
    if rows != ["ok"]:
        more = f" (+{len(rows) - 3} more)" if len(rows) > 3 else ""
        return [f"{shown}: integrity_check failed: {'; '.join(str(r) for r in rows[:3])}{more}"]
    mismatch = _count_mismatch(entry, counted)
    if mismatch and (entry.manifest or {}).get("backup_version") == ORIGINAL_VERSION:
        # The original counted its live database while copying it: a difference is expected.
        notes.append(f"manifest counts differ from {DB_NAME} ({mismatch}); the original SparkQ read them from "
                     "the live database, a restore gives the database's")
        return []
    if mismatch:
        return [f"manifest counts differ from {DB_NAME} ({mismatch}); the manifest was edited or does not "
                "belong to this database"]
    return []


def _count_mismatch(entry: Entry, counted: dict[str, int]) -> str:
    """"prompts 34 in the manifest, 33 in the database; ..." for every count that differs, or ""."""
    if entry.manifest is None or not counted:
        return ""
    claimed = entry.manifest.get("counts") or {}
    return "; ".join(
        f"{key} {claimed[key]} in the manifest, {counted[key]} in the database"
        for key in counted if key in claimed and claimed[key] != counted[key]
    )


@dataclass
class VerifyReport:
    results: list[dict] = field(default_factory=list)
    message: str | None = None  # said instead of the results when there was nothing to check

    @property
    def checked(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r["ok"])

    @property
    def exit_code(self) -> int:
        return VerificationFailed.exit_code if self.failed else OK

    def to_dict(self) -> dict:
        return {"results": self.results, "checked": self.checked, "failed": self.failed}

    def text(self) -> str:
        if not self.results:
            return self.message or "No backups found"
        lines = []
        for r in self.results:
            if r.get("damaged_when_taken"):
                lines.append(f"kept {r['name']}: whole, and holds the database as a restore found it, already "
                             f"damaged ({r['problems'][0]}); not restorable; delete it when you no longer need it")
                continue
            lines.append(f"ok  {r['name']}" if r["ok"] else f"FAILED {r['name']}: {'; '.join(r['problems'])}")
            lines += [f"    note: {note}" for note in r.get("notes", ())]
        lines.append(f"{self.checked} checked, {self.failed} failed")
        if self.failed:
            lines.append("Do not restore a failed backup; pick one marked ok (see ./sparkq.sh backup-list)")
        return "\n".join(lines)


def verify_backups(settings, ref: str | None, *, all_: bool = False) -> VerifyReport:
    """Verify backup `ref`, the newest regular backup (no ref), or every backup (`all_`)."""
    from .. import log

    if ref is not None and not all_:
        entries = [resolve(settings, ref)]
    else:
        regular, pre = scan(settings.paths.backup_dir)
        entries = regular + pre if all_ else regular[:1]
    report = VerifyReport()
    for entry in entries:
        notes: list[str] = []
        problems = verify_entry(entry, notes)
        result = {"name": entry.name, "ok": not problems, "problems": problems, "notes": notes}
        if problems and _damaged_when_taken(entry, problems):
            result.update(ok=True, damaged_when_taken=True)
        report.results.append(result)
        log.get().info("backup_verified", backup=entry.name, ok=not problems, problems=len(problems))
    return report


def _damaged_when_taken(entry: Entry, problems: list[str]) -> bool:
    """A pre-restore bundle that keeps, whole, a live database which was already damaged when a
    restore replaced it (its manifest recorded the failed check): a faithful record, not a
    backup gone bad, so `backup-verify --all` must not fail on it for as long as it is kept.
    A restore of it is still refused: verify_entry reports the problems."""
    from .entry import PRE_RESTORE

    recorded = (entry.manifest or {}).get("integrity_check")
    if entry.kind != PRE_RESTORE or not isinstance(recorded, str) or recorded in ("ok", "no database"):
        return False
    shown = f"{entry.name}/{DB_NAME}"  # as _check_database names it: the database's own check alone
    return all(p.startswith((f"{shown}: integrity_check failed", f"{shown} is not a readable SQLite database"))
               for p in problems)
