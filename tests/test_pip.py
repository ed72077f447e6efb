"""Real pip, in a fresh virtual environment and isolated from this machine's pip configuration,
installs from a built tree's simple index over http://127.0.0.1:PORT/simple/ and over
file://OUT/simple/.

Accepted: every fixture wheel by name, its dependency from the same index; --require-hashes
with the hashes of the release's own files; the PEP 658 `.metadata` fetched before the wheel;
the sdist downloaded (hash checked, byte-identical) and installed (its in-tree build backend
needs nothing from the network). Refused: a simple page whose `#sha256=` is wrong.

Names, versions and dependencies come from the release's files, never from repobuild's output.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.clients import DistInfo, Server, http_server, make_venv, pip

TRANSPORTS = ("http", "file")
HASH_MISMATCH = "THESE PACKAGES DO NOT MATCH THE HASHES"


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh venv (with pip) for the module; installs go to --target folders."""
    return make_venv(tmp_path_factory.mktemp("pip") / "venv")


@dataclass
class Index:
    url: str
    server: Server | None  # None for file://


@contextmanager
def index(out: Path, transport: str) -> Iterator[Index]:
    if transport == "http":
        with http_server(out) as server:
            yield Index(server.url + "simple/", server)
    else:
        yield Index(f"file://{out}/simple/", None)


def dist_info_dir(target: Path, dist: DistInfo) -> Path:
    name = canonicalize_name(dist.name).replace("-", "_")
    return target / f"{name}-{dist.version}.dist-info"


def wheel_metadata(dist: DistInfo) -> bytes:
    import zipfile

    with zipfile.ZipFile(dist.path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name)


def by_name(dists: list[DistInfo], name: str) -> DistInfo:
    return next(d for d in dists if canonicalize_name(d.name) == canonicalize_name(name))


def out_text(proc: object) -> str:
    return f"{getattr(proc, 'stdout', '')}\n{getattr(proc, 'stderr', '')}"


# -- c: installs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_installs_each_wheel_by_name(python: Path, built_out: Path, tmp_path: Path,
                                     fixture_wheels: list[DistInfo], transport: str) -> None:
    with index(built_out, transport) as idx:
        for dist in fixture_wheels:
            target = tmp_path / canonicalize_name(dist.name)
            proc = pip(python, "install", "--index-url", idx.url, "--target", str(target),
                       f"{dist.name}=={dist.version}")
            assert proc.returncode == 0, out_text(proc)
            installed = dist_info_dir(target, dist)
            assert installed.is_dir(), (sorted(p.name for p in target.iterdir()), proc.stdout)
            assert (installed / "METADATA").read_bytes() == wheel_metadata(dist)
            for req in dist.requires:  # resolved from the same index
                dep = by_name(fixture_wheels, req)
                assert dist_info_dir(target, dep).is_dir(), proc.stdout


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dependency_comes_from_the_same_index(python: Path, built_out: Path, tmp_path: Path,
                                              fixture_wheels: list[DistInfo],
                                              transport: str) -> None:
    with_deps = [d for d in fixture_wheels if d.requires]
    assert with_deps, "the fixture release lost its wheel that depends on another"
    app = with_deps[0]
    dep = by_name(fixture_wheels, app.requires[0])
    with index(built_out, transport) as idx:
        proc = pip(python, "install", "--index-url", idx.url, "--target", str(tmp_path / "t"),
                   app.name)  # by name only: the newest version the index offers
        assert proc.returncode == 0, out_text(proc)
        assert dist_info_dir(tmp_path / "t", dep).is_dir(), proc.stdout
        dep_file = dep.path.name
        if idx.server is not None:
            assert f"/simple/{canonicalize_name(dep.name)}/" in idx.server.log
            fetched = [p for p in idx.server.log if p.endswith("/" + dep_file)]
            assert fetched and all(p.startswith("/blobs/sha256/") for p in fetched), \
                idx.server.log
        else:
            assert re.search(rf"file://{re.escape(str(built_out))}/blobs/sha256/\S+/"
                             rf"{re.escape(dep_file)}", proc.stdout), proc.stdout


def test_metadata_is_requested_before_the_wheel(python: Path, built_out: Path, tmp_path: Path,
                                                fixture_wheels: list[DistInfo]) -> None:
    with index(built_out, "http") as idx:
        assert idx.server is not None
        for dist in fixture_wheels:
            idx.server.log.clear()
            proc = pip(python, "install", "--no-deps", "--index-url", idx.url,
                       "--target", str(tmp_path / dist.path.stem),
                       f"{dist.name}=={dist.version}")
            assert proc.returncode == 0, out_text(proc)
            log = idx.server.log
            wheel = [i for i, p in enumerate(log) if p.endswith("/" + dist.path.name)]
            meta = [i for i, p in enumerate(log) if p.endswith(f"/{dist.path.name}.metadata")]
            assert wheel and meta, log
            assert meta[0] < wheel[0], log


def requirements(dists: list[DistInfo], wrong: str | None = None) -> str:
    lines = []
    for d in dists:
        digest = hashlib.sha256(b"not it").hexdigest() if d.name == wrong else d.sha256
        lines.append(f"{d.name}=={d.version} --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_require_hashes_with_the_release_files_hashes(python: Path, built_out: Path,
                                                      tmp_path: Path,
                                                      fixture_wheels: list[DistInfo],
                                                      transport: str) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text(requirements(fixture_wheels))
    with index(built_out, transport) as idx:
        proc = pip(python, "install", "--require-hashes", "--index-url", idx.url,
                   "--target", str(tmp_path / "t"), "-r", str(req))
        assert proc.returncode == 0, out_text(proc)
        for dist in fixture_wheels:
            assert dist_info_dir(tmp_path / "t", dist).is_dir(), proc.stdout

        # control: pip does check them (one wrong hash is refused)
        victim = fixture_wheels[0].name
        req.write_text(requirements(fixture_wheels, wrong=victim))
        proc = pip(python, "install", "--require-hashes", "--index-url", idx.url,
                   "--target", str(tmp_path / "u"), "-r", str(req))
        assert proc.returncode == 1, out_text(proc)
        assert HASH_MISMATCH in proc.stderr, proc.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_sha256_in_simple_page_is_refused(python: Path, out_copy: Path, tmp_path: Path,
                                                fixture_wheels: list[DistInfo],
                                                transport: str) -> None:
    dist = next(d for d in fixture_wheels if not d.requires)
    project = out_copy / "simple" / canonicalize_name(dist.name)
    wrong = hashlib.sha256(b"not it").hexdigest()
    # only the file's hash changes (the HTML link's #sha256= fragment and the JSON's
    # "hashes"), not its URL, which holds the same hex digits
    html = project / "index.html"
    text = html.read_text()
    assert text.count(f"#sha256={dist.sha256}") == 1, text
    html.write_text(text.replace(f"#sha256={dist.sha256}", f"#sha256={wrong}"))
    page = project / "index.json"
    doc = json.loads(page.read_bytes())
    entries = [f for f in doc["files"] if f["filename"] == dist.path.name]
    assert len(entries) == 1 and entries[0]["hashes"]["sha256"] == dist.sha256, doc
    entries[0]["hashes"]["sha256"] = wrong
    page.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    target = tmp_path / "t"
    with index(out_copy, transport) as idx:
        proc = pip(python, "install", "--index-url", idx.url, "--target", str(target),
                   f"{dist.name}=={dist.version}")
    print(f"[{transport}] pip install rc={proc.returncode}\n{proc.stderr}")
    assert proc.returncode == 1, out_text(proc)
    assert HASH_MISMATCH in proc.stderr, proc.stderr
    assert re.search(rf"Expected sha256 {wrong}\s+Got\s+{dist.sha256}", proc.stderr), proc.stderr
    assert not dist_info_dir(target, dist).exists()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdist_downloads_and_installs(python: Path, built_out: Path, tmp_path: Path,
                                      fixture_sdists: list[DistInfo], transport: str) -> None:
    """`pip download --no-binary :all: --no-deps` checks the page's #sha256= and saves the very
    file of the release; with `--require-hashes` and the release file's own SHA-256 it
    succeeds too (and a wrong one is refused); `pip install --no-binary :all:` then builds it
    with its in-tree backend (build-system.requires is empty, so build isolation needs no
    index)."""
    with index(built_out, transport) as idx:
        for dist in fixture_sdists:
            dest = tmp_path / "dl"
            proc = pip(python, "download", "--no-deps", "--no-binary", ":all:",
                       "--index-url", idx.url, "--dest", str(dest),
                       f"{dist.name}=={dist.version}")
            assert proc.returncode == 0, out_text(proc)
            saved = dest / dist.path.name
            assert saved.read_bytes() == dist.path.read_bytes()

            for wrong in (None, dist.name):
                req = tmp_path / "req.txt"
                req.write_text(requirements([dist], wrong=wrong))
                hashed = tmp_path / f"dl-hashed-{wrong is None}"
                proc = pip(python, "download", "--no-deps", "--no-binary", ":all:",
                           "--require-hashes", "--index-url", idx.url, "--dest", str(hashed),
                           "-r", str(req))
                if wrong is None:
                    assert proc.returncode == 0, out_text(proc)
                    assert (hashed / dist.path.name).read_bytes() == dist.path.read_bytes()
                else:
                    assert proc.returncode == 1, out_text(proc)
                    assert HASH_MISMATCH in proc.stderr, proc.stderr
                    assert not (hashed / dist.path.name).exists()

            target = tmp_path / "t"
            proc = pip(python, "install", "--no-deps", "--no-binary", ":all:",
                       "--index-url", idx.url, "--target", str(target),
                       f"{dist.name}=={dist.version}")
            assert proc.returncode == 0, out_text(proc)
            assert dist_info_dir(target, dist).is_dir(), proc.stdout
