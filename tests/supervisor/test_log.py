"""The supervisor's logging (supervisor/log.py), in a fresh interpreter: what it imports matters."""

from __future__ import annotations

import json
import subprocess
import sys


def test_logging_loads_structlog_without_rich_and_still_renders_errors(tmp_path):
    """rich and pygments (typer's, for help) cost every logging command about 50 ms; structlog
    must not load them, the JSON log must still carry a traceback, and rich must still import
    afterwards for typer."""
    log_file = tmp_path / "supervisor.log"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor import log\n"
        f"log.setup(Path({str(log_file)!r}), console=False)\n"
        "log.get().info('one_event', key=1)\n"
        "try:\n    raise ValueError('boom')\nexcept ValueError:\n    log.get().error('failed', exc_info=True)\n"
        "print('LOADED', [m for m in ('rich', 'pygments') if m in sys.modules])\n"
        "import rich.console\n"
        "print('RICH', rich.console.Console is not None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout
    assert "RICH True" in proc.stdout
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [e["event"] for e in events] == ["one_event", "failed"]
    assert events[0]["key"] == 1
    assert "ValueError" in json.dumps(events[1]["exception"])
