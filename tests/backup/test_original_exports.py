"""The original SparkQ's exports: one object per line inside [...], and a 0-byte file for an
empty table. backup-export reads both, and backup-verify agrees with it (issue 12 item 3)."""

from __future__ import annotations

import json

from helpers import no_traceback
from original import make_original_bundle


def test_a_zero_byte_export_reads_as_an_empty_list(project):
    bundle = make_original_bundle(project.backup_dir, "20251120_091500", empty_tables=("config", "tools"))
    assert (bundle / "config_export.json").stat().st_size == 0
    for kind in ("config", "tools"):
        proc = project.cli("backup-export", kind, "1")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == []
    proc = project.cli("backup-export", "prompts", "1")  # one object per line inside [...]
    assert proc.returncode == 0, proc.stderr
    assert [p["command"] for p in json.loads(proc.stdout)] == ["legacy-review"]
    verify = project.cli("backup-verify", "1")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_unreadable_export_fails_export_and_verify_alike(project):
    bundle = make_original_bundle(project.backup_dir, "20251120_091500")
    (bundle / "config_export.json").write_text('[{"namespace": "ui", ')
    export = project.cli("backup-export", "config", "1")
    verify = project.cli("backup-verify", "1")
    assert export.returncode == verify.returncode == 5, (export.stderr, verify.stdout)
    assert "config_export.json" in export.stderr and "config_export.json" in verify.stdout
    no_traceback(export)
    no_traceback(verify)
