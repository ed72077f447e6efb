"""`repobuild sync`: verified mirroring from several upstreams on 127.0.0.1.

A chaos drill (one upstream refusing connections, one serving a tampered blob, one healthy),
refusal of older and expired indices with DEST unchanged, a sync killed part-way, and a reader
that never finds a listed file missing while a sync runs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from repobuild.formats import manifest
from tests.clients import DEMO_KEYS, FIXTURES, REPO, http_server, repobuild, snapshot

TRUST = DEMO_KEYS / "trust.json"


def build(source: Path, out: Path, **env: str) -> None:
    proc = repobuild("build", source, "--out", out, "--keys", DEMO_KEYS, env=env)
    assert proc.returncode == 0, proc.stderr


def sync(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return repobuild("sync", *args, "--trust", TRUST, "--timeout", "5")


def listed(tree: Path) -> dict[str, tuple[int, str]]:
    return manifest.parse((tree / "index.json").read_bytes()).listed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("up") / "out"
    build(FIXTURES, out)
    return out


def test_chaos_drill(upstream: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(upstream, tampered, ignore=shutil.ignore_patterns(".repobuild"))
    index = manifest.parse((upstream / "index.json").read_bytes())
    victims = [a["blob"] for a in index.artifacts]
    for blob in victims:
        flip_byte(tampered / blob)
    dest = tmp_path / "dest"
    seen_bad: list[str] = []
    stop = threading.Event()

    def watcher() -> None:  # every blob visible in DEST must match its content address
        while not stop.is_set():
            for path in (dest / "blobs").rglob("*") if (dest / "blobs").exists() else []:
                if path.is_file() and not path.name.endswith(".metadata"):
                    try:
                        digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    except FileNotFoundError:
                        continue
                    if digest != path.parent.name:
                        seen_bad.append(str(path))
            time.sleep(0.005)

    thread = threading.Thread(target=watcher, daemon=True)
    with http_server(tampered) as bad, http_server(upstream) as good:
        thread.start()
        proc = repobuild("sync", f"http://127.0.0.1:{closed_port()}/", bad.url, good.url,
                         "--to", dest, "--trust", TRUST, "--timeout", "5", "--json")
        stop.set()
        thread.join()
        assert any(p.startswith("/blobs/") for p in bad.log), "the tampered upstream was asked"
    assert proc.returncode == 0, proc.stderr
    assert not seen_bad, seen_bad
    for blob in victims:
        assert hashlib.sha256((dest / blob).read_bytes()).hexdigest() == blob.split("/")[3]
    verified = repobuild("verify", dest, "--trust", TRUST)
    assert verified.returncode == 0, verified.stderr
    assert not (dest / ".repobuild" / "partial").exists()


def test_refuses_older_and_expired_index(upstream: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(FIXTURES, source)
    v1 = tmp_path / "v1"
    build(source, v1)
    old = tmp_path / "old"
    shutil.copytree(v1, old)
    (source / "files" / "new.txt").write_text("new\n")
    build(source, v1)  # v1 is now version 2
    dest = tmp_path / "dest"
    assert sync(v1, "--to", dest).returncode == 0
    before = snapshot(dest)
    refused = sync(old, "--to", dest)
    assert refused.returncode == 1
    assert "older than version 2" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert snapshot(dest) == before

    expired = tmp_path / "expired"
    build(FIXTURES, expired, SOURCE_DATE_EPOCH=str(int(time.time()) - 30 * 86400))
    refused = sync(expired, "--to", dest)
    assert refused.returncode == 1
    assert "expired at" in refused.stderr, refused.stderr
    assert snapshot(dest) == before
    fresh = tmp_path / "fresh-dest"
    assert sync(expired, "--to", fresh).returncode == 1
    assert not fresh.exists(), "a refused first sync leaves no folder behind"


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    delay = 0.0
    log_sink: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self.log_sink.append(self.path)
        time.sleep(self.delay)
        super().do_GET()


@contextmanager
def slow_server(root: Path, delay: float) -> Iterator[tuple[str, list[str]]]:
    log: list[str] = []
    handler = type("H", (_SlowHandler,), {"delay": delay, "log_sink": log})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", log
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def big_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("big")
    source = base / "src"
    shutil.copytree(FIXTURES, source)
    for i in range(40):
        (source / "files" / f"payload-{i:02d}.bin").write_bytes(os.urandom(1 << 20))
    out = base / "out"
    build(source, out)
    yield out
    shutil.rmtree(base, ignore_errors=True)


def _blob_gets(log: list[str]) -> list[str]:
    return [p for p in log if p.startswith("/blobs/") and not p.endswith(".metadata")]


def test_killed_sync_leaves_dest_valid_and_resumes(
    upstream: Path, big_upstream: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    assert sync(upstream, "--to", dest).returncode == 0  # DEST holds the small tree
    before = snapshot(dest)
    with slow_server(big_upstream, 0.05) as (url, log):
        proc = subprocess.Popen(
            [sys.executable, "-m", "repobuild", "sync", url, "--to", str(dest),
             "--trust", str(TRUST), "--workers", "2"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(_blob_gets(log)) < 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first_gets = set(_blob_gets(log))
        assert 15 <= len(first_gets) < 50, len(first_gets)
        after_kill = snapshot(dest)
        assert {k: v for k, v in after_kill.items() if not k.startswith(".repobuild/")} == {
            k: v for k, v in before.items() if not k.startswith(".repobuild/")}
        verified = repobuild("verify", dest, "--trust", TRUST)
        assert verified.returncode == 0, verified.stderr
        log.clear()
        rerun = repobuild("sync", url, "--to", dest, "--trust", TRUST, "--json")
        assert rerun.returncode == 0, rerun.stderr
        again = set(_blob_gets(log))
    # complete partial downloads are not fetched again (at most the ones cut mid-transfer)
    assert len(first_gets & again) <= 2, sorted(first_gets & again)
    verified = repobuild("verify", dest, "--trust", TRUST)
    assert verified.returncode == 0, verified.stderr
    assert listed(dest) == listed(big_upstream)


def test_reader_never_sees_a_missing_file(upstream: Path, big_upstream: Path,
                                          tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert sync(upstream, "--to", dest).returncode == 0
    problems: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            index = manifest.parse((dest / "index.json").read_bytes())
            for path in index.listed():
                if not (dest / path).exists():
                    problems.append(path)
            reads += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with slow_server(big_upstream, 0.0) as (url, _log):
        proc = repobuild("sync", url, "--to", dest, "--trust", TRUST)
    stop.set()
    thread.join()
    assert proc.returncode == 0, proc.stderr
    assert reads > 3
    assert not problems, problems[:5]
    assert listed(dest) == listed(big_upstream)


def test_noop_sync_fetches_nothing(upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert sync(upstream, "--to", dest).returncode == 0
    with http_server(upstream) as srv:
        proc = repobuild("sync", srv.url, "--to", dest, "--trust", TRUST, "--json")
        assert proc.returncode == 0, proc.stderr
        assert '"noop": true' in proc.stdout
        assert not [p for p in srv.log if p.startswith("/blobs/")]


def test_unlisted_files_stay_for_the_grace_period(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(FIXTURES, source)
    up = tmp_path / "up"
    build(source, up)
    dest = tmp_path / "dest"
    assert sync(up, "--to", dest).returncode == 0
    for wheel in (source / "python").glob("rbdemo_cli-*"):
        wheel.unlink()  # the project's pages leave the index
    build(source, up)
    gone = {"simple/rbdemo-cli/index.html", "simple/rbdemo-cli/index.json"}
    assert not gone & set(listed(up))
    assert sync(up, "--to", dest).returncode == 0
    assert all((dest / p).exists() for p in gone), "kept for the grace period"
    verified = repobuild("verify", dest, "--trust", TRUST, "--json")
    assert verified.returncode == 0, verified.stderr
    assert set(json.loads(verified.stdout)["grace"]) == gone
    assert sync(up, "--to", dest, "--grace-days", "0").returncode == 0
    assert not any((dest / p).exists() for p in gone)
    assert repobuild("verify", dest, "--trust", TRUST).returncode == 0
