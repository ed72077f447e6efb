"""Smoke runs of bench/: every script on a tiny corpus, so that the benchmarks cannot rot.

Peers (apt-ftparchive, aptly, reprepro, simple503, dumb-pypi) that are not installed are
reported by the scripts, not failed; nothing is installed here (--no-install).
"""

from __future__ import annotations

import gzip
import importlib
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SMALL = ["--avg-kb", "4", "--no-sync", "--timeout", "120"]


def _corpus() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("corpus")


def _run(script: str, *args: str, work: Path, results: Path) -> str:
    cmd = [sys.executable, str(BENCH / script), *args, *SMALL, "--work", str(work),
           "--results", str(results)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{output[-4000:]}"
    for line in output.splitlines():
        if "CHECK FAILED" in line or line.startswith("peer missing") or "missing:" in line:
            warnings.warn(f"{script}: {line[:300]}", stacklevel=2)
    return output


def _ar_members(data: bytes) -> dict[str, bytes]:
    assert data[:8] == b"!<arch>\n"
    pos, members = 8, {}
    while pos < len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2
    return members


def test_corpus_is_valid_and_deterministic(tmp_path: Path) -> None:
    corpus = _corpus()
    spec = corpus.CorpusSpec(24, seed=7, mix=corpus.parse_mix("deb=1,wheel=1,sdist=1,file=1"),
                             avg_kb=3)
    a = corpus.generate(tmp_path / "a", spec)
    b = corpus.generate(tmp_path / "b", spec)
    assert a.files == b.files and len(a.files) == 24
    for rel in a.files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    assert {f.split("/")[0] for f in a.files} == {"deb", "wheel", "sdist", "file"}
    assert len({f.split("/")[1].split("_")[0].split("-")[0] for f in a.files}) == 24
    assert 1_000 < a.total_bytes / 24 < 6_000

    for deb in a.paths("deb"):
        members = _ar_members(deb.read_bytes())
        assert list(members) == ["debian-binary", "control.tar.gz", "data.tar.xz"]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(members["control.tar.gz"]))) as t:
            control = t.extractfile("./control")
            assert control is not None and b"Package: pkg" in control.read()
        with tarfile.open(fileobj=io.BytesIO(lzma.decompress(members["data.tar.xz"]))) as t:
            assert any(m.name.endswith("payload.bin") for m in t.getmembers())
        if shutil.which("dpkg-deb"):
            subprocess.run(["dpkg-deb", "--info", str(deb)], check=True, capture_output=True)
            subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True)
    for whl in a.paths("wheel"):
        with zipfile.ZipFile(whl) as zf:
            assert zf.testzip() is None
            names = zf.namelist()
            assert any(n.endswith(".dist-info/METADATA") for n in names)
            assert any(n.endswith(".dist-info/RECORD") for n in names)
            payload = next(i for i in zf.infolist() if i.filename.endswith("payload.bin"))
            assert payload.compress_type == zipfile.ZIP_STORED
    for sdist in a.paths("sdist"):
        with tarfile.open(sdist) as t:
            assert sum(1 for n in t.getnames() if n.count("/") == 1 and
                       n.endswith("/PKG-INFO")) == 1

    loaded = corpus.load(a.root, spec)
    assert loaded is not None and loaded.files == a.files
    new = corpus.add_package(a, "deb", tag=3)
    assert new.name == "new00003_2.0.0_amd64.deb" and new.is_file()
    assert corpus.load(a.root, spec) is not None and not new.exists()  # dropped by load


def _common() -> ModuleType:
    _corpus()  # puts bench/ on sys.path
    return importlib.import_module("common")


def test_scratch_never_deletes_before_the_end(tmp_path: Path) -> None:
    common = _common()
    space = common.Scratch(tmp_path)
    first = space.fresh("out")
    assert first == tmp_path / "out-1"
    first.mkdir()
    (first / "a").write_bytes(b"x" * 10_000)
    (tmp_path / "out-2").mkdir()  # taken by someone else: skipped
    assert space.fresh("out") == tmp_path / "out-3"
    assert space.fresh("other") == tmp_path / "other-1"

    space.discard(first)
    space.discard(tmp_path / "never-made")  # nothing there: nothing done
    trashed = space.trash / "out-1.0"
    assert not first.exists() and (trashed / "a").stat().st_size == 10_000

    # short of disk: files of the trash are cut to 0 bytes, except those linked elsewhere
    keep = tmp_path / "corpus-file"
    keep.write_bytes(b"y" * 10_000)
    os.link(keep, trashed / "linked")
    os.symlink(keep, trashed / "symlink")
    space.room(1 << 62, "a huge step")
    assert (trashed / "a").exists() and (trashed / "a").stat().st_size == 0
    assert keep.read_bytes() == b"y" * 10_000
    assert space.notes and "a huge step" in space.notes[0]

    space.empty()
    assert not space.trash.exists() and keep.exists()
    assert not space.notes[1:]


def test_measure_fresh_uses_new_folders(tmp_path: Path) -> None:
    common = _common()
    space = common.Scratch(tmp_path)
    bench = common.Bench(3)
    seen: list[Path] = []

    def run(out: Path) -> object:
        assert not out.exists()
        seen.append(out)
        out.mkdir()
        return common.timed(["true"])

    _run, last = bench.measure_fresh(space, "x", run, prepare=lambda p: None)
    assert seen == [tmp_path / f"x-{k}" for k in (1, 2, 3)] and last == seen[-1]
    assert last.is_dir() and not seen[0].exists()
    assert sorted(p.name for p in space.trash.iterdir()) == ["x-1.0", "x-2.0"]


def test_build_bench_smoke(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    stale = tmp_path / "build-bench-n120" / "out-copy-1"  # left by an earlier run
    stale.mkdir(parents=True)
    (stale / "file").write_text("old")
    out = _run("build_bench.py", "120", "--no-install", work=tmp_path, results=results)
    assert "repobuild build, cold (copy)" in out
    text = results.read_text()
    assert "## build_bench N=120" in text and "Machine: " in text
    for label in ("openssl dgst -sha256", "cp -r (all)", "repobuild build, cold (copy)",
                  "repobuild build --link, cold", "repobuild rebuild, +1 deb"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
        assert "FAILED" not in row and "—" not in row.split("|")[3], row
    for peer in ("apt-ftparchive", "aptly", "reprepro", "simple503", "dumb-pypi"):
        assert peer in text  # measured, or a row saying why it is missing
    assert "CHECK FAILED" not in text
    matched_peers = 0
    for tool, rows, match, made in (
            ("aptly", ("aptly repo create + add N + publish", "aptly repo add 1 + publish update"),
             "by-hash like repobuild", "by-hash"),
            ("reprepro", ("reprepro includedeb N (+ export)", "reprepro includedeb 1 (+ export)"),
             ".xz like repobuild", "Packages.xz")):
        if not shutil.which(tool) or not shutil.which("gpg"):
            continue
        for label in rows:
            # both default configurations side by side, then the one that writes what
            # repobuild writes (reprepro: .xz; aptly: by-hash)
            for kind in ("unsigned", "signed", f"signed, {match}"):
                row = next(line for line in text.splitlines()
                           if line.startswith(f"| {label}, {kind} "))
                assert "×" in row and "FAILED" not in row, row
        for kind in ("signed", f"signed, {match}"):
            for what in ("InRelease", "Release.gpg"):
                assert f"check: {tool}, {kind}: gpgv {what}" in out
        assert f"check: {tool}, signed, {match}: indexes " in out
        check = next(line for line in out.splitlines()
                     if line.startswith(f"check: {tool}, signed, {match}: {made} in each "))
        assert check.endswith(" ok"), check
        matched_peers += 1
    if matched_peers:
        assert "check: repobuild: Packages.xz in each binary-<arch>" in out
        assert "check: repobuild: by-hash in each binary-<arch>" in out
        assert "- Outputs: repobuild writes Packages, Packages.gz, Packages.xz" in text
    assert not (tmp_path / "build-bench-n120").exists()  # outputs removed without --keep
    leftovers = list(tmp_path.glob("corpus-*/deb/new*"))
    assert not leftovers


def test_verify_bench_smoke(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    _run("verify_bench.py", "100", work=tmp_path, results=results)
    text = results.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| repobuild verify"))
    assert "×" in row


@pytest.mark.parametrize("n", ["100"])
def test_scale_bench_smoke(tmp_path: Path, n: str) -> None:
    results = tmp_path / "RESULTS.md"
    _run("scale_bench.py", n, work=tmp_path, results=results)
    text = results.read_text()
    row = next(line for line in text.splitlines()
               if line.startswith("| repobuild build, cold (copy)"))
    assert "completed" in row and "peak RSS" in row
