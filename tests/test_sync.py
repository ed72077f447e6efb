"""`repobuild sync`: verified mirroring from several upstreams on 127.0.0.1.

A chaos drill (one upstream refusing connections, one serving tampered blobs, one healthy),
refusal of older, forked and expired indices with DEST unchanged, a sync killed part-way and
resumed by HTTP Range, a reader that never finds a listed file missing while a sync runs, a
no-op sync, and what becomes of files the publisher stops listing.

The source trees are built once for the module: ``v1`` (the fixture release, version 1) and
``v2`` (the same OUT rebuilt with 40 extra 2 MB random files, version 2).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repobuild.formats import manifest
from tests.clients import DEMO_KEYS, FIXTURES, REPO, http_server, repobuild, snapshot

TRUST = DEMO_KEYS / "trust.json"
PAYLOADS = 40
PAYLOAD_SIZE = 2 << 20


def build(source: Path, out: Path, **env: str) -> None:
    full = {"SOURCE_DATE_EPOCH": ""} | env
    proc = repobuild("build", source, "--out", out, "--keys", DEMO_KEYS, env=full)
    assert proc.returncode == 0, proc.stderr


def sync(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return repobuild("sync", *args, "--trust", TRUST, "--timeout", "5")


def verify(tree: Path) -> subprocess.CompletedProcess[str]:
    return repobuild("verify", tree, "--trust", TRUST)


def listed(tree: Path) -> dict[str, tuple[int, str]]:
    return manifest.parse((tree / "index.json").read_bytes()).listed()


def served(tree: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """A snapshot of everything but the local state folder."""
    return {k: v for k, v in snapshot(tree).items() if not k.startswith(".repobuild/")}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def missing_listed(tree: Path) -> list[str]:
    return [p for p in listed(tree) if not (tree / p).is_file()]


@dataclass
class Trees:
    v1: Path  # version 1: the fixture release
    v2: Path  # version 2: the same OUT with the payload files added


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trees]:
    base = tmp_path_factory.mktemp("up")
    source = shutil.copytree(FIXTURES, base / "src")
    out = base / "out"
    build(source, out)
    v1 = base / "v1"
    shutil.copytree(out, v1)
    for i in range(PAYLOADS):
        (source / "files" / f"payload-{i:02d}.bin").write_bytes(os.urandom(PAYLOAD_SIZE))
    build(source, out)
    assert manifest.parse((out / "index.json").read_bytes()).version == 2
    shutil.rmtree(source)
    yield Trees(v1, out)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _drop_copies(tmp_path: Path) -> Iterator[None]:
    """Mirrors of v2 weigh 80 MB each: gone once the test is over."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


# -- a. chaos drill ----------------------------------------------------------------------------
def test_chaos_drill(trees: Trees, tmp_path: Path) -> None:
    tampered = shutil.copytree(trees.v1, tmp_path / "tampered")
    index = manifest.parse((trees.v1 / "index.json").read_bytes())
    victims = [a["blob"] for a in index.artifacts]
    for blob in victims:  # every blob: whichever file is asked there first is caught
        flip_byte(tampered / blob)
    dest = tmp_path / "dest"
    seen_bad: list[str] = []
    checked = 0
    stop = threading.Event()

    def watcher() -> None:  # every blob visible in DEST must match its content address
        nonlocal checked
        while not stop.is_set():
            for path in list((dest / "blobs").rglob("*")) if (dest / "blobs").exists() else []:
                if path.is_file() and not path.name.endswith(".metadata"):
                    try:
                        digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    except FileNotFoundError:
                        continue
                    checked += 1
                    if digest != path.parent.name:
                        seen_bad.append(str(path))
            time.sleep(0.005)

    refused = f"http://127.0.0.1:{closed_port()}/"
    thread = threading.Thread(target=watcher, daemon=True)
    with http_server(tampered) as bad, http_server(trees.v1) as good:
        thread.start()
        proc = repobuild("sync", refused, bad.url, good.url, "--to", dest, "--trust", TRUST,
                         "--timeout", "5", "--json")
        stop.set()
        thread.join()
        bad_log, good_log = list(bad.log), list(good.log)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["version"] == 1 and report["upstream"] == bad.url
    ups = report["upstreams"]
    assert ups[refused]["errors"] >= 1 and ups[refused]["files"] == 0
    assert ups[bad.url]["errors"] >= 1, "the tampered upstream was caught"
    assert ups[good.url]["files"] >= 1
    assert report["fetched"] == sum(u["files"] for u in ups.values()) == len(listed(dest))
    assert any(p.startswith("/blobs/") for p in bad_log), "the tampered upstream was asked"
    assert not [p for p in bad_log + good_log if p.startswith("/.repobuild")]
    assert checked > 0, "the watcher saw blobs land"
    assert not seen_bad, seen_bad
    for blob in victims:
        assert hashlib.sha256((dest / blob).read_bytes()).hexdigest() == blob.split("/")[3]
    verified = verify(dest)
    assert verified.returncode == 0, verified.stderr
    assert not (dest / ".repobuild" / "partial").exists()


# -- b. rollback, fork, expiry -----------------------------------------------------------------
def test_refuses_older_index_and_leaves_dest_unchanged(trees: Trees, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert sync(trees.v2, "--to", dest).returncode == 0
    before = snapshot(dest)
    with http_server(trees.v1) as old:
        refused = sync(old.url, "--to", dest)
        assert not [p for p in old.log if p.startswith("/blobs/")], "nothing fetched"
    assert refused.returncode == 1, refused.stderr
    assert "version 1 is older than version 2" in refused.stderr, refused.stderr
    assert "rollback" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert snapshot(dest) == before
    # the rollback guard also holds when DEST's index.json is gone: sync.json remembers
    (dest / "index.json").unlink()
    assert sync(trees.v1, "--to", dest).returncode == 1
    assert not (dest / "index.json").exists()


def test_refuses_fork_and_expired_index(trees: Trees, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert sync(trees.v1, "--to", dest).returncode == 0
    before = snapshot(dest)
    again = sync(trees.v1, "--to", dest)  # the same bytes: a no-op
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in snapshot(dest).items() if k != ".repobuild/sync.json"} == {
        k: v for k, v in before.items() if k != ".repobuild/sync.json"}

    fork = tmp_path / "fork"  # another build, also version 1, with other bytes
    build(FIXTURES, fork, SOURCE_DATE_EPOCH=str(int(time.time()) - 3600))
    refused = sync(fork, "--to", dest)
    assert refused.returncode == 1
    assert "fork or a replay" in refused.stderr, refused.stderr
    assert {k: v for k, v in snapshot(dest).items() if k != ".repobuild/sync.json"} == {
        k: v for k, v in before.items() if k != ".repobuild/sync.json"}

    expired = tmp_path / "expired"
    build(FIXTURES, expired, SOURCE_DATE_EPOCH=str(int(time.time()) - 30 * 86400))
    pinned = snapshot(dest)
    refused = sync(expired, "--to", dest)
    assert refused.returncode == 1
    assert "expired at" in refused.stderr, refused.stderr
    assert snapshot(dest) == pinned
    fresh = tmp_path / "fresh-dest"
    refused = sync(expired, "--to", fresh)
    assert refused.returncode == 1 and "expired at" in refused.stderr, refused.stderr
    assert not fresh.exists(), "a refused first sync leaves no folder behind"


# -- c. SIGKILL part-way, then resume ----------------------------------------------------------
@dataclass
class RangeServer:
    url: str
    log: list[tuple[str, int]] = field(default_factory=list)  # (path, Range start or -1)
    done: list[str] = field(default_factory=list)  # bodies sent to the end
    sent: list[int] = field(default_factory=lambda: [0])  # body bytes sent


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` and a throttle, so a kill lands mid-transfer."""

    root: Path
    srv: RangeServer
    chunk = 128 * 1024
    chunk_delay = 0.0

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(match.group(1)) if match else 0
        self.srv.log.append((self.path, start if match else -1))
        path = self.root / rel
        if ".." in rel.split("/") or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        if start >= size > 0:
            self.send_error(416)
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                while data := fh.read(self.chunk):
                    self.wfile.write(data)
                    self.srv.sent[0] += len(data)
                    time.sleep(self.chunk_delay)
        except (BrokenPipeError, ConnectionResetError):
            return
        self.srv.done.append(self.path)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 drops SYNs of parallel clients: 1 s stalls


@contextmanager
def range_server(root: Path, chunk_delay: float = 0.0) -> Iterator[RangeServer]:
    httpd = _Server(("127.0.0.1", 0), _RangeHandler)
    srv = RangeServer(f"http://127.0.0.1:{httpd.server_address[1]}/")
    httpd.RequestHandlerClass = type(
        "H", (_RangeHandler,), {"root": root, "srv": srv, "chunk_delay": chunk_delay})
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()


def _payload_gets(paths: list[str]) -> list[str]:
    return [p for p in paths if p.startswith("/blobs/") and p.endswith(".bin")]


def test_killed_sync_leaves_dest_valid_and_resumes(trees: Trees, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert sync(trees.v1, "--to", dest).returncode == 0
    before = served(dest)
    partial = dest / ".repobuild" / "partial"
    sizes = {d: s for s, d in listed(trees.v2).values()}

    def cut_mid_file() -> bool:
        try:
            return any(0 < p.stat().st_size < sizes.get(p.name, 0) for p in partial.iterdir())
        except OSError:
            return False

    with range_server(trees.v2, chunk_delay=0.01) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "repobuild", "sync", srv.url, "--to", str(dest),
             "--trust", str(TRUST), "--workers", "2"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not (
                len(_payload_gets(srv.done)) >= 8 and cut_mid_file()):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "killed while it ran"
        first_done = set(_payload_gets(srv.done))
        assert 8 <= len(first_done) < PAYLOADS, len(first_done)

        # DEST is still the old, complete version 1
        assert served(dest) == before
        assert not missing_listed(dest)
        verified = verify(dest)
        assert verified.returncode == 0, verified.stderr
        assert json.loads((dest / "index.json").read_bytes())["version"] == 1

        srv.log.clear()
        sent_before = srv.sent[0]
        rerun = repobuild("sync", srv.url, "--to", dest, "--trust", TRUST, "--json")
        assert rerun.returncode == 0, rerun.stderr
        again = list(srv.log)
        sent_rerun = srv.sent[0] - sent_before
    full_gets = {p for p, start in again if start < 0}
    resumed = [(p, start) for p, start in again if start > 0]
    assert not full_gets & first_done, "a blob already downloaded was fetched again"
    assert resumed, "the download cut by the kill resumed with a Range request"
    report = json.loads(rerun.stdout)
    signed = sum((trees.v2 / n).stat().st_size for n in os.listdir(trees.v2)
                 if n.startswith("index.json"))
    assert report["bytes"] == sent_rerun - signed, "bytes: the listed files received"
    left = PAYLOADS - len(first_done)
    assert sent_rerun < left * PAYLOAD_SIZE + (1 << 20), (sent_rerun, left)
    verified = verify(dest)
    assert verified.returncode == 0, verified.stderr
    assert listed(dest) == listed(trees.v2)
    assert not partial.exists()


def test_bad_partial_file_is_fetched_again(trees: Trees, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    index = manifest.parse((trees.v1 / "index.json").read_bytes())
    art = max(index.artifacts, key=lambda a: a["size"])
    data = (trees.v1 / art["blob"]).read_bytes()
    partial = dest / ".repobuild" / "partial"
    partial.mkdir(parents=True)
    (partial / art["sha256"]).write_bytes(b"\0" + data[1: len(data) // 2])  # not its prefix
    with range_server(trees.v1) as srv:
        proc = repobuild("sync", srv.url, "--to", dest, "--trust", TRUST, "--json")
        asked = [start for p, start in srv.log if p == "/" + art["blob"]]
    assert proc.returncode == 0, proc.stderr
    assert asked == [len(data) // 2, -1], asked  # resumed, caught, fetched whole
    assert (dest / art["blob"]).read_bytes() == data
    assert verify(dest).returncode == 0


# -- d. a reader during a sync -----------------------------------------------------------------
def test_reader_never_sees_a_missing_file(trees: Trees, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert sync(trees.v1, "--to", dest).returncode == 0
    problems: list[str] = []
    versions: set[int] = set()
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            index = manifest.parse((dest / "index.json").read_bytes())
            versions.add(index.version)
            for path in index.listed():
                if not (dest / path).exists():
                    problems.append(f"v{index.version}: {path}")
            reads += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with range_server(trees.v2) as srv:
        proc = repobuild("sync", srv.url, "--to", dest, "--trust", TRUST)
    time.sleep(0.05)
    stop.set()
    thread.join()
    assert proc.returncode == 0, proc.stderr
    assert reads > 3 and versions == {1, 2}, (reads, versions)
    assert not problems, problems[:5]
    assert listed(dest) == listed(trees.v2)


# -- no-op -------------------------------------------------------------------------------------
def test_noop_sync_fetches_and_reads_nothing(trees: Trees, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert sync(trees.v1, "--to", dest).returncode == 0
    before = served(dest)
    with http_server(trees.v1) as srv:
        proc = repobuild("sync", srv.url, "--to", dest, "--trust", TRUST, "--json")
        log = list(srv.log)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["noop"] and report["fetched"] == 0 and report["bytes"] == 0
    assert report["skipped"] == len(listed(dest))
    assert set(log) <= {"/index.json", "/index.json.asc", "/index.json.sig",
                        "/index.json.sigstore.json", "/index.json.keyless.sigstore.json"}, log
    assert served(dest) == before


# -- the quick no-op: DEST's own index.json again ------------------------------------------------
def test_quick_noop_still_repairs_a_deleted_or_truncated_file(trees: Trees, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with http_server(trees.v1) as srv:
        assert sync(srv.url, "--to", dest).returncode == 0
        state = json.loads((dest / ".repobuild" / "sync.json").read_bytes())
        assert state["quick"]["index_sha256"] == state["index_sha256"]
        assert (dest / ".repobuild" / "sync-listing.json").is_file()
        index = manifest.parse((dest / "index.json").read_bytes())
        blob = max(index.artifacts, key=lambda a: a["size"])["blob"]
        page = "simple/index.html"
        (dest / blob).unlink()
        with open(dest / page, "r+b") as fh:
            fh.truncate(index.files[page].size // 2)
        srv.log.clear()
        proc = repobuild("sync", srv.url, "--to", dest, "--trust", TRUST, "--json")
        log = [urllib.parse.unquote(p) for p in srv.log]
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert not report["noop"] and report["fetched"] == 2, report
    assert "/" + blob in log and "/" + page in log, log
    for rel in (blob, page):
        assert (dest / rel).read_bytes() == (trees.v1 / rel).read_bytes()
    verified = verify(dest)
    assert verified.returncode == 0, verified.stderr


def test_quick_noop_checks_signatures_expiry_and_new_files(
        trees: Trees, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime, timedelta

    import repobuild.verify
    from repobuild.mirror import sync as mirror
    from repobuild.trust import load_trust

    policy = load_trust(TRUST)
    dest = tmp_path / "dest"
    up = [str(trees.v1)]
    # the folders' digest is kept at once (the guard against changes within one timestamp
    # tick would skip it on a file system with 1 s or 2 s times)
    monkeypatch.setattr(mirror, "_fs_now", lambda tree: time.time_ns() + 10**12)
    assert mirror.sync(up, dest, policy).ok
    state = json.loads((dest / ".repobuild" / "sync.json").read_bytes())
    assert state["quick"]["dirs"], "digest recorded"
    changed = os.lstat(dest).st_ctime_ns
    assert mirror._dirs_digest(str(dest), [""], changed) is None, "racy: not recorded"
    assert mirror._dirs_digest(str(dest), [""], changed + 1) is not None
    checked: list[str] = []
    real_check = repobuild.verify.check_index

    def counting_check(*args: object, **kwargs: object) -> object:
        checked.append("check_index")
        return real_check(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(repobuild.verify, "check_index", counting_check)
    quiet = mirror.sync(up, dest, policy)
    assert quiet.ok and quiet.noop and quiet.skipped == len(listed(dest)), quiet
    assert checked == [], "the same index.json: no second parse"
    before = served(dest)

    # a file dropped into DEST changes its folder: the sync walks and finds it
    folder = dest / next(p for p in listed(dest) if p.startswith("blobs/")).rsplit("/", 1)[0]
    stray = folder / "stray.txt"
    stray.write_text("not listed\n")
    kept = mirror.sync(up, dest, policy)
    assert kept.ok and kept.noop and kept.in_grace == 1 and stray.exists(), kept
    gone = mirror.sync(up, dest, policy, keep_unlisted=False)
    assert gone.ok and gone.removed == 1 and not stray.exists(), gone
    assert checked == [] and served(dest) == before

    # expired since the last sync: refused the ordinary way, DEST untouched
    late = mirror.sync(up, dest, policy, now=datetime.now(UTC) + timedelta(days=400))
    assert not late.ok and any("expired at" in f for f in late.failures), late.failures
    assert checked == ["check_index"] and served(dest) == before

    # the signatures are checked every time: the same index.json with a bad one is refused
    bad = shutil.copytree(trees.v1, tmp_path / "bad-sig")
    flip_byte(bad / "index.json.sig", 20)
    refused = mirror.sync([str(bad)], dest, policy)
    assert not refused.ok and any("index.json" in f for f in refused.failures), refused
    assert checked == ["check_index"] * 2 and served(dest) == before

    # without its listing (deleted, say) the sync goes the ordinary way and writes it again
    (dest / ".repobuild" / "sync-listing.json").unlink()
    again = mirror.sync(up, dest, policy)
    assert again.ok and again.noop and checked == ["check_index"] * 3, again
    assert (dest / ".repobuild" / "sync-listing.json").is_file()
    assert served(dest) == before


# -- files the publisher stops listing ---------------------------------------------------------
def test_unlisted_files_go_at_once_or_after_the_grace_period(tmp_path: Path) -> None:
    source = shutil.copytree(FIXTURES, tmp_path / "src")
    up = tmp_path / "up"
    build(source, up)
    plain, keeping = tmp_path / "plain", tmp_path / "keeping"
    assert sync(up, "--to", plain, "--delete-unlisted").returncode == 0
    assert sync(up, "--to", keeping).returncode == 0
    wheel = next((source / "python").glob("rbdemo_cli-*"))
    old_blob = next(a["blob"] for a in manifest.parse((up / "index.json").read_bytes()).artifacts
                    if a["path"].endswith(wheel.name))
    wheel.unlink()  # the project's pages leave the index; its blob stays listed, retired
    build(source, up)
    gone = {"simple/rbdemo-cli/index.html", "simple/rbdemo-cli/index.json"}
    assert not gone & set(listed(up)) and old_blob in listed(up)

    done = sync(up, "--to", plain, "--json", "--delete-unlisted")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"] == len(gone)
    assert not any((plain / p).exists() for p in gone), "deleted once index.json landed"
    assert (plain / old_blob).exists(), "the publisher still lists the retired blob"
    assert verify(plain).returncode == 0

    assert sync(up, "--to", keeping).returncode == 0  # the default: a 7-day grace period
    assert all((keeping / p).exists() for p in gone), "kept for the grace period"
    verified = repobuild("verify", keeping, "--trust", TRUST, "--json")
    assert verified.returncode == 0, verified.stderr
    assert set(json.loads(verified.stdout)["grace"]) == gone
    assert sync(up, "--to", keeping, "--grace-days", "0").returncode == 0
    assert not any((keeping / p).exists() for p in gone)
    assert verify(keeping).returncode == 0


def test_dest_is_locked_while_a_sync_runs(trees: Trees, tmp_path: Path) -> None:
    import fcntl

    dest = tmp_path / "dest"
    (dest / ".repobuild").mkdir(parents=True)
    with open(dest / ".repobuild" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = sync(trees.v1, "--to", dest)
    assert proc.returncode == 2, proc.stderr
    assert "another repobuild process" in proc.stderr and "Traceback" not in proc.stderr
    assert not (dest / "index.json").exists()


# -- bench/sync_bench.py keeps working (like tests/test_bench_smoke.py for the other scripts) --
def test_sync_bench_smoke(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sync_bench.py"), "60", "--avg-kb", "4",
         "--no-sync", "--timeout", "120", "--work", str(tmp_path), "--results", str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = {line.split("|")[1].strip(): line for line in results.read_text().splitlines()
            if line.startswith("| repobuild sync")}
    assert set(rows) == {"repobuild sync, full (empty MIRROR)",
                         "repobuild sync, no-op (upstream unchanged)",
                         "repobuild sync, repair (1 blob deleted, 1 page cut)"}, rows
    assert "noop=True" in rows["repobuild sync, no-op (upstream unchanged)"]
    assert "fetched 2 files" in rows["repobuild sync, repair (1 blob deleted, 1 page cut)"]
    assert not (tmp_path / "sync-bench-n60").exists()  # removed without --keep
