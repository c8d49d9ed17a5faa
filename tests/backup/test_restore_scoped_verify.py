"""Scopes verify only what they restore (issue 12 item 5), and a restored sparkq.yml that binds a
wildcard host is called out in the plan (issue 12 item 9, restore part).

The bundle is built from the facts in ORIGINAL.md: the original SparkQ names bundles by local
time, writes a "2.1" manifest, makes every file 0644; when the database is damaged, the
multi-line `integrity_check` goes raw into the manifest, which is then not valid JSON, while
sparkq.yml and .env beside it are intact.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime

import pytest

from helpers import live_state, ok, one_line_error
from supervisor import config
from supervisor.backup import restore
from supervisor.errors import SparkqError

ORIGINAL_YML = """server:
  host: {host}
  port: {port}
database:
  path: sparkq/data/sparkq.db
purge:
  older_than_days: 3
"""
ORIGINAL_ENV = "SPARKQ_TOKEN=from-the-original\n"


def _damaged_original_bundle(project, seed_db, host: str = "0.0.0.0") -> str:
    name = "sparkq_" + datetime.now().strftime("%Y%m%d_%H%M%S")  # local time, as the original
    bundle = project.backup_dir / name
    bundle.mkdir(parents=True)
    data = bytearray(seed_db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for off in range(page, len(data), page):  # every page after the first: the schema survives
        data[off:off + 64] = b"\xde\xad\xbe\xef" * 16
    (bundle / "sparkq.db").write_bytes(bytes(data))
    (bundle / "sparkq.yml").write_text(ORIGINAL_YML.format(host=host, port=project.port))
    (bundle / ".env").write_text(ORIGINAL_ENV)
    (bundle / "config_export.json").write_bytes(b"")  # an empty table: 0 bytes
    check = "*** in database main ***\nPage 2: btreeInitPage() returns error code 11\nPage 3: free space corruption"
    # The original writes the multi-line string raw: the result is not JSON.
    (bundle / "manifest.json").write_text(
        '{\n  "backup_version": "2.1",\n'
        f'  "created_at": "{datetime.now().astimezone().isoformat()}",\n'
        f'  "integrity_check": "{check}",\n'
        '  "configuration_files": {"sparkq_yml": true, "env_file": true},\n'
        '  "files": {"critical_config": ["sparkq.yml", ".env"], "database": ["sparkq.db"]}\n}\n'
    )
    for path in bundle.iterdir():
        os.chmod(path, 0o644)
    os.chmod(bundle, 0o755)
    return name


@pytest.fixture
def damaged(project, seed_db):
    ok(project.cli("setup"))
    name = _damaged_original_bundle(project, seed_db)
    return project, name


@pytest.mark.parametrize("scope", [["--config-only"], ["--only", "env"], ["--only", "yml"]])
def test_config_scopes_restore_from_a_bundle_with_a_damaged_database(damaged, scope):
    project, name = damaged
    db_before = project.db.read_bytes()
    out = ok(project.cli("backup-restore", name, *scope, "--yes"))
    assert "not checked: the manifest (manifest.json is not valid JSON" in out.stdout
    assert "the database (this restore does not touch it)" in out.stdout
    if scope != ["--only", "yml"]:
        assert (project.root / ".env").read_text() == ORIGINAL_ENV
        assert (project.root / ".env").stat().st_mode & 0o777 == 0o600
    if scope != ["--only", "env"]:
        assert "purge:" in project.config.read_text()
    assert project.db.read_bytes() == db_before
    assert "from-the-original" not in out.stdout + out.stderr  # never a .env value


@pytest.mark.parametrize("scope", [[], ["--db-only"]])
def test_scopes_with_the_database_still_refuse_it(damaged, scope):
    project, name = damaged
    before = live_state(project)
    line = one_line_error(project.cli("backup-restore", name, *scope, "--yes"), codes={5})
    assert "failed verification" in line
    assert live_state(project) == before


def test_a_changed_member_is_still_caught_by_its_checksum(project):
    """Scoped verification still compares the members it restores with their checksums."""
    ok(project.cli("setup"))
    ok(project.cli("backup"))
    bundle = next(project.backup_dir.glob("sparkq_2*"))
    os.chmod(bundle / ".env", 0o600)
    (bundle / ".env").write_text("TAMPERED=1\n")
    line = one_line_error(project.cli("backup-restore", "1", "--only", "env", "--yes"), codes={5})
    assert ".env: checksum mismatch" in line


@pytest.mark.parametrize("host", ["0.0.0.0", "'::'", "''"])
def test_plan_warns_about_a_wildcard_host_before_asking(project, seed_db, host):
    from supervisor.setup import run_setup

    run_setup(config.load(lenient=True))
    name = _damaged_original_bundle(project, seed_db, host=host)
    yml_before = project.config.read_bytes()
    plans = []
    with pytest.raises(SparkqError, match="cancelled"):
        restore.restore_backup(config.load(lenient=True), name, scope="config",
                               confirm=lambda plan: plans.append(plan) or False)
    text = plans[0].text()
    shown = host.strip("'")
    assert f"WARNING: the backup's sparkq.yml binds server.host {shown!r}" in text
    assert "reachable from other machines" in text
    assert text.index("WARNING") < text.index("Before that")
    assert project.config.read_bytes() == yml_before


def test_no_warning_for_a_loopback_host(project, seed_db):
    ok(project.cli("setup"))
    name = _damaged_original_bundle(project, seed_db, host="127.0.0.1")
    out = ok(project.cli("backup-restore", name, "--only", "yml", "--yes"))
    assert "WARNING" not in out.stdout
    shutil.rmtree(project.backup_dir / name)
