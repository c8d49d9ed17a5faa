"""Shared test helpers: temp project roots, free ports, deadline waits, and process reaping."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import psutil

from bench.proc import ProjectRoot, free_port  # noqa: F401 - one definition, shared with the benchmarks

REPO = Path(__file__).resolve().parent.parent
SPARKQ_SH = REPO / "sparkq.sh"
VENV_BIN = Path(sys.executable).parent
SPARKQ_BIN = VENV_BIN / "sparkq"


def put_config(url: str, key: str, value) -> None:
    """PUT a config entry (namespace `test`) through a running server's API."""
    import urllib.request

    req = urllib.request.Request(f"{url}/api/config/test/{key}", method="PUT",
                                 data=json.dumps({"value": value}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def config_value(db: Path, key: str):
    """The value of config entry `test`/`key` in the database file `db` (read only), or None."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM config WHERE namespace = 'test' AND key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return row and json.loads(row[0])


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Project(ProjectRoot):
    """A temp project root for a test: its own data dir, env pointing at it, and a reaper that
    kills what the test started."""

    reaper: "Reaper | None" = None

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f"server:\n  host: 127.0.0.1\n  port: {self.port}\n  start_timeout: 30\n  stop_timeout: 10\n{extra}"
        )

    def cli(self, *args: str, input: str | None = None, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
        """Run the installed `sparkq` console script against this project."""
        return self._run([str(SPARKQ_BIN), *args], input, timeout, env)

    def sh(self, *args: str, input: str | None = None, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
        """Run `sparkq.sh` (the user's door) against this project."""
        return self._run([str(SPARKQ_SH), *args], input, timeout, env)

    def _run(self, argv, input, timeout, env) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            argv,
            cwd=self.root,
            env={**self.env, **(env or {})},
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if self.reaper is not None:
            self.reaper.adopt_pidfile(self.pidfile)
        return proc

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(args, cwd=self.root, env={**self.env, **kw.pop("env", {})}, **kw)
        if self.reaper is not None:
            self.reaper.add(proc.pid)
        return proc


class Reaper:
    """Remembers every PID a test started and kills it (and its children) at teardown."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def add(self, pid: int) -> None:
        self.pids.add(pid)

    def adopt_pidfile(self, pidfile: Path) -> None:
        import json

        try:
            data = json.loads(pidfile.read_text())
            self.pids.add(int(data["pid"]))
            if data.get("supervisor_pid"):
                self.pids.add(int(data["supervisor_pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:  # a supervisor between two servers (backoff, fatal) is named only in its state file
            state = pidfile.with_name(pidfile.stem + ".supervisor.json")
            self.pids.add(int(json.loads(state.read_text())["supervisor_pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def kill_all(self) -> None:
        procs = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                procs.extend(p.children(recursive=True))
                procs.append(p)
            except psutil.Error:
                continue
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARKQ_", "NOTIFY_SOCKET", "PYTEST_"))}
    env["SPARKQ_ROOT"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"
    env["TZ"] = "UTC"  # hand-built legacy names are UTC stamps; tests of local time set their own TZ
    # No scheduled backups unless a test asks for them (drop this from project.env): a supervisor
    # would otherwise back up soon after start whenever the newest bundle is old, as hand-built
    # ones are, and change what a test counts.
    env["SPARKQ_BACKUP_INTERVAL"] = "off"
    return env


# --- hand-built backups of every shape (catalog, verify, hostile-input tests) ------------------

BUNDLE_SECRET = "SPARKQ_API_KEY=sk-never-print-this-secret"
T0 = datetime(2025, 12, 3, 14, 30, 22, tzinfo=timezone.utc)


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%d_%H%M%S")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`proc` when it exited 0; otherwise fail showing its exit code and output."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


@lru_cache(maxsize=8)
def _facts(db: Path) -> tuple[dict, dict]:
    from sparkq import storage
    from supervisor.backup import dbfiles, exports

    with dbfiles.open_backup_db(db) as conn:
        return storage.counts(conn), exports.render_exports(conn)


def name_time(name: str) -> datetime:
    day, clock = re.search(r"_(\d{8})_(\d{6})", name).groups()
    return datetime.strptime(day + clock, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def make_bundle(backup_dir: Path, name: str, db_src: Path, *, created_at: datetime | None = None,
                checksums: bool = True, yml: bool = True, env: bool = True, trigger: str = "manual",
                extra: dict | None = None) -> Path:
    """A 2.0 bundle as create.py writes it (checksums of every file but the manifest)."""
    d = backup_dir / name
    d.mkdir(parents=True)
    shutil.copyfile(db_src, d / "sparkq.db")
    if yml:
        (d / "sparkq.yml").write_text("server:\n  port: 5005\n")
    if env:
        (d / ".env").write_text(BUNDLE_SECRET + "\n")
    counts, rendered = _facts(db_src)
    for fname, data in rendered.items():
        (d / fname).write_bytes(data)
    (d / "setup_templates").mkdir()
    (d / "setup_templates" / "sparkq.yml.example").write_text("server: {}\n")
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    when = created_at or name_time(name)
    manifest = {
        "backup_version": "2.0",
        "created_at": when.isoformat(),
        "timestamp": stamp(when),
        "integrity_check": "ok",
        "database": {"path": str(db_src), "size": "184K", "bytes": (d / "sparkq.db").stat().st_size},
        "config_file": yml,
        "counts": counts,
        "files": files + ["manifest.json"],
        "trigger": trigger,
        "sqlite_version": sqlite3.sqlite_version,
        "sparkq_version": "0.3.0",
    }
    if checksums:
        manifest["checksums"] = {f: sha256(d / f) for f in files}
    manifest.update(extra or {})
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


def make_21_bundle(backup_dir: Path, name: str, work: Path, *, extra_prompts: int = 5,
                   checksums: bool = False) -> Path:
    """An older 2.1 bundle: a live WAL-mode DB copied with its -wal (uncheckpointed rows in it)."""
    from sparkq import storage

    live = work / f"live-{name}" / "sparkq.db"
    storage.setup_database(live)
    conn = storage.connect(live)
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for i in range(extra_prompts):
            conn.execute("INSERT INTO prompts (id, command, label, template_text) VALUES (?, ?, ?, ?)",
                         (f"prm_wal{i}", f"wal-only-{i}", f"WAL {i}", "text"))
        assert (live.parent / "sparkq.db-wal").stat().st_size > 0
        d = backup_dir / name
        d.mkdir(parents=True)
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(live.parent / f"sparkq.db{suffix}", d / f"sparkq.db{suffix}")
        live_counts = storage.counts(conn)
    finally:
        conn.close()
    (d / "sparkq.yml").write_text("server:\n  port: 5005\n")
    (d / "config_export.json").write_text("[]\n")
    manifest = {
        "backup_version": "2.1",
        "created_at": name_time(name).isoformat(),
        "timestamp": name.split("_", 1)[1],
        "integrity_check": "ok",
        "database": {"path": str(live), "size": "220K"},
        "configuration_files": {"sparkq_yml": True, "env_file": True},  # .env listed, yet absent
        "counts": live_counts,
        "files": {
            "critical": ["sparkq.yml", ".env", "config_export.json"],
            "database": ["sparkq.db", "sparkq.db-wal", "sparkq.db-shm"],
        },
    }
    if checksums:
        manifest["checksums"] = {f: sha256(d / f) for f in ("sparkq.db", "sparkq.db-wal", "sparkq.yml")}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


def make_legacy(backup_dir: Path, when: datetime, db_src: Path, *, yml: bool = False) -> Path:
    backup_dir.mkdir(parents=True, exist_ok=True)
    path = backup_dir / f"sparkq_{stamp(when)}.db"
    shutil.copyfile(db_src, path)
    if yml:
        (backup_dir / f"sparkq_{stamp(when)}.yml").write_text("server:\n  port: 5005\n")
    return path


# --- fault and hostile-input checks -----------------------------------------------------------


def tree_state(path: Path) -> dict[str, str]:
    """Every entry under `path` (not following symlinks): file -> sha256, dir -> 'dir', link -> target."""
    out: dict[str, str] = {}
    if not os.path.lexists(path):
        return out
    for top, dirs, files in os.walk(path):
        base = Path(top)
        for name in dirs + files:
            p = base / name
            rel = p.relative_to(path).as_posix()
            if name.endswith(".lock"):
                continue  # lock files name their last holder: runtime state, not data
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = sha256(p)
    return out


def live_state(project: "Project") -> dict:
    """What a failed or refused command must leave alone: the live DB (and its -wal), sparkq.yml,
    .env, and every file in the backup dir."""
    state = {}
    for name, p in (("db", project.db), ("db-wal", project.db.with_name("sparkq.db-wal")),
                    ("yml", project.config), ("env", project.root / ".env")):
        state[name] = sha256(p) if p.is_file() else None
    if state["db-wal"] is not None and project.db.with_name("sparkq.db-wal").stat().st_size == 0:
        state["db-wal"] = None  # an empty WAL (left by a reader that was killed) holds nothing
    state["backups"] = tree_state(project.backup_dir)
    return state


def one_line_error(proc, *, codes=None) -> str:
    """The command failed (non-zero, or one of `codes`) with exactly one line on stderr, no traceback."""
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    if codes is not None:
        assert proc.returncode in codes, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sparkq: "), lines[0]
    return lines[0]


def wait_serving(proc: subprocess.Popen, url: str, log: Path, timeout: float = 30) -> None:
    """Wait until the server `proc` answers GET /health at `url` (the benchmarks' poll); if it
    exits first or never answers, fail with its log (stderr redirected to `log`)."""
    from bench.proc import BenchError, wait_healthy

    try:
        wait_healthy(f"{url}/health", timeout=timeout, proc=proc)
    except BenchError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text()[-2000:]}") from None


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def server_processes(project: "Project") -> list:
    """Live processes serving this project's port (by command line), zombies excluded."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "sparkq" in cmd and "--port" in cmd and str(project.port) in cmd \
                and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def descendants(pid: int, name: str | None = None) -> list:
    """`pid`'s live descendants (named `name`, if given). A child may exit between the listing and
    the look at its name: it is skipped, never raised, so a poll for a short-lived child is safe."""
    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            if name is None or child.name() == name:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def assert_no_server(project: "Project") -> None:
    assert not project.pidfile.exists(), project.pidfile.read_text()
    assert not server_processes(project)
    assert not listening(project.port)


def bundle_problems(bundle: Path) -> list[str]:
    """An independent check of a published bundle (not using supervisor code): the manifest parses,
    every file it lists exists with its checksum, and the DB passes PRAGMA integrity_check."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"manifest: {exc}"]
    problems = []
    for rel in manifest.get("files", []):
        if not (bundle / rel).is_file():
            problems.append(f"{rel} missing")
    for rel, digest in (manifest.get("checksums") or {}).items():
        if not (bundle / rel).is_file() or sha256(bundle / rel) != digest:
            problems.append(f"{rel} checksum mismatch")
    db = bundle / "sparkq.db"
    if db.is_file():
        conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro&immutable=1", uri=True)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            rows = [(str(exc),)]
        finally:
            conn.close()
        if rows != [("ok",)]:
            problems.append(f"integrity_check: {rows[:3]}")
    return problems


def grow_db(db: Path, megabytes: int) -> None:
    """Add about `megabytes` MB of random blobs to `db` (a `ballast` table), then checkpoint."""
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS ballast(id INTEGER PRIMARY KEY, b BLOB)")
    conn.execute("BEGIN")
    for _ in range(megabytes * 16):
        conn.execute("INSERT INTO ballast(b) VALUES (randomblob(65536))")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def fake_clock(monkeypatch, start, step=None) -> None:
    """Make supervisor.backup.create's clock return `start`, then `start + step`, and so on."""
    from datetime import timedelta

    from supervisor.backup import create

    state = {"t": start}
    step = timedelta(0) if step is None else step

    def now():
        t = state["t"]
        state["t"] = t + step
        return t

    monkeypatch.setattr(create, "_now", now)
