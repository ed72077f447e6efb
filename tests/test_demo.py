"""`make demo`'s script builds and verifies the demo repository (CI also runs `make demo`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clients import REPO


def test_demo_script_builds_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), sys.executable, str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout
    assert "INSECURE demo keys" in proc.stderr
    assert (out / "index.json").is_file() and (out / "dists/stable/InRelease").is_file()
    assert "pip install --index-url" in proc.stdout
