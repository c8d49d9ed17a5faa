"""supervisor.backup.catalog: every backup shape is listed, ordered, resolved and shown, never a crash.

Fixtures are built by hand (not with create.py), one builder per shape; the builders live in
tests/helpers.py, shared with test_verify.py and the hostile-input tests.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from sparkq import storage
from supervisor import config
from supervisor.backup import catalog, dbfiles, listing
from supervisor.errors import BackupNotFound, UsageError, VerificationFailed

from helpers import BUNDLE_SECRET as SECRET
from helpers import T0, make_21_bundle, make_bundle, make_legacy, no_traceback, stamp


# --- helpers --------------------------------------------------------------------------------


def settings():
    return config.load(lenient=True)


def names(entries) -> list[str]:
    return [e["name"] if isinstance(e, dict) else e.name for e in entries]


# --- listing --------------------------------------------------------------------------------


def test_listing_cache_follows_every_change(project, seed_db):
    bd = project.backup_dir
    for hours in range(3):
        make_bundle(bd, f"sparkq_{stamp(T0 + timedelta(hours=hours))}", seed_db)
    first = listing.list_backups(settings()).to_dict()
    cache = settings().paths.listing_cache
    assert cache.is_file() and oct(cache.stat().st_mode & 0o777) == "0o600"
    assert listing.list_backups(settings()).to_dict() == first  # answered from the cache

    newest = bd / first["backups"][0]["name"] / "manifest.json"
    manifest = json.loads(newest.read_text())
    manifest["counts"]["prompts"] = 99
    manifest["integrity_check"] = "row 7 missing from index"  # a longer file, a new inode
    newest.unlink()
    newest.write_text(json.dumps(manifest))
    shutil.rmtree(bd / first["backups"][2]["name"])
    (bd / first["backups"][1]["name"] / "manifest.json").write_text("{broken")
    listed = listing.list_backups(settings()).to_dict()["backups"]
    assert [b["counts"].get("prompts") for b in listed[:1]] == [99]
    assert listed[0]["integrity_check"] == "row 7 missing from index"
    assert listed[1]["damaged"] and "not valid JSON" in listed[1]["damaged"]
    assert len(listed) == 2

    cache.write_text(json.dumps({"dir": "/elsewhere", "entries": {listed[0]["name"]: [[0, 0, 0], {}, None]}}))
    assert listing.list_backups(settings()).to_dict()["backups"] == listed  # another dir's cache is ignored
    cache.write_text("not json")
    assert listing.list_backups(settings()).to_dict()["backups"] == listed


def test_lists_every_shape_newest_first(project, seed_db, tmp_path):
    bd = project.backup_dir
    make_legacy(bd, T0, seed_db, yml=True)
    make_legacy(bd, T0 + timedelta(hours=1), seed_db)
    make_21_bundle(bd, f"sparkq_{stamp(T0 + timedelta(hours=2))}", tmp_path)
    make_bundle(bd, f"sparkq_{stamp(T0 + timedelta(hours=3))}", seed_db, yml=False, trigger="start")
    damaged = bd / f"sparkq_{stamp(T0 + timedelta(hours=4))}"
    make_bundle(bd, damaged.name, seed_db)
    (damaged / "manifest.json").unlink()
    make_bundle(bd, f"sparkq_preRestore_{stamp(T0 + timedelta(hours=5))}", seed_db, trigger="pre-restore")
    # noise that must be ignored
    (bd / ".tmp-sparkq_20251203_200000").mkdir()
    (bd / ".hidden").write_text("x")
    (bd / "backup.lock").write_text("")
    (bd / "notes.txt").write_text("x")
    (bd / "sparkq_garbage").mkdir()
    (bd / f"sparkq_{stamp(T0)}.db-wal").write_text("")

    before = sorted(os.listdir(bd))
    data = listing.list_backups(settings()).to_dict()
    assert sorted(os.listdir(bd)) == before, "listing must not write beside backups"
    assert listing.list_backups(settings()).to_dict() == data, "the cached listing differs"

    rows = data["backups"]
    assert names(rows) == [damaged.name, f"sparkq_{stamp(T0 + timedelta(hours=3))}",
                           f"sparkq_{stamp(T0 + timedelta(hours=2))}",
                           f"sparkq_{stamp(T0 + timedelta(hours=1))}.db", f"sparkq_{stamp(T0)}.db"]
    assert [r["number"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["format"] for r in rows] == ["bundle", "bundle", "bundle", "legacy", "legacy"]
    dmg, new, old21, leg_noyml, leg_yml = rows
    assert dmg["damaged"] == "manifest.json is missing" and dmg["counts"]["prompts"] == 33
    assert dmg["created_at"] == (T0 + timedelta(hours=4)).isoformat()
    assert new["damaged"] is None and new["config_file"] is False and new["trigger"] == "start"
    assert new["counts"]["prompts"] == 33 and new["integrity_check"] == "ok"
    assert new["db_size"] == seed_db.stat().st_size
    assert old21["counts"]["prompts"] == 38 and old21["config_file"] is True and old21["damaged"] is None
    assert leg_yml["config_file"] is True and leg_noyml["config_file"] is False
    assert leg_yml["counts"]["prompts"] == 33 and leg_yml["integrity_check"] == "ok"
    assert all(isinstance(r["db_size"], int) and r["db_size"] > 0 for r in rows)
    assert [(r["name"], r["number"]) for r in data["pre_restore"]] == \
        [(f"sparkq_preRestore_{stamp(T0 + timedelta(hours=5))}", None)]

    text = listing.list_backups(settings()).text()
    assert "Pre-restore" in text and "DAMAGED" in text and "legacy" in text
    assert text.index("sparkq_preRestore_") > text.index(f"sparkq_{stamp(T0)}.db")


def test_no_backups_found(project):
    assert listing.list_backups(settings()).text() == "No backups found"  # no backup dir at all
    project.backup_dir.mkdir(parents=True)
    result = listing.list_backups(settings())
    assert result.to_dict() == {"backups": [], "pre_restore": []}
    proc = project.cli("backup-list")
    assert proc.returncode == 0 and "No backups found" in proc.stdout
    no_traceback(proc)


def test_cli_backup_list_json(project, seed_db, tmp_path):
    bd = project.backup_dir
    make_bundle(bd, f"sparkq_{stamp(T0)}", seed_db)
    make_21_bundle(bd, f"sparkq_{stamp(T0 + timedelta(minutes=1))}", tmp_path)
    make_legacy(bd, T0 - timedelta(days=1), seed_db, yml=True)
    broken = make_bundle(bd, f"sparkq_{stamp(T0 + timedelta(minutes=2))}", seed_db)
    (broken / "manifest.json").write_text("{not json")
    make_bundle(bd, f"sparkq_preRestore_{stamp(T0)}", seed_db)
    proc = project.cli("backup-list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["number"] for r in data["backups"]] == [1, 2, 3, 4]
    assert data["backups"][0]["damaged"].startswith("manifest.json is not valid JSON")
    assert data["backups"][3]["format"] == "legacy" and data["backups"][3]["config_file"] is True
    assert set(data["backups"][1]) >= {"number", "name", "format", "created_at", "db_size", "config_file",
                                       "counts", "integrity_check", "damaged", "trigger"}
    assert data["pre_restore"][0]["number"] is None
    text = project.cli("backup-list")
    assert text.returncode == 0 and f"sparkq_{stamp(T0)}" in text.stdout
    no_traceback(text)


# --- ordering -------------------------------------------------------------------------------


def test_order_manifest_time_wins_over_name(project, seed_db):
    bd = project.backup_dir
    # Named earlier but created later (a clock fix): the manifest decides.
    make_bundle(bd, f"sparkq_{stamp(T0)}", seed_db, created_at=T0 + timedelta(hours=2))
    make_bundle(bd, f"sparkq_{stamp(T0 + timedelta(hours=1))}", seed_db)
    # No manifest: the name's timestamp places it.
    dmg = make_bundle(bd, f"sparkq_{stamp(T0 + timedelta(minutes=90))}", seed_db)
    (dmg / "manifest.json").unlink()
    regular, _ = catalog.scan(bd)
    assert names(regular) == [f"sparkq_{stamp(T0)}", dmg.name, f"sparkq_{stamp(T0 + timedelta(hours=1))}"]
    assert regular[0].created_at == T0 + timedelta(hours=2)


def test_same_second_bundles_order_by_suffix(project, seed_db):
    bd = project.backup_dir
    base = f"sparkq_{stamp(T0)}"
    for suffix in ("", "_1", "_2", "_10"):  # same second, second-precision created_at
        make_bundle(bd, base + suffix, seed_db, created_at=T0)
    make_legacy(bd, T0 - timedelta(seconds=1), seed_db)
    regular, _ = catalog.scan(bd)
    assert names(regular) == [base + "_10", base + "_2", base + "_1", base, f"sparkq_{stamp(T0 - timedelta(seconds=1))}.db"]
    assert [e.number for e in regular] == [1, 2, 3, 4, 5]


def test_unparsable_name_time_falls_back_to_mtime(project, seed_db):
    bd = project.backup_dir
    odd = make_bundle(bd, "sparkq_20251399_999999", seed_db, created_at=T0)
    (odd / "manifest.json").unlink()
    os.utime(odd, (T0.timestamp() + 60, T0.timestamp() + 60))
    make_bundle(bd, f"sparkq_{stamp(T0)}", seed_db)
    regular, _ = catalog.scan(bd)
    assert names(regular) == ["sparkq_20251399_999999", f"sparkq_{stamp(T0)}"]
    assert regular[0].created_at == T0 + timedelta(minutes=1)


def test_pre_restore_listed_apart_and_never_numbered(project, seed_db):
    bd = project.backup_dir
    make_bundle(bd, f"sparkq_preRestore_{stamp(T0)}", seed_db)
    make_bundle(bd, f"sparkq_preRestore_{stamp(T0)}_1", seed_db)
    make_bundle(bd, f"sparkq_{stamp(T0 - timedelta(days=1))}", seed_db)
    regular, pre = catalog.scan(bd)
    assert names(regular) == [f"sparkq_{stamp(T0 - timedelta(days=1))}"]
    assert names(pre) == [f"sparkq_preRestore_{stamp(T0)}_1", f"sparkq_preRestore_{stamp(T0)}"]
    assert all(e.number is None and e.kind == "pre_restore" for e in pre)


# --- damaged manifests --------------------------------------------------------------------------


def _bad_json(m):
    m.write_text('{"backup_version": "2.0", "created_at": ')


def _not_object(m):
    m.write_text("[1, 2, 3]")


def _huge(m):
    with open(m, "wb") as fh:
        fh.write(b'{"backup_version": "2.0", "pad": "')
        fh.truncate(50 << 20)  # 50 MB, sparse


def _wrong_counts(m):
    data = json.loads(m.read_text())
    data["counts"] = ["prompts", 33]
    m.write_text(json.dumps(data))


def _wrong_config_file(m):
    data = json.loads(m.read_text())
    data["config_file"] = "yes"
    data["checksums"] = {"sparkq.db": 12}
    m.write_text(json.dumps(data))


def _escaping_checksum(m):
    data = json.loads(m.read_text())
    data["checksums"]["../../etc/passwd"] = "0" * 64
    m.write_text(json.dumps(data))


def _no_version(m):
    data = json.loads(m.read_text())
    del data["backup_version"]
    m.write_text(json.dumps(data))


def _deep(m):
    m.write_text("[" * 200_000 + "]" * 200_000)


def _binary(m):
    m.write_bytes(b"\xff\xfe\x00garbage")


def _symlink(m):
    m.unlink()
    m.symlink_to("/etc/hostname")


def _directory(m):
    m.unlink()
    m.mkdir()


def _fifo(m):
    m.unlink()
    os.mkfifo(m)


@pytest.mark.parametrize("damage, reason", [
    (_bad_json, "not valid JSON"), (_not_object, "not a JSON object"), (_huge, "too large"),
    (_wrong_counts, "'counts'"), (_wrong_config_file, "'config_file'"), (_escaping_checksum, "outside"),
    (_no_version, "backup_version"), (_deep, "nested too deeply"), (_binary, "UTF-8"),
    (_symlink, "symlink"), (_directory, "not a regular file"), (_fifo, "not a regular file"),
], ids=lambda v: getattr(v, "__name__", "")[:20])
def test_damaged_manifest_is_listed_not_fatal(project, seed_db, damage, reason):
    bd = project.backup_dir
    good = make_bundle(bd, f"sparkq_{stamp(T0)}", seed_db)
    bad = make_bundle(bd, f"sparkq_{stamp(T0 - timedelta(hours=1))}", seed_db)
    damage(bad / "manifest.json")
    result = listing.list_backups(settings())
    data = result.to_dict()["backups"]
    assert names(data) == [good.name, bad.name]
    entry = data[1]
    assert entry["damaged"] and reason in entry["damaged"], entry["damaged"]
    assert entry["created_at"] == (T0 - timedelta(hours=1)).isoformat()  # from the name
    assert entry["counts"]["prompts"] == 33  # read from the DB, which opens
    assert entry["db_size"] == seed_db.stat().st_size
    assert "DAMAGED" in result.text()
    shown = listing.show_backup(settings(), "2").to_dict()
    assert shown["damaged"] == entry["damaged"]
    assert "sparkq.db" in [f["path"] for f in shown["files"]]


# --- legacy files ---------------------------------------------------------------------------


def test_legacy_files_read_and_damaged_ones_do_not_crash(project, seed_db):
    bd = project.backup_dir
    good = make_legacy(bd, T0, seed_db, yml=True)
    truncated = make_legacy(bd, T0 - timedelta(hours=1), seed_db)
    with open(truncated, "r+b") as fh:
        fh.truncate(3000)
    text_file = bd / f"sparkq_{stamp(T0 - timedelta(hours=2))}.db"
    text_file.write_text("this is not a database\n")
    empty = bd / f"sparkq_{stamp(T0 - timedelta(hours=3))}.db"
    empty.write_bytes(b"")
    before = sorted(os.listdir(bd))
    regular, _ = catalog.scan(bd)
    assert names(regular) == [good.name, truncated.name, text_file.name, empty.name]
    e = regular[0]
    assert e.format == "legacy" and e.db_file == good and e.legacy_yml == bd / f"sparkq_{stamp(T0)}.yml"
    assert e.member("sparkq.yml") == e.legacy_yml and e.member("config_export.json") is None
    assert e.config_file_included and e.counts["prompts"] == 33 and e.integrity_check == "ok"
    for bad in regular[1:3]:
        assert bad.counts == {} and bad.integrity_check.startswith("unreadable: "), bad.integrity_check
    assert regular[3].counts in ({}, {k: 0 for k in storage.counts(sqlite3.connect(":memory:"))})
    assert listing.list_backups(settings()).text()
    assert sorted(os.listdir(bd)) == before


# --- resolving references -----------------------------------------------------------------------


@pytest.fixture
def some_backups(project, seed_db):
    bd = project.backup_dir
    make_bundle(bd, f"sparkq_{stamp(T0)}", seed_db)
    make_bundle(bd, f"sparkq_{stamp(T0)}_1", seed_db, created_at=T0)
    make_legacy(bd, T0 - timedelta(days=1), seed_db)
    make_bundle(bd, f"sparkq_preRestore_{stamp(T0)}", seed_db)
    return bd


def test_resolve_numbers_and_names(some_backups):
    s = settings()
    assert catalog.resolve(s, "1").name == f"sparkq_{stamp(T0)}_1"
    assert catalog.resolve(s, "2").name == f"sparkq_{stamp(T0)}"
    legacy = f"sparkq_{stamp(T0 - timedelta(days=1))}"
    assert catalog.resolve(s, "3").name == legacy + ".db"
    assert catalog.resolve(s, legacy).name == legacy + ".db"
    assert catalog.resolve(s, legacy + ".db").format == "legacy"
    assert catalog.resolve(s, f"sparkq_{stamp(T0)}").number == 2
    pre = catalog.resolve(s, f"sparkq_preRestore_{stamp(T0)}")
    assert pre.kind == "pre_restore" and pre.number is None


HOSTILE = [("0", 2), ("-1", 2), ("999", 4), ("abc", 4), ("1.5", 2), ("", 2), ("../x", 2),
           ("/etc/passwd", 2), ("a/b", 2), ("..", 2), (".hidden", 2), ("x\\y", 2), ("1e3", 2),
           ("sparkq_20251203_143022.yml", 4), ("9" * 5000, 4)]


@pytest.mark.parametrize("ref, code", HOSTILE, ids=[r[:12] or "empty" for r, _ in HOSTILE])
def test_hostile_refs_domain(some_backups, ref, code):
    with pytest.raises((UsageError, BackupNotFound)) as info:
        catalog.resolve(settings(), ref)
    assert info.value.exit_code == code
    message = str(info.value)
    assert "\n" not in message
    if code == 4 and ref.isdigit() and len(ref) < 10:
        assert message == f"no backup {ref}; see ./sparkq.sh backup-list"
    if code == 2:
        assert "backup" in message


def test_hostile_refs_cli(project, some_backups):
    cases = [(r, c) for r, c in HOSTILE if len(r) < 100]
    with ThreadPoolExecutor(3) as pool:  # "--" so that "-1" reaches us instead of option parsing
        procs = list(pool.map(lambda case: project.cli("backup-show", "--", case[0]), cases))
    for (ref, code), proc in zip(cases, procs):
        assert proc.returncode == code, (ref, proc.returncode, proc.stderr)
        no_traceback(proc)
        assert len(proc.stderr.strip().splitlines()) == 1, (ref, proc.stderr)
    missing = procs[[r for r, _ in cases].index("999")]
    assert "no backup 999; see ./sparkq.sh backup-list" in missing.stderr


# --- members and symlinks ------------------------------------------------------------------------


def test_member_refuses_symlinks_and_escapes(project, seed_db, tmp_path):
    bd = project.backup_dir
    d = make_bundle(bd, f"sparkq_{stamp(T0)}", seed_db)
    outside = tmp_path / "outside.db"
    shutil.copyfile(seed_db, outside)
    (d / "sparkq.db").unlink()
    (d / "sparkq.db").symlink_to(outside)
    (d / "setup_templates" / "sparkq.yml.example").unlink()
    os.symlink(tmp_path, d / "linkdir")
    entry = catalog.resolve(settings(), "1")
    with pytest.raises(VerificationFailed, match=r"sparkq\.db is a symlink; refusing"):
        entry.member("sparkq.db")
    with pytest.raises(VerificationFailed, match="symlink"):
        _ = entry.db_file
    with pytest.raises(VerificationFailed, match="symlink"):
        entry.member("linkdir/outside.db")
    for escape in ("../x", "/etc/passwd", "a/../../x", "", "..\\x"):
        with pytest.raises(VerificationFailed):
            entry.member(escape)
    with pytest.raises(VerificationFailed, match="not a regular file"):
        entry.member("setup_templates")
    assert entry.member("setup_templates/sparkq.yml.example") is None
    assert entry.member("nope.json") is None
    assert entry.member("sparkq.yml") == d / "sparkq.yml"
    # Listing still works, and shows the link without following it.
    assert listing.list_backups(settings()).to_dict()["backups"][0]["name"] == d.name
    files = {f["path"]: f for f in listing.show_backup(settings(), "1").to_dict()["files"]}
    assert files["sparkq.db"]["symlink"] is True and files["linkdir"]["symlink"] is True
    assert "linkdir/outside.db" not in files


def test_symlinked_bundle_dir_is_damaged_and_not_followed(project, seed_db, tmp_path):
    elsewhere = make_bundle(tmp_path / "elsewhere", "real", seed_db, created_at=T0)
    project.backup_dir.mkdir(parents=True)
    (project.backup_dir / f"sparkq_{stamp(T0)}").symlink_to(elsewhere)
    entry = catalog.resolve(settings(), "1")
    assert "symlink" in entry.damaged and entry.manifest is None and entry.counts == {}
    assert not entry.config_file_included and entry.db_size == 0
    with pytest.raises(VerificationFailed, match="symlink"):
        entry.member("manifest.json")
    assert listing.show_backup(settings(), "1").to_dict()["files"] == []


# --- backup-show --------------------------------------------------------------------------------


def test_show_bundle_lists_files_and_never_env_content(project, seed_db):
    d = make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    result = listing.show_backup(settings(), "1")
    data = result.to_dict()
    assert data["name"] == d.name and data["format"] == "bundle" and data["damaged"] is None
    assert data["manifest"] == json.loads((d / "manifest.json").read_text())
    sizes = {f["path"]: f["size"] for f in data["files"]}
    assert sizes[".env"] == len(SECRET) + 1 and sizes["sparkq.db"] == seed_db.stat().st_size
    assert "setup_templates/sparkq.yml.example" in sizes and "manifest.json" in sizes
    text = result.text()
    assert json.dumps(data["manifest"], indent=2) in text
    assert ".env" in text and SECRET not in text and SECRET not in json.dumps(data)
    proc = project.cli("backup-show", d.name, "--json")
    assert proc.returncode == 0 and SECRET not in proc.stdout
    assert json.loads(proc.stdout)["manifest"]["backup_version"] == "2.0"


def test_show_legacy_and_21(project, seed_db, tmp_path):
    bd = project.backup_dir
    legacy = make_legacy(bd, T0 - timedelta(days=1), seed_db, yml=True)
    make_21_bundle(bd, f"sparkq_{stamp(T0)}", tmp_path)
    data = listing.show_backup(settings(), legacy.stem).to_dict()
    assert data["format"] == "legacy" and data["manifest"] is None
    assert data["size"] == seed_db.stat().st_size and data["counts"]["prompts"] == 33
    assert data["created_at"] == (T0 - timedelta(days=1)).isoformat()
    assert [f["path"] for f in data["files"]] == [legacy.name, legacy.stem + ".yml"]
    assert "Legacy" in listing.show_backup(settings(), "2").text()
    old = listing.show_backup(settings(), "1")
    assert old.to_dict()["manifest"]["backup_version"] == "2.1"
    assert {"sparkq.db", "sparkq.db-wal"} <= {f["path"] for f in old.to_dict()["files"]}


def test_show_missing_cli_exit_4(project, seed_db):
    make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    proc = project.cli("backup-show", "7")
    assert proc.returncode == 4 and "no backup 7; see ./sparkq.sh backup-list" in proc.stderr
    no_traceback(proc)


# --- 2.1 bundles and listing cost -------------------------------------------------------------


def test_21_bundle_reads_real_files_and_folds_wal(project, tmp_path):
    d = make_21_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", tmp_path, extra_prompts=4)
    entry = catalog.resolve(settings(), "1")
    assert entry.damaged is None and entry.wal_file == d / "sparkq.db-wal"
    assert entry.config_file_included is True and entry.counts["prompts"] == 37
    assert entry.member(".env") is None  # listed by that writer, but never there
    with dbfiles.open_backup_db(entry.db_file) as conn:
        alone = conn.execute("SELECT count(*) FROM prompts").fetchone()[0]
    with dbfiles.open_backup_db(entry.db_file, entry.wal_file) as conn:
        folded = conn.execute("SELECT count(*) FROM prompts").fetchone()[0]
    assert (alone, folded) == (33, 37)
    assert sorted(os.listdir(d)) == sorted(["sparkq.db", "sparkq.db-wal", "sparkq.db-shm", "sparkq.yml",
                                            "config_export.json", "manifest.json"])


def test_list_reads_manifests_only(project, seed_db, tmp_path, monkeypatch):
    make_bundle(project.backup_dir, f"sparkq_{stamp(T0)}", seed_db)
    make_21_bundle(project.backup_dir, f"sparkq_{stamp(T0 - timedelta(hours=1))}", tmp_path)

    def refuse(*a, **k):
        raise AssertionError("listing opened a database of a bundle with a good manifest")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    result = listing.list_backups(settings())
    assert len(result.to_dict()["backups"]) == 2 and result.text()


def test_list_of_many_bundles_is_fast(tmp_path):
    import time

    bd = tmp_path / "backups"
    bd.mkdir()
    manifest = json.loads(json.dumps({
        "backup_version": "2.0", "integrity_check": "ok", "database": {"path": "/x", "size": "1K", "bytes": 1024},
        "config_file": True, "counts": {"prompts": 33, "config_entries": 5},
        "files": ["sparkq.db", "manifest.json"], "checksums": {"sparkq.db": "a" * 64}, "trigger": "start",
    }))
    for i in range(1000):
        when = T0 + timedelta(minutes=i)
        (bd / f"sparkq_{stamp(when)}").mkdir()
        (bd / f"sparkq_{stamp(when)}" / "manifest.json").write_text(
            json.dumps({**manifest, "created_at": when.isoformat()}))
    start = time.perf_counter()
    regular, _ = catalog.scan(bd)
    shown = listing.BackupList(bd, regular, [])
    shown.text(), json.dumps(shown.to_dict())
    elapsed = time.perf_counter() - start
    assert len(regular) == 1000 and regular[0].name == f"sparkq_{stamp(T0 + timedelta(minutes=999))}"
    assert elapsed < 1.5, f"listing 1000 bundles took {elapsed:.2f}s"
