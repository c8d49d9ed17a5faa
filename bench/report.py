"""Results: one row per measure with its verdict, printed as it lands, then as a markdown table/JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass
class Row:
    measure: str
    size: str            # "256 MB", or "" for measures that do not depend on the DB size
    a: str               # median of the measured side, with its unit
    b: str               # median of the baseline side, or the bare value for absolute targets
    ratio: float | None  # median(A) / median(B)
    target: str
    verdict: str         # PASS | MISS | info | ERROR
    note: str = ""
    data: dict = field(default_factory=dict)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def size_label(size_mb: float) -> str:
    return "1 GiB" if size_mb == 1024 else f"{size_mb:g} MB"


class Report:
    def __init__(self, machine: dict, args: dict) -> None:
        self.machine = machine
        self.args = args
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        ratio = f", ratio {row.ratio:.2f}" if row.ratio is not None else ""
        where = f" @{row.size}" if row.size else ""
        note = f"  [{row.note}]" if row.note else ""
        vs = f" vs {row.b}" if row.b else ""
        print(f"{row.verdict:5} {row.measure}{where}: {row.a}{vs}{ratio} (target {row.target}){note}", flush=True)
        return row

    def ratio_row(self, measure, size, a: list[float], b: list[float], limit: float | None, *,
                  unit_fmt=fmt_s, note: str = "", data: dict | None = None) -> Row:
        """Overall ratio = median(A) / median(B); per-pair ratios go to the JSON."""
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = ma / mb if mb > 0 else float("inf")
        verdict = "info" if limit is None else ("PASS" if ratio <= limit else "MISS")
        return self.add(Row(
            measure=measure, size=size, a=unit_fmt(ma), b=unit_fmt(mb), ratio=ratio,
            target="-" if limit is None else f"<= {limit:g}x", verdict=verdict, note=note,
            data={"a": a, "b": b, "pair_ratios": [x / y if y > 0 else None for x, y in zip(a, b)],
                  **(data or {})},
        ))

    def error(self, measure: str, size: str, message: str) -> Row:
        return self.add(Row(measure=measure, size=size, a="-", b="", ratio=None, target="-",
                            verdict="ERROR", note=message))

    @property
    def errors(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "ERROR"]

    def markdown(self) -> str:
        lines = [
            "| Measure | Size | A (median) | B (median) | A/B | Target | Result |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
            result = r.verdict + (f" ({r.note})" if r.note else "")
            lines.append(f"| {r.measure} | {r.size or '-'} | {r.a} | {r.b or '-'} | {ratio} | {r.target} | {result} |")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": self.machine, "args": self.args, "rows": [asdict(r) for r in self.rows]}
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine_info(work: Path) -> dict:
    """What a reader needs to compare runs: CPUs, memory, disk, Python and SQLite versions, load."""
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite_library": sqlite3.sqlite_version,
        "sqlite_cli": _cli_version(),
        "kernel": platform.release(),
        "loadavg_start": loadavg(),
        "cpu": _cpu_model(),
    }
    info.update(_disk(work))
    return info


def _meminfo_kib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _cli_version() -> str:
    exe = shutil.which("sqlite3")
    if not exe:
        return "missing"
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def _disk(work: Path) -> dict:
    """Filesystem, device and whether it spins, for the folder the benchmark writes in."""
    probe = work if work.exists() else work.parent
    usage = shutil.disk_usage(probe)
    best = ("?", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if str(probe.resolve()).startswith(mnt) and len(mnt) >= len(best[1] if best[1] != "?" else ""):
                best = (dev, mnt, fstype)
    except OSError:
        pass
    rotational = "?"
    name = Path(best[0]).name
    for candidate in (name, name.rstrip("0123456789")):
        f = Path(f"/sys/block/{candidate}/queue/rotational")
        if f.exists():
            rotational = "rotational" if f.read_text().strip() == "1" else "non-rotational"
            break
    return {"disk_device": best[0], "disk_fs": best[2], "disk_kind": rotational,
            "disk_free_gib": round(usage.free / 2**30, 1), "work_dir": str(work)}


def machine_text(info: dict) -> str:
    return (f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB RAM, Linux {info['kernel']}, "
            f"disk {info['disk_device']} {info['disk_fs']} ({info['disk_kind']}, {info['disk_free_gib']} GiB free), "
            f"Python {info['python']} ({sys.executable}), SQLite library {info['sqlite_library']}, "
            f"sqlite3 CLI {info['sqlite_cli']}, load average at start {info['loadavg_start']}")
