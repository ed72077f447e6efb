"""Drive the real clients (apt-get, pip, gpgv, an HTTP server) isolated from this machine's own
configuration, as ../shared/CLIENTS.md describes."""

from __future__ import annotations

import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "release"
DEMO_KEYS = REPO / "keys.example"
SHARED = REPO.parent / "shared"
INTEROP = SHARED / "fixtures" / "interop"


def repobuild(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real command line (``python -m repobuild``) and capture its output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "repobuild", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=REPO, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"repobuild {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# -- HTTP ----------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    port: int
    log: list[str] = field(default_factory=list)  # request paths, in order


class _Handler(http.server.SimpleHTTPRequestHandler):
    log_sink: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self.log_sink.append(self.path)
        super().do_GET()


@contextmanager
def http_server(root: Path) -> Iterator[Server]:
    """``python -m http.server`` equivalent on 127.0.0.1 with a request log."""
    log: list[str] = []
    handler = type("H", (_Handler,), {"log_sink": log})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(root))
    )
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{port}/", port, log)
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- apt -----------------------------------------------------------------------------------
@dataclass
class Apt:
    root: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["APT_CONFIG"] = str(self.root / "apt.conf")
        return env

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        tool = args[0]
        cmd = [tool, "-o", "APT::Sandbox::User=root", *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=cwd,
                              timeout=300)

    def update(self) -> subprocess.CompletedProcess[str]:
        return self.run("apt-get", "update")

    def policy(self, *names: str) -> str:
        return self.run("apt-cache", "policy", *names).stdout

    def versions(self, name: str) -> list[str]:
        """Versions apt-cache madison lists for a package."""
        out = self.run("apt-cache", "madison", name).stdout
        return [line.split("|")[1].strip() for line in out.splitlines() if "|" in line]

    def download(self, dest: Path, *specs: str) -> subprocess.CompletedProcess[str]:
        dest.mkdir(parents=True, exist_ok=True)
        return self.run("apt-get", "download", *specs, cwd=dest)


def make_apt(tmp: Path, uri: str, signed_by: Path, *, arch: str = "amd64",
             suite: str = "stable", components: str = "main") -> Apt:
    """An apt configuration and state folder of its own, never the machine's."""
    a = tmp / "apt"
    for sub in ("etc/apt.conf.d", "etc/sources.list.d", "etc/preferences.d",
                "etc/trusted.gpg.d", "state/lists/partial", "cache/archives/partial", "log"):
        (a / sub).mkdir(parents=True, exist_ok=True)
    (a / "status").touch()
    (a / "apt.conf").write_text(
        f'Dir::Etc "{a}/etc/"; Dir::Etc::Parts "{a}/etc/apt.conf.d"; '
        f'Dir::Etc::Main "{a}/etc/apt.conf";\n'
        f'Dir::Etc::SourceList "{a}/etc/sources.list"; '
        f'Dir::Etc::SourceParts "{a}/etc/sources.list.d";\n'
        f'Dir::Etc::Trusted "{a}/etc/trusted.gpg"; '
        f'Dir::Etc::TrustedParts "{a}/etc/trusted.gpg.d";\n'
        f'Dir::State "{a}/state"; Dir::State::status "{a}/status"; Dir::Cache "{a}/cache"; '
        f'Dir::Log "{a}/log";\n'
        f'Debug::NoLocking "true"; APT::Architecture "{arch}"; '
        f'APT::Architectures {{ "{arch}"; }};\n'
    )
    (a / "etc/sources.list.d/repo.sources").write_text(
        f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: {components}\n"
        f"Signed-By: {signed_by}\n"
    )
    return Apt(a)


def have_apt() -> bool:
    return shutil.which("apt-get") is not None


# -- pip -----------------------------------------------------------------------------------
def pip_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        env.pop(key, None)
    env.update(PIP_CONFIG_FILE="/dev/null", PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def make_venv(path: Path) -> Path:
    """A fresh virtual environment; returns its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                          env=pip_env(), timeout=300)


# -- gpgv ----------------------------------------------------------------------------------
def gpgv(keyring: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gpgv", "--keyring", str(keyring), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


# -- trees ---------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """path -> (inode, size, mtime_ns, bytes) of every file, to prove a tree unchanged."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[path.relative_to(root).as_posix()] = (
                st.st_ino, st.st_size, st.st_mtime_ns, path.read_bytes())
    return out


# -- building trees and reading fixture packages (for test_apt, test_pip, test_gpgv) ---------
def build_repo(source: Path, out: Path, keys: Path = DEMO_KEYS, *,
               source_date_epoch: int | None = None) -> Path:
    """``repobuild build SOURCE --out OUT --keys KEYS``; raises with stderr on failure.

    ``SOURCE_DATE_EPOCH`` is taken from the argument only, never from the caller's environment,
    so that a CI setting cannot turn a fresh build into an expired one."""
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    proc = subprocess.run(
        [sys.executable, "-m", "repobuild", "build", str(source), "--out", str(out),
         "--keys", str(keys)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    if proc.returncode != 0:
        raise AssertionError(f"repobuild build {source} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return out


@dataclass(frozen=True)
class DebInfo:
    path: Path
    package: str
    version: str
    architecture: str


def deb_info(path: Path) -> DebInfo:
    """Package, Version and Architecture as ``dpkg-deb --field`` reads them from the file."""
    out = subprocess.run(["dpkg-deb", "--field", str(path), "Package", "Version", "Architecture"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return DebInfo(path, fields["Package"], fields["Version"], fields["Architecture"])


@dataclass(frozen=True)
class DistInfo:
    path: Path
    name: str
    version: str
    requires: tuple[str, ...]  # names of the Requires-Dist entries
    sha256: str


def dist_info(path: Path) -> DistInfo:
    """Name, Version and Requires-Dist from a wheel's METADATA or an sdist's PKG-INFO."""
    import email.parser
    import hashlib
    import re
    import tarfile
    import zipfile

    data = path.read_bytes()
    if path.name.endswith(".whl"):
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist()
                        if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            text = zf.read(name).decode()
    else:
        with tarfile.open(path) as tf:
            member = next(m for m in tf.getmembers()
                          if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
            fobj = tf.extractfile(member)
            assert fobj is not None
            text = fobj.read().decode()
    msg = email.parser.Parser().parsestr(text, headersonly=True)
    requires = tuple(re.split(r"[\s<>=!~;\[(]", r.strip(), maxsplit=1)[0]
                     for r in msg.get_all("Requires-Dist") or [])
    return DistInfo(path, msg["Name"], msg["Version"], requires,
                    hashlib.sha256(data).hexdigest())


def blob_of(out: Path, source_file: Path) -> Path:
    """The blob in OUT that stores ``source_file`` (found by the file's own SHA-256)."""
    import hashlib

    digest = hashlib.sha256(source_file.read_bytes()).hexdigest()
    return out / "blobs" / "sha256" / digest[:2] / digest / source_file.name


def flip_byte(path: Path, offset: int | None = None) -> None:
    """XOR one byte (the middle one by default) of a file with 0x01."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


# -- the fixture generator -------------------------------------------------------------------
def fixture_generator() -> ModuleType:
    """fixtures/make_release.py, loaded by path once (``fixtures`` is not a package)."""
    loaded = sys.modules.get("make_release")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("make_release", FIXTURES.parent /
                                                  "make_release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_release"] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


# -- counting the files a build reads -----------------------------------------------------------
class ReadLog:
    """Counts the SOURCE files a build reads, by instrumenting repobuild.ingest.ingest (which
    hashes them). The names go to a file, so that reads in forked worker processes count too."""

    def __init__(self, monkeypatch: Any, path: Path) -> None:
        import repobuild.ingest as ingest_mod

        self.path = path
        path.write_text("")
        real = ingest_mod.ingest
        log = str(path)

        def counting(src: Any, rel: str, *args: Any, **kwargs: Any) -> Any:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(rel + "\n")
            return real(src, rel, *args, **kwargs)

        monkeypatch.setattr(ingest_mod, "ingest", counting)

    def reads(self) -> list[str]:
        return sorted(self.path.read_text().split())

    def clear(self) -> None:
        self.path.write_text("")
