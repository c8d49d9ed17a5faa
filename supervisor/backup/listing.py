"""backup-list and backup-show: what the catalog found, rendered as text or JSON."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..fmt import human_size
from .catalog import resolve, scan
from .entry import PRE_RESTORE, Entry


@dataclass
class BackupList:
    backup_dir: Path
    backups: list[Entry]
    pre_restore: list[Entry]

    def to_dict(self) -> dict:
        return {
            "backups": [e.to_dict() for e in self.backups],
            "pre_restore": [e.to_dict() for e in self.pre_restore],
        }

    def text(self) -> str:
        if not self.backups and not self.pre_restore:
            return "No backups found"
        lines: list[str] = []
        if self.backups:
            lines.append(f"Backups in {self.backup_dir} (1 = newest):")
            lines += _table(self.backups)
        if self.pre_restore:
            if lines:
                lines.append("")
            lines.append("Pre-restore backups (restore them by name):")
            lines += _table(self.pre_restore)
        damaged = [e for e in self.backups + self.pre_restore if e.damaged]
        if damaged:
            lines.append("")
            lines += [f"damaged: {e.name}: {e.damaged}" for e in damaged]
            lines.append("Check them with ./sparkq.sh backup-verify --all")
        if any(e.counts_from == "live" for e in self.backups + self.pre_restore):
            lines.append("")
            lines.append("* counts from an original 2.1 manifest, read from the live database when it was copied")
        return "\n".join(lines)


_HEADER = ("#", "Name", "Format", "DB size", "yml", "Prompts", "Config", "Created", "Trigger", "Integrity")


def _table(entries: list[Entry]) -> list[str]:
    rows = [_HEADER]
    for e in entries:
        counts = e.counts
        mark = "*" if e.counts_from == "live" else ""
        integrity = "DAMAGED" if e.damaged else (e.integrity_check or "-")
        rows.append((
            str(e.number) if e.number is not None else "-",
            e.name,
            e.format,
            human_size(e.db_size),
            "yes" if e.config_file_included else "no",
            str(counts.get("prompts", "-")) + mark,
            str(counts.get("config_entries", "-")) + mark,
            e.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
            e.trigger or "-",
            integrity.splitlines()[0] if integrity else "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    right = {0, 3, 5, 6}
    return [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    ]


def list_backups(settings) -> BackupList:
    regular, pre = scan(settings.paths.backup_dir, listing_cache=settings.paths.listing_cache)
    return BackupList(settings.paths.backup_dir, regular, pre)


# --- backup-show ------------------------------------------------------------------------------


@dataclass
class ShowResult:
    entry: Entry
    files: list[dict]

    def to_dict(self) -> dict:
        e = self.entry
        out = {
            "name": e.name,
            "number": e.number,
            "kind": e.kind,
            "format": e.format,
            "path": str(e.path),
            "created_at": e.created_at.isoformat(),
            "manifest": e.raw_manifest if isinstance(e.raw_manifest, dict) else None,
            "damaged": e.damaged,
            "files": self.files,
        }
        if e.format == "legacy" or e.manifest is None or e.counts_from == "database":
            out.update(size=e.db_size, counts=e.counts, counts_from=e.counts_from, integrity_check=e.integrity_check)
        return out

    def text(self) -> str:
        e = self.entry
        d = self.to_dict()
        label = f"#{e.number} " if e.number is not None else ""
        lines = [f"Backup {label}{e.name} ({e.format}{', pre-restore' if e.kind == PRE_RESTORE else ''})",
                 f"Path: {e.path}", f"Created: {e.created_at.isoformat()}"]
        if e.damaged:
            lines.append(f"DAMAGED: {e.damaged}")
        if d["manifest"] is not None:
            lines += ["", "manifest.json:", json.dumps(d["manifest"], indent=2, ensure_ascii=False, default=str)]
        elif e.format == "legacy":
            lines.append("Legacy single-file backup: no manifest.")
        if "counts" in d:
            lines.append(f"Database: {human_size(d['size'])}; integrity: {d['integrity_check'] or '-'}")
            if d["counts"]:
                lines.append("Counts: " + ", ".join(f"{k} {v}" for k, v in d["counts"].items()))
            if e.manifest is not None:
                lines.append("(read from sparkq.db with its -wal folded in, as a restore gives it; the manifest's "
                             "counts were read from the live database)")
        lines += ["", f"Files ({len(self.files)}):"]
        width = max((len(f["path"]) for f in self.files), default=0)
        for f in self.files:
            note = " (symlink; refused)" if f.get("symlink") else ""
            lines.append(f"  {f['path'].ljust(width)}  {human_size(f['size']):>9}  ({f['size']} bytes){note}")
        return "\n".join(lines)


def show_backup(settings, ref: str) -> ShowResult:
    entry = resolve(settings, ref)
    return ShowResult(entry, _files_of(entry))


def _files_of(entry: Entry) -> list[dict]:
    """Every file of the backup with its size (lstat: symlinks are listed, never followed)."""
    if entry.format == "legacy":
        return [_file_row(p.name, p) for p in [entry.path, *entry.legacy_siblings]]
    if entry.path.is_symlink():
        return []
    rows: list[dict] = []
    for top, dirs, files in os.walk(entry.path):
        base = Path(top)
        for name in sorted(files) + sorted(d for d in dirs if (base / d).is_symlink()):
            rows.append(_file_row((base / name).relative_to(entry.path).as_posix(), base / name))
        dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
    return sorted(rows, key=lambda r: ("/" in r["path"], r["path"]))


def _file_row(rel: str, path: Path) -> dict:
    try:
        st = os.lstat(path)
    except OSError:
        return {"path": rel, "size": 0}
    row = {"path": rel, "size": st.st_size}
    if stat.S_ISLNK(st.st_mode):
        row["symlink"] = True
    return row
