"""The measures. Each runs a SparkQ command (A) and the bare operation it wraps (B) alternately,
A B A B ..., on the same files in the same run, and reports median(A) / median(B)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import threading
import time
import traceback
from pathlib import Path

from . import api, dbgen
from .proc import PYTHON, SPARKQ, BenchError, ProjectRoot, Run, free_port, kill_pidfile_server, run, serve_alone, stop_proc
from .report import Report, Row, fmt_s, size_label

WRITER = Path(__file__).with_name("writer.py")
HTTP_STACK = ("fastapi", "uvicorn", "httpx", "starlette", "pydantic")
IMPORT_FLOOR = "import typer, psutil, yaml, structlog"
BACKUP_LIMITS = {256: 2.5, 1024: 2.0}  # verified backup / sqlite3 .backup, by DB size in MB
RESTORE_LIMIT_FROM_MB = 1024          # restore <= 2.5x is a target at 1 GiB; smaller sizes are info
RSS_LIMIT_MB, RSS_GROWTH_MB = 64.0, 10.0
LIST_BUNDLES = 1000
SIZE_CASES = ("backup", "writer", "api", "restore", "schedule")  # run once per database size
SMALL_CASES = ("imports", "status", "start", "list")  # fixed-cost commands, run once
CASES = SMALL_CASES + SIZE_CASES


def restore_phases(stderr: str) -> dict[str, float]:
    """The phase times `sparkq -v backup-restore` prints as `restore_phases (verify=1.2 ...)`."""
    for line in stderr.splitlines():
        if "restore_phases (" in line:
            pairs = line.split("restore_phases (", 1)[1].rstrip(")").split()
            return {k: float(v) for k, v in (p.split("=", 1) for p in pairs)}
    return {}


def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f} ms"


class Bench:
    def __init__(self, work: Path, pairs: int, report: Report, only: set[str] | None = None) -> None:
        self.work = work
        self.only = only
        self.pairs = pairs
        self.report = report
        self.projects: list[ProjectRoot] = []
        self.servers: list[subprocess.Popen] = []
        self.rss: dict[float, float] = {}

    # --- plumbing ---------------------------------------------------------------------------

    def project(self, name: str) -> ProjectRoot:
        root = self.work / name
        root.mkdir(parents=True)
        port = free_port()
        (root / "sparkq.yml").write_text(
            "server:\n  host: 127.0.0.1\n  port: %d\n  start_timeout: 60\n  stop_timeout: 15\n" % port
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKQ_") and k != "NOTIFY_SOCKET"}
        env["SPARKQ_ROOT"] = str(root)
        proj = ProjectRoot(root=root, port=port, env=env)
        self.projects.append(proj)
        return proj

    def sparkq(self, proj: ProjectRoot, *args: str, check: bool = True) -> Run:
        return run([SPARKQ, *args], env=proj.env, cwd=proj.root, check=check)

    def sqlite_backup(self, src: Path, dst: Path) -> float:
        """The bare operation: the sqlite3 shell's online backup of `src`, then the copy is dropped."""
        try:
            return run(["sqlite3", str(src), f".backup '{dst}'"]).seconds
        finally:
            dbgen.remove(dst)

    def alternate(self, name_a: str, name_b: str, fa, fb, fmt=fmt_s) -> tuple[list[float], list[float]]:
        a: list[float] = []
        b: list[float] = []
        for i in range(self.pairs):
            a.append(fa())
            b.append(fb())
            ratio = a[-1] / b[-1] if b[-1] > 0 else float("inf")
            print(f"  pair {i + 1}/{self.pairs}: {name_a} {fmt(a[-1])} | {name_b} {fmt(b[-1])} | ratio {ratio:.2f}",
                  flush=True)
        return a, b

    def guarded(self, case: str, measure: str, size: str, fn) -> None:
        """Run one case; a failing command becomes an ERROR row and the rest of the run goes on."""
        if self.only and case not in self.only:
            return
        try:
            fn()
        except BenchError as exc:
            self.report.error(measure, size, str(exc))
        except Exception as exc:  # noqa: BLE001 - report, keep measuring the rest
            traceback.print_exc()
            self.report.error(measure, size, f"{type(exc).__name__}: {exc}")

    def stop_project_server(self, proj: ProjectRoot) -> None:
        if proj.pidfile.exists():
            self.sparkq(proj, "stop", check=False)
            kill_pidfile_server(proj.pidfile)

    def cleanup(self) -> None:
        for proc in self.servers:
            stop_proc(proc)
        for proj in self.projects:
            try:
                self.stop_project_server(proj)
            except Exception:  # noqa: BLE001
                kill_pidfile_server(proj.pidfile)
            shutil.rmtree(proj.root, ignore_errors=True)
        self.projects.clear()
        self.servers.clear()

    def drop(self, proj: ProjectRoot) -> None:
        self.stop_project_server(proj)
        shutil.rmtree(proj.root, ignore_errors=True)
        self.projects.remove(proj)

    # --- per database size ------------------------------------------------------------------

    def wants(self, *cases: str) -> bool:
        return not self.only or bool(self.only.intersection(cases))

    def size_section(self, size_mb: float) -> None:
        if not self.wants(*SIZE_CASES):
            return
        label = size_label(size_mb)
        need = 4.5 * size_mb * 2**20 + 200 * 2**20
        free = shutil.disk_usage(self.work).free
        if free < need:
            self.report.error("database build", label, f"needs ~{need / 2**30:.1f} GiB free, {free / 2**30:.1f} GiB left")
            return
        proj = self.project(f"db-{size_mb:g}mb")
        t0 = time.perf_counter()
        built = dbgen.build_db(proj.db, size_mb)
        os.sync()  # the build's dirty pages must not be written back during the first pair
        print(f"== {label}: built {built['bytes'] / 2**20:.0f} MB ({built['rows']} task rows) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        dbgen.warm(proj.db)
        self.guarded("backup", "verified backup vs sqlite3 .backup", label,
                     lambda: self.case_backup(proj, size_mb))
        self.guarded("writer", "writer p99 commit latency", label,
                     lambda: self.case_writer(proj, size_mb))
        self.guarded("api", "API request latency during sparkq backup", label,
                     lambda: api.case_api(self, proj, size_mb))
        self.guarded("restore", "backup-restore --db-only vs sqlite3 .backup", label,
                     lambda: self.case_restore(proj, size_mb))
        from .schedule_case import case_schedule

        self.guarded("schedule", "scheduled backup", label, lambda: case_schedule(self, proj, size_mb))
        self.drop(proj)

    def case_backup(self, proj: ProjectRoot, size_mb: float) -> None:
        label = size_label(size_mb)
        print(f"-- {label}: sparkq backup vs sqlite3 .backup", flush=True)
        rss: list[float] = []
        dst = proj.data_dir / "baseline.db"

        def a() -> float:
            r = self.sparkq(proj, "backup")
            rss.append(r.maxrss_mb)
            dbgen.prune(proj.backup_dir)
            return r.seconds

        A, B = self.alternate("sparkq backup", "sqlite3 .backup", a, lambda: self.sqlite_backup(proj.db, dst))
        self.report.ratio_row("verified backup vs sqlite3 .backup", label, A, B, BACKUP_LIMITS.get(size_mb),
                              data={"maxrss_mb": rss})
        peak = max(rss)
        self.rss[size_mb] = peak
        self.report.add(Row(measure="peak RSS of sparkq backup", size=label, a=f"{peak:.1f} MB", b="", ratio=None,
                            target=f"<= {RSS_LIMIT_MB:g} MB", verdict="PASS" if peak <= RSS_LIMIT_MB else "MISS",
                            data={"maxrss_mb": rss}))

    def rss_growth(self) -> None:
        if len(self.rss) < 2:
            return
        lo, hi = min(self.rss), max(self.rss)
        growth = self.rss[hi] - self.rss[lo]
        self.report.add(Row(
            measure="peak RSS growth of sparkq backup", size=f"{size_label(lo)} -> {size_label(hi)}",
            a=f"{growth:+.1f} MB", b="", ratio=None, target=f"< {RSS_GROWTH_MB:g} MB",
            verdict="PASS" if growth < RSS_GROWTH_MB else "MISS", data={"rss_by_size_mb": self.rss},
        ))

    def case_writer(self, proj: ProjectRoot, size_mb: float) -> None:
        label = size_label(size_mb)
        print(f"-- {label}: writer commit latency during sparkq backup vs none", flush=True)
        with_backup: list[dict] = []
        without: list[dict] = []
        for i in range(self.pairs):
            x, y, seconds = self.writer_pair(proj, f"w{i}", "backup")
            with_backup.append(x)
            without.append(y)
            print(f"  pair {i + 1}/{self.pairs}: during backup ({seconds:.2f} s) p50/p99/max "
                  f"{x['p50_ms']:.2f}/{x['p99_ms']:.2f}/{x['max_ms']:.1f} ms, {x['commits']} commits, "
                  f"{x['failed']} failed | none p50/p99/max {y['p50_ms']:.2f}/{y['p99_ms']:.2f}/{y['max_ms']:.1f} ms, "
                  f"{y['commits']} commits, {y['failed']} failed | ratio {x['p99_ms'] / y['p99_ms']:.2f}", flush=True)

        def med(rows, key):
            return statistics.median(r[key] for r in rows)

        note = (f"p50 {med(with_backup, 'p50_ms'):.2f} vs {med(without, 'p50_ms'):.2f} ms, "
                f"max {med(with_backup, 'max_ms'):.1f} vs {med(without, 'max_ms'):.1f} ms")
        self.report.ratio_row("writer p99 commit latency, during backup vs none", label,
                              [r["p99_ms"] for r in with_backup], [r["p99_ms"] for r in without], None,
                              unit_fmt=_fmt_ms, note=note, data={"during": with_backup, "none": without})
        failed = sum(r["failed"] for r in with_backup)
        failed_b = sum(r["failed"] for r in without)
        errors = sorted({e for r in with_backup + without for e in r["errors"]})
        self.report.add(Row(
            measure="failed writer commits, during backup vs none", size=label, a=str(failed), b=str(failed_b),
            ratio=None, target="0", verdict="PASS" if failed == 0 and failed_b == 0 else "MISS",
            note="; ".join(errors), data={"commits": sum(r["commits"] for r in with_backup)},
        ))

    def writer_pair(self, proj: ProjectRoot, tag: str, *command: str) -> tuple[dict, dict, float]:
        """The writer's summary during `sparkq COMMAND`, then alone for as long; and how long it took."""
        w = self._start_writer(proj, f"{tag}a")
        try:
            r = self.sparkq(proj, *command)
        finally:
            during = self._stop_writer(w)
        dbgen.prune(proj.backup_dir)
        dbgen.checkpoint(proj.db)
        w = self._start_writer(proj, f"{tag}b")
        try:
            time.sleep(r.seconds)
        finally:
            alone = self._stop_writer(w)
        dbgen.checkpoint(proj.db)
        return during, alone, r.seconds

    def _start_writer(self, proj: ProjectRoot, tag: str, script: Path = WRITER, args: tuple[str, ...] = ()):
        """Start a load process (`script ARGS... DB OUT.json`) and wait for its "ready" line."""
        out = proj.root / f"{script.stem}-{tag}.json"
        proc = subprocess.Popen([PYTHON, str(script), *args, str(proj.db), str(out)], cwd=proj.root, env=proj.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        timer = threading.Timer(60, proc.kill)
        timer.start()
        try:
            line = proc.stdout.readline().strip()
        finally:
            timer.cancel()
        if line != "ready":
            stop_proc(proc)
            raise BenchError(f"{script.name} did not start (exit {proc.poll()})")
        return proc, out

    def _stop_writer(self, writer) -> dict:
        proc, out = writer
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.servers.remove(proc)
        if proc.returncode != 0 or not out.exists():
            raise BenchError(f"{proc.args[1]} exited {proc.returncode} without a summary")
        return json.loads(out.read_text())

    def case_restore(self, proj: ProjectRoot, size_mb: float) -> None:
        label = size_label(size_mb)
        print(f"-- {label}: sparkq backup-restore 1 --db-only --yes vs sqlite3 .backup of the bundle", flush=True)
        dbgen.prune(proj.backup_dir)
        if not dbgen.bundles(proj.backup_dir):
            self.sparkq(proj, "backup")
        bundle_db = dbgen.bundles(proj.backup_dir)[-1] / "sparkq.db"
        if not bundle_db.is_file():
            raise BenchError(f"no sparkq.db in {bundle_db.parent.name}")
        dbgen.warm(bundle_db, proj.db)
        rss: list[float] = []
        phases: list[dict[str, float]] = []

        def a() -> float:
            r = self.sparkq(proj, "-v", "backup-restore", "1", "--db-only", "--yes")
            rss.append(r.maxrss_mb)
            phases.append(restore_phases(r.stderr))
            dbgen.prune(proj.backup_dir)
            return r.seconds

        A, B = self.alternate("sparkq backup-restore", "sqlite3 .backup", a,
                              lambda: self.sqlite_backup(bundle_db, proj.data_dir / "baseline.db"))
        limit = 2.5 if size_mb >= RESTORE_LIMIT_FROM_MB else None
        names = list(dict.fromkeys(k for p in phases for k in p))  # in the order restore reports them
        spent = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in names}
        where = ", ".join(f"{k} {v:.2f} s" for k, v in spent.items())
        self.report.ratio_row("backup-restore --db-only vs sqlite3 .backup", label, A, B, limit,
                              note=f"restore peak RSS {max(rss):.1f} MB; phases (median) {where or 'not printed'}",
                              data={"maxrss_mb": rss, "phases": phases})

    # --- fixed-cost commands (small DB) -----------------------------------------------------

    def small_section(self, size_mb: float) -> None:
        self.guarded("imports", "--version/--help import no HTTP stack", "", self.case_imports)
        if self.wants("status", "start"):
            proj = self.project("small")
            dbgen.build_db(proj.db, size_mb)
            dbgen.warm(proj.db)
            label = size_label(size_mb)
            self.guarded("status", "sparkq status vs import floor", "", lambda: self.case_status(proj))
            self.guarded("start", "sparkq start to healthy", label, lambda: self.case_start(proj, size_mb))
            self.drop(proj)
        self.guarded("list", f"backup-list over {LIST_BUNDLES} bundles vs --version", "", self.case_list)

    def case_imports(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKQ_")}
        env["SPARKQ_ROOT"] = str(self.work)
        # --version and --help carry the target; backup-list (a real command) is shown for context.
        for flag, judged in (("--version", True), ("--help", True), ("backup-list", False)):
            r = run([PYTHON, "-X", "importtime", SPARKQ, flag], env=env, cwd=self.work)
            modules, total_us = set(), 0
            for line in r.stderr.splitlines():
                if not line.startswith("import time:") or "|" not in line:
                    continue
                parts = line[len("import time:"):].split("|")
                try:
                    total_us += int(parts[0])
                except ValueError:
                    continue  # the header line
                modules.add(parts[2].strip())
            heavy = sorted({m.split(".")[0] for m in modules} & set(HTTP_STACK))
            self.report.add(Row(
                measure=f"sparkq {flag} imports no HTTP stack" if judged else f"HTTP stack imported by sparkq {flag}",
                size="",
                a="clean" if not heavy else "imports " + ",".join(heavy), b="", ratio=None,
                target="none of " + "/".join(HTTP_STACK) if judged else "-",
                verdict=("MISS" if heavy else "PASS") if judged else "info",
                note=f"{len(modules)} modules, {total_us / 1000:.0f} ms of imports",
                data={"modules": len(modules), "import_ms": total_us / 1000, "http_stack": heavy},
            ))

    def case_status(self, proj: ProjectRoot) -> None:
        print("-- sparkq status (server running) vs python -c " + repr(IMPORT_FLOOR), flush=True)
        self.sparkq(proj, "start")
        try:
            A, B = self.alternate(
                "sparkq status", "import floor",
                lambda: self.sparkq(proj, "status").seconds,
                lambda: run([PYTHON, "-c", IMPORT_FLOOR], env=proj.env, cwd=proj.root).seconds,
            )
        finally:
            self.sparkq(proj, "stop")
            dbgen.prune(proj.backup_dir)
        self.report.ratio_row("sparkq status vs import floor", "", A, B, 1.5)

    def case_start(self, proj: ProjectRoot, size_mb: float) -> None:
        print("-- sparkq start to healthy vs server alone + sparkq backup", flush=True)
        alone: list[float] = []
        backups: list[float] = []

        def a() -> float:
            r = self.sparkq(proj, "start")
            self.sparkq(proj, "stop")
            dbgen.prune(proj.backup_dir)
            return r.seconds

        def b() -> float:
            secs, proc = serve_alone(proj.db, proj.port, env=proj.env, cwd=proj.root,
                                     log=proj.root / "server-alone.log")
            self.servers.append(proc)
            stop_proc(proc)
            self.servers.remove(proc)
            backup = self.sparkq(proj, "backup").seconds
            dbgen.prune(proj.backup_dir)
            alone.append(secs)
            backups.append(backup)
            return secs + backup

        A, B = self.alternate("sparkq start", "server alone + backup", a, b)
        label = size_label(size_mb)
        self.report.ratio_row("start to healthy vs server alone + backup", label, A, B, 1.3,
                              note=f"server alone {fmt_s(statistics.median(alone))}, "
                                   f"backup {fmt_s(statistics.median(backups))}",
                              data={"server_alone": alone, "backup": backups})
        self.report.ratio_row("start to healthy vs server alone (no backup)", label, A, alone, None)

    def case_list(self) -> None:
        print(f"-- sparkq backup-list over {LIST_BUNDLES} bundles vs sparkq --version", flush=True)
        proj = self.project("list")
        try:
            dbgen.build_db(proj.db, 0)
            self.sparkq(proj, "backup")
            src = dbgen.bundles(proj.backup_dir)[-1]
            dbgen.clone_bundles(src, proj.backup_dir, LIST_BUNDLES - 1)
            listed = sum("sparkq_" in line for line in self.sparkq(proj, "backup-list").stdout.splitlines())
            A, B = self.alternate("sparkq backup-list", "sparkq --version",
                                  lambda: self.sparkq(proj, "backup-list").seconds,
                                  lambda: self.sparkq(proj, "--version").seconds)
            note = "" if listed >= LIST_BUNDLES else f"only {listed} of {LIST_BUNDLES} bundles listed"
            self.report.ratio_row(f"backup-list over {LIST_BUNDLES} bundles vs --version", "", A, B, 2.0, note=note)
        finally:
            self.drop(proj)
