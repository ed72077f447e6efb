"""`repobuild probe`: a healthy, a stale (older version), a tampered, a down and an expired
mirror."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

from repobuild.formats import manifest
from tests.clients import DEMO_KEYS, FIXTURES, http_server, repobuild

TRUST = DEMO_KEYS / "trust.json"


def _build(source: Path, out: Path, epoch: str = "") -> None:
    proc = repobuild("build", source, "--out", out, "--keys", DEMO_KEYS,
                     env={"SOURCE_DATE_EPOCH": epoch})
    assert proc.returncode == 0, proc.stderr


def test_probe_reports_healthy_stale_tampered_and_down(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(FIXTURES, source)
    current = tmp_path / "current"
    _build(source, current)
    stale = tmp_path / "stale"
    shutil.copytree(current, stale)
    (source / "files" / "new.txt").write_text("v2\n")
    _build(source, current)  # version 2; stale still serves version 1
    tampered = tmp_path / "tampered"
    shutil.copytree(current, tampered)
    index = manifest.parse((current / "index.json").read_bytes())
    for art in index.artifacts:  # every blob changed, so any sample catches it
        path = tampered / art["blob"]
        path.write_bytes(b"X" + path.read_bytes()[1:])
    expired = tmp_path / "expired"  # validly signed, expired 23 days ago
    _build(FIXTURES, expired, str(int(time.time()) - 30 * 86400))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with http_server(current) as good, http_server(stale) as old, \
            http_server(tampered) as bad, http_server(expired) as late:
        proc = repobuild("probe", good.url, old.url, bad.url, down, late.url, "--trust", TRUST,
                         "--json", "--timeout", "3")
        plain = repobuild("probe", good.url, "--trust", TRUST)
    assert plain.returncode == 0, plain.stderr
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    report = {r["url"]: r for r in json.loads(proc.stdout)}
    g, o, b, d, e = (report[u] for u in (good.url, old.url, bad.url, down, late.url))
    assert g["healthy"] and g["version"] == 2 and g["lag"] == 0 and g["signature_ok"]
    assert g["sampled"] == 3 and g["sample_ok"] and g["expired"] is False
    assert g["latency_ms"] is not None
    assert not o["healthy"] and o["version"] == 1 and o["lag"] == 1 and o["signature_ok"]
    assert any("behind" in p for p in o["problems"])
    assert not b["healthy"] and b["signature_ok"] and not b["sample_ok"]
    assert not d["healthy"] and not d["reachable"] and d["version"] is None
    assert f"{down}index.json" in proc.stderr
    assert not e["healthy"] and e["signature_ok"] and e["expired"] is True
    assert any("expired at" in p for p in e["problems"])
