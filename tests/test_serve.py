"""`repobuild serve` and the cache policy, judged by raw HTTP and by the real clients.

One tree is built from the fixtures and served on port 0 in a thread. Raw requests (http.client
sends the path exactly as written) check the cache headers, byte ranges, validators, PEP 691
negotiation and that nothing outside the tree, hidden in it, or behind a symlink out of it is
ever answered. Then real apt (update, download, a resumed partial download) and real pip (a
fresh venv installing rbdemo-app and its dependency) use the server; the command line starts and
stops on SIGTERM and SIGINT; the `_headers` rules and the nginx configuration (with real nginx,
when installed) are checked against the same tree.
"""

from __future__ import annotations

import hashlib
import http.client
import io
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
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest

from repobuild.mirror import cachepolicy
from repobuild.mirror.cachepolicy import IMMUTABLE, MUTABLE, PEP691_JSON
from repobuild.mirror.serve import make_server
from tests.clients import (
    DEMO_KEYS,
    FIXTURES,
    REPO,
    have_apt,
    make_apt,
    make_venv,
    pip,
    repobuild,
)

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; "
              "q=0.1, text/html; q=0.01")
SECRET = b"outside the tree: must never be served\n"


@dataclass
class Tree:
    src: Path  # a private copy of fixtures/release (others may regenerate the committed one)
    out: Path
    secret: Path  # a file beside OUT


@dataclass
class Live:
    tree: Tree
    port: int
    log: io.StringIO

    def request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = tmp_path_factory.mktemp("serve")
    if not any(FIXTURES.rglob("*.deb")) or not any(FIXTURES.rglob("*.whl")):
        pytest.fail(f"{FIXTURES} holds no .deb or wheel: run python fixtures/make_release.py")
    src = shutil.copytree(FIXTURES, base / "release")
    out = base / "out"
    repobuild("build", src, "--out", out, "--keys", DEMO_KEYS, check=True)
    secret = base / "secret.txt"
    secret.write_bytes(SECRET)
    # Planted symlinks: out of the tree (a file and a folder), and into its hidden state.
    (out / "simple" / "evil").symlink_to(secret)
    (out / "escape").symlink_to(base, target_is_directory=True)
    (out / "state-link").symlink_to(out / ".repobuild" / "lock")
    return Tree(src, out, secret)


@pytest.fixture(scope="module")
def live(tree: Tree) -> Iterator[Live]:
    log = io.StringIO()
    httpd = make_server(tree.out, port=0, log=log)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield Live(tree, httpd.server_address[1], log)
    finally:
        httpd.shutdown()
        httpd.server_close()


def log_lines(live: Live, since: int, *needles: str) -> list[str]:
    """Access-log lines after the first ``since``, once each needle is in one (a line is
    written just after its response, so it may trail the client by a moment)."""
    deadline = time.monotonic() + 5
    while True:
        lines = live.log.getvalue().splitlines()[since:]
        if all(any(n in line for line in lines) for n in needles) or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def first_blob(out: Path, suffix: str) -> str:
    return next(p for p in sorted(out.glob(f"blobs/sha256/*/*/*{suffix}"))).relative_to(
        out).as_posix()


def fixture_deb(tree: Tree, name: str) -> Path:
    return next(tree.src.rglob(name))


# --- headers -------------------------------------------------------------------------------
def test_cache_and_content_headers(live: Live) -> None:
    out = live.tree.out
    deb = first_blob(out, "rbdemo-hello_1.1-1_amd64.deb")
    by_hash = next(out.glob("dists/stable/main/binary-amd64/by-hash/SHA256/*"))
    cases = {
        f"/{deb}": (IMMUTABLE, "application/vnd.debian.binary-package"),
        f"/{first_blob(out, '.whl.metadata')}": (IMMUTABLE, "text/plain"),
        "/" + by_hash.relative_to(out).as_posix(): (IMMUTABLE, "application/octet-stream"),
        "/dists/stable/InRelease": (MUTABLE, "text/plain; charset=utf-8"),
        "/dists/stable/main/binary-amd64/Packages.xz": (MUTABLE, "application/x-xz"),
        "/simple/rbdemo-lib/": (MUTABLE, "text/html; charset=utf-8"),
        "/index.json": (MUTABLE, "application/json"),
        "/index.json.asc": (MUTABLE, "application/pgp-signature"),
        "/": (MUTABLE, "text/html; charset=utf-8"),
    }
    for path, (cache, ctype) in cases.items():
        status, headers, body = live.request(path)
        assert status == 200, path
        assert headers["cache-control"] == cache, path
        assert headers["content-type"] == ctype, path
        assert headers["accept-ranges"] == "bytes"
        assert int(headers["content-length"]) == len(body)
    assert IMMUTABLE == "public, max-age=31536000, immutable"
    assert MUTABLE == "public, max-age=60, stale-while-revalidate=300, stale-if-error=86400"


def test_strong_etags_name_the_content(live: Live) -> None:
    out = live.tree.out
    whl = first_blob(out, "rbdemo_lib-1.0.0-py3-none-any.whl")
    hexdigest = whl.split("/")[3]
    assert hashlib.sha256((out / whl).read_bytes()).hexdigest() == hexdigest
    assert live.request(f"/{whl}")[1]["etag"] == f'"{hexdigest}"'
    meta = live.request(f"/{whl}.metadata")[1]["etag"]
    assert meta.startswith('"') and not meta.startswith("W/") and meta != f'"{hexdigest}"'
    by_hash = next(out.glob("dists/stable/main/binary-amd64/by-hash/SHA256/*"))
    etag = live.request("/" + by_hash.relative_to(out).as_posix())[1]["etag"]
    assert etag == f'"{by_hash.name}"'
    _, h1, _ = live.request("/index.json")
    _, h2, _ = live.request("/dists/stable/InRelease")
    assert h1["etag"].startswith('"') and h1["etag"] != h2["etag"]
    assert h1["last-modified"].endswith(" GMT")


# --- ranges and validators -----------------------------------------------------------------
def test_byte_ranges(live: Live) -> None:
    data = (live.tree.out / "index.json").read_bytes()
    size = len(data)
    for spec, (first, last) in {"0-9": (0, 9), "100-": (100, size - 1),
                                "-25": (size - 25, size - 1), f"10-{size + 50}": (10, size - 1)
                                }.items():
        status, headers, body = live.request("/index.json", headers={"Range": f"bytes={spec}"})
        assert status == 206, spec
        assert headers["content-range"] == f"bytes {first}-{last}/{size}", spec
        assert body == data[first:last + 1], spec
        assert int(headers["content-length"]) == last - first + 1
    for spec in (f"{size}-", f"{size + 10}-{size + 20}", "-0"):
        status, headers, body = live.request("/index.json", headers={"Range": f"bytes={spec}"})
        assert status == 416, spec
        assert headers["content-range"] == f"bytes */{size}"
    # Several ranges, a foreign unit, nonsense: the whole file.
    for value in ("bytes=0-1,5-9", "items=0-9", "bytes=9-2", "bytes=x-y"):
        status, _, body = live.request("/index.json", headers={"Range": value})
        assert (status, body) == (200, data), value


def test_if_range(live: Live) -> None:
    data = (live.tree.out / "index.json").read_bytes()
    _, headers, _ = live.request("/index.json")
    etag, modified = headers["etag"], headers["last-modified"]
    for validator in (etag, modified):
        status, _, body = live.request("/index.json",
                                       headers={"Range": "bytes=5-9", "If-Range": validator})
        assert (status, body) == (206, data[5:10]), validator
    stale = formatdate(time.time() - 86400 * 400, usegmt=True)
    for validator in ('"something-else"', f"W/{etag}", stale):
        status, _, body = live.request("/index.json",
                                       headers={"Range": "bytes=5-9", "If-Range": validator})
        assert (status, body) == (200, data), validator


def test_conditional_requests(live: Live) -> None:
    out = live.tree.out
    for path in ("/dists/stable/InRelease", "/" + first_blob(out, ".deb"), "/simple/"):
        _, headers, _ = live.request(path)
        etag, modified = headers["etag"], headers["last-modified"]
        for cond in ({"If-None-Match": etag}, {"If-None-Match": f'"x", W/{etag}'},
                     {"If-None-Match": "*"}, {"If-Modified-Since": modified}):
            status, got, body = live.request(path, headers=cond)
            assert (status, body) == (304, b""), (path, cond)
            assert got["etag"] == etag and got["cache-control"] == headers["cache-control"]
        past = formatdate(time.time() - 86400 * 400, usegmt=True)
        for cond in ({"If-None-Match": '"other"'}, {"If-Modified-Since": past},
                     {"If-None-Match": '"other"', "If-Modified-Since": modified}):
            status, _, body = live.request(path, headers=cond)
            assert status == 200 and body, (path, cond)


# --- PEP 691 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["/simple/", "/simple/rbdemo-lib/"])
def test_pep691_negotiation(live: Live, folder: str) -> None:
    disk = live.tree.out / folder.strip("/")
    for accept in (PIP_ACCEPT, PEP691_JSON, "application/vnd.pypi.simple.latest+json",
                   "text/html;q=0.5, application/vnd.pypi.simple.v1+json"):
        status, headers, body = live.request(folder, headers={"Accept": accept})
        assert status == 200
        assert headers["content-type"] == PEP691_JSON, accept
        assert headers["vary"] == "Accept"
        assert body == (disk / "index.json").read_bytes()
        assert json.loads(body)["meta"]["api-version"].startswith("1.")
    for html_accept in (None, "*/*", "text/html", "application/vnd.pypi.simple.v1+html",
                        "application/vnd.pypi.simple.v1+json;q=0.2, text/html;q=0.9",
                        "application/vnd.pypi.simple.v1+json;q=0, */*"):
        status, headers, body = live.request(
            folder, headers={"Accept": html_accept} if html_accept else {})
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8", html_accept
        assert headers["vary"] == "Accept"
        assert body == (disk / "index.html").read_bytes()


def test_folders_redirect_and_never_list(live: Live) -> None:
    status, headers, _ = live.request("/simple")
    assert status == 301 and headers["location"] == "./simple/"
    status, headers, _ = live.request("/simple/rbdemo-lib?x=1")
    assert status == 301 and headers["location"] == "./rbdemo-lib/?x=1"
    for path in ("/blobs/", "/dists/stable/", "/keys/", "/index.json/", "/nope", "/simple/nope/"):
        status, _, body = live.request(path)
        assert status == 404, path
        assert b"<a " not in body
    status, _, body = live.request("/")
    assert status == 200 and body == (live.tree.out / "index.html").read_bytes()


# --- nothing outside, nothing hidden ---------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/../secret.txt",
    "/../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/blobs/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/blobs/%2e%2e/%2e%2e/secret.txt",
    "/blobs/%2e%2e/index.json",
    "/simple/..%2f..%2fsecret.txt",
    "/simple%2findex.html",
    "/..%5csecret.txt",
    "/simple\\..\\index.json",
    "/index.json%00.html",
    "/%252e%252e/secret.txt",
    "/.repobuild/lock",
    "/.repobuild/",
    "/blobs/../.repobuild/lock",
    "/simple/evil",
    "/escape/secret.txt",
    "/state-link",
    "/%ff%fe",
    "http://127.0.0.1/../secret.txt",
])
def test_no_escape_and_no_hidden_file(live: Live, path: str) -> None:
    status, _, body = live.request(path)
    assert status in (400, 404), path
    assert SECRET not in body and b"{" not in body


def test_planted_files_exist(live: Live) -> None:
    """The refusals above refuse something that is there."""
    out = live.tree.out
    assert (out / "simple" / "evil").read_bytes() == SECRET
    assert (out / "escape" / "secret.txt").read_bytes() == SECRET
    assert (out / ".repobuild" / "lock").exists() and (out / "state-link").exists()


def test_head_and_methods(live: Live) -> None:
    path = "/" + first_blob(live.tree.out, "rbdemo-data_1.0~rc1+dfsg-2_all.deb")
    size = (live.tree.out / path.lstrip("/")).stat().st_size
    # Raw and pipelined on one connection (http.client would drop stray bytes): the HEAD's
    # headers are followed directly by the next response, not by a body.
    release = (live.tree.out / "dists/stable/Release").read_bytes()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                     + b"GET /dists/stable/Release HTTP/1.1\r\nHost: t\r\n"
                     b"Connection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head_part, _, rest = raw.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200 ")
    assert f"\r\nContent-Length: {size}\r\n".encode() in head_part + b"\r\n"
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:80]
    assert rest.partition(b"\r\n\r\n")[2] == release
    status, headers, body = live.request(path, method="HEAD", headers={"Range": "bytes=0-3"})
    assert status == 206 and headers["content-length"] == "4" and body == b""
    status, headers, _ = live.request("/index.json", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_access_log_one_line_per_request(live: Live) -> None:
    live.request("/dists/stable/InRelease?probe=log")
    live.request("/nope-for-the-log", method="HEAD")
    ok = '"GET /dists/stable/InRelease?probe=log HTTP/1.1" 200 '
    missing = '"HEAD /nope-for-the-log HTTP/1.1" 404 0 '
    lines = log_lines(live, 0, ok, missing)
    assert [line for line in lines if "probe=log" in line or "nope-for-the-log" in line] == [
        next(line for line in lines if ok in line), next(line for line in lines if missing in line)
    ]
    assert re.match(r"127\.0\.0\.1 - - \[[^]]+\] \"GET ", next(ln for ln in lines if ok in ln))


# --- real clients ------------------------------------------------------------------------------
@pytest.mark.skipif(not have_apt(), reason="apt-get not installed")
def test_apt_update_download_and_resume(live: Live, tmp_path: Path) -> None:
    out = live.tree.out
    apt = make_apt(tmp_path, f"http://127.0.0.1:{live.port}/", out / "keys" / "repo.gpg")
    before = len(live.log.getvalue().splitlines())
    proc = apt.update()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "W:" not in proc.stderr and "E:" not in proc.stderr, proc.stderr
    assert apt.versions("rbdemo-hello") == ["1.1-1", "1.0-1"]

    dl = tmp_path / "dl"
    proc = apt.download(dl, "rbdemo-hello")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = dl / "rbdemo-hello_1.1-1_amd64.deb"
    assert got.read_bytes() == fixture_deb(live.tree, "rbdemo-hello_1.1-1_amd64.deb").read_bytes()

    # A partial download left by an interrupted apt is resumed with Range + If-Range.
    blob = out / first_blob(out, "rbdemo-data_1.0~rc1+dfsg-2_all.deb")
    partial = apt.root / "cache/archives/partial" / "rbdemo-data_1.0~rc1+dfsg-2_all.deb"
    partial.write_bytes(blob.read_bytes()[:1500])
    os.utime(partial, (blob.stat().st_atime, blob.stat().st_mtime))
    proc = apt.run("apt-get", "install", "--download-only", "-y", "rbdemo-hello")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    archives = apt.root / "cache/archives"
    for name in ("rbdemo-data_1.0~rc1+dfsg-2_all.deb", "rbdemo-hello_1.1-1_amd64.deb"):
        assert (archives / name).read_bytes() == fixture_deb(live.tree, name).read_bytes()
    lines = log_lines(live, before, "/by-hash/SHA256/", '" 206 ')
    assert any("/by-hash/SHA256/" in line and '" 200 ' in line for line in lines), lines
    resumed = [line for line in lines if "rbdemo-data_" in line and '" 206 ' in line]
    assert resumed, lines
    assert resumed[-1].split('" 206 ')[1].split()[0] == str(blob.stat().st_size - 1500)


def test_pip_installs_through_pep691(live: Live, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    before = len(live.log.getvalue().splitlines())
    proc = pip(python, "install", "--index-url", f"http://127.0.0.1:{live.port}/simple/",
               "rbdemo-app")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rbdemo-app-0.2.0" in proc.stdout and "rbdemo-lib-1.0.0" in proc.stdout
    show = subprocess.run([str(python), "-m", "pip", "show", "rbdemo-lib"],
                          capture_output=True, text=True, check=True)
    assert "Version: 1.0.0" in show.stdout
    lines = log_lines(live, before, "/rbdemo_lib-1.0.0-py3-none-any.whl HTTP")
    # pip asked for JSON first and got it: the page it was sent has index.json's size.
    for name in ("rbdemo-app", "rbdemo-lib"):
        size = (live.tree.out / "simple" / name / "index.json").stat().st_size
        assert any(f'"GET /simple/{name}/ HTTP/1.1" 200 {size} ' in line for line in lines), \
            lines
    assert any(".whl.metadata HTTP/1.1\" 200" in line for line in lines)  # PEP 658


# --- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_answers_and_stops(tree: Tree, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "repobuild", "serve", str(tree.out), "--port", "0"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    stream = proc.stderr
    assert stream is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")),
                              daemon=True)
    reader.start()

    def wait_for(needle: str) -> str:
        deadline = time.monotonic() + 20
        while not any(needle in line for line in list(lines)):
            assert time.monotonic() < deadline and proc.poll() is None, ("".join(lines), needle)
            time.sleep(0.02)
        return next(line for line in list(lines) if needle in line)

    try:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", wait_for("http://127.0.0.1:"))
        assert match
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
        conn.request("GET", "/dists/stable/InRelease")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == (tree.out / "dists/stable/InRelease").read_bytes()
        conn.close()
        # The access line is written after the response: wait for it before stopping.
        wait_for('"GET /dists/stable/InRelease HTTP/1.1" 200')
        proc.send_signal(sig)
        proc.wait(timeout=10)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in err


def test_cli_serve_usage_errors(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "repobuild", "serve", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=30)

    proc = serve(str(tmp_path / "missing"), "--port", "0")
    assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = serve(str(tmp_path), "--port", str(port))
    assert proc.returncode == 2 and f":{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the same policy for other hosts -----------------------------------------------------------
def test_content_types() -> None:
    ct = cachepolicy.content_type
    assert ct("blobs/sha256/ab/x/a_1_amd64.deb") == "application/vnd.debian.binary-package"
    assert ct("blobs/sha256/ab/x/a-1-py3-none-any.whl") == "application/zip"
    assert ct("blobs/sha256/ab/x/a-1.tar.gz") == "application/gzip"
    assert ct("dists/stable/main/binary-amd64/Packages.xz") == "application/x-xz"
    assert ct("simple/index.json") == ct("simple/a/index.json") == PEP691_JSON
    assert ct("index.json") == "application/json"
    assert ct("simple/a/index.html") == "text/html; charset=utf-8"
    assert ct("index.json.asc") == "application/pgp-signature"
    for name in ("dists/stable/InRelease", "dists/stable/Release",
                 "dists/stable/main/binary-amd64/Packages"):
        assert ct(name) == "text/plain; charset=utf-8"
    assert ct("blobs/sha256/ab/x/a.whl.metadata") == "text/plain"
    assert ct("index.json.sig") == "text/plain"
    assert ct("in-toto/root.layout") == ct("in-toto/build.12345678.link") == "application/json"
    assert ct("blobs/sha256/ab/x/unknown.bin") == "application/octet-stream"
    cc = cachepolicy.cache_control
    assert cc("blobs/sha256/ab/x/a.deb") == cc("/blobs/x") == IMMUTABLE
    assert cc("dists/stable/main/binary-amd64/by-hash/SHA256/ab") == IMMUTABLE
    for rel in ("index.json", "index.json.asc", "index.json.sig", "dists/stable/InRelease",
                "dists/stable/Release.gpg", "dists/stable/main/binary-amd64/Packages.gz",
                "simple/index.html", "simple/a/index.json", "index.html", "keys/repo.gpg",
                "in-toto/root.layout", "blobsx/a", "by-hash"):
        assert cc(rel) == MUTABLE, rel


def _rule_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if p == "*" else "[^/]+" if p.startswith(":") else re.escape(p)
             for p in re.split(r"(\*|:[a-z]+)", pattern) if p]
    return re.compile("^" + "".join(parts) + "$")


def test_headers_file_covers_the_tree_once(tree: Tree) -> None:
    text = cachepolicy.render_headers_file().decode()
    assert "PEP 691" in text
    rules: list[tuple[re.Pattern[str], dict[str, str]]] = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln and not ln.startswith("#")]
        if lines:
            assert lines[0].startswith("/") and all(ln.startswith("  ") for ln in lines[1:])
            headers = dict(ln.strip().split(": ", 1) for ln in lines[1:])
            rules.append((_rule_regex(lines[0]), headers))
    urls = {"/": "", "/simple/": "simple/index.html",
            "/simple/rbdemo-lib/": "simple/rbdemo-lib/index.html"}
    for path in tree.out.rglob("*"):
        rel = path.relative_to(tree.out).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith(".repobuild/"):
            urls["/" + rel] = rel
    assert cachepolicy.render_headers_file(sorted(urls.values())) == text.encode()
    with pytest.raises(ValueError, match="/nginx.conf/x"):
        cachepolicy.render_headers_file(["index.json", "nginx.conf/x"])
    for url, rel in urls.items():
        for header, expected in (("Cache-Control", cachepolicy.cache_control(rel)),
                                 ("Content-Type", cachepolicy.content_type(rel))):
            values = [h[header] for rx, h in rules if header in h and rx.match(url)]
            assert len(values) <= 1, (url, header, values)
            if header == "Cache-Control":
                assert values == [expected], url
            elif values:
                assert values == [expected], url


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_nginx_config_with_real_nginx(tree: Tree, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "repobuild.conf"
    conf.write_bytes(cachepolicy.render_nginx_snippet(root=str(tree.out),
                                                      listen=f"127.0.0.1:{port}"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\nhttp {{\n"
        f"  access_log off;\n  client_body_temp_path {temp};\n  proxy_temp_path {temp};\n"
        f"  fastcgi_temp_path {temp};\n  uwsgi_temp_path {temp};\n  scgi_temp_path {temp};\n"
        f"  include {conf};\n}}\n"
    )
    check = subprocess.run(["nginx", "-t", "-c", str(main), "-p", str(tmp_path)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(["nginx", "-c", str(main), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ngx = Live(tree, port, io.StringIO())
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        for accept, name in ((PIP_ACCEPT, "index.json"), (PEP691_JSON, "index.json"),
                             ("text/html", "index.html"), (None, "index.html"),
                             ("application/vnd.pypi.simple.v1+json;q=0, text/html",
                              "index.html")):
            status, headers, body = ngx.request(
                "/simple/rbdemo-lib/", headers={"Accept": accept} if accept else {})
            assert status == 200, accept
            assert body == (tree.out / "simple/rbdemo-lib" / name).read_bytes(), accept
            assert headers["content-type"] == cachepolicy.content_type(
                f"simple/rbdemo-lib/{name}"), accept
            assert headers["vary"] == "Accept"
            assert headers["cache-control"] == MUTABLE
        deb = first_blob(tree.out, ".deb")
        by_hash = next(tree.out.glob("dists/stable/main/binary-amd64/by-hash/SHA256/*"))
        for rel in (deb, by_hash.relative_to(tree.out).as_posix(), "dists/stable/InRelease",
                    "dists/stable/Release.gpg", "index.json", "in-toto/root.layout",
                    first_blob(tree.out, ".metadata")):
            status, headers, _ = ngx.request("/" + rel)
            assert status == 200, rel
            assert headers["cache-control"] == cachepolicy.cache_control(rel), rel
            assert headers["content-type"] == cachepolicy.content_type(rel), rel
        for path in ("/.repobuild/lock", "/blobs/", "/simple/evil", "/escape/secret.txt",
                     "/state-link", "/%2e%2e/secret.txt"):
            status, _, body = ngx.request(path)
            assert status in (400, 403, 404), path
            assert SECRET not in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)
