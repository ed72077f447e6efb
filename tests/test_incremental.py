"""Rebuilding into the same OUT: the build cache, new packages, changed and removed files, gc.

A second build after adding one .deb and one wheel bumps ``version``, leaves every existing blob
alone (same inode and mtime) and names the new packages in every index: the Packages file of
their architecture (and Release's hashes of it, and its by-hash copy), the simple root, the
project page and their PEP 691 twins, index.json and the landing page. A rebuild with nothing
changed reads no artifact (``ingest`` is never called), ``rehash=True`` reads them all. A file
changed in place with its size kept and its mtime put back is caught (ctime is part of the cache
key), and ``--rehash`` catches it even when the cache vouches for the old bytes. A removed file's
blob stays, listed as retired, until ``gc``: ``--dry-run --keep-days 0`` names exactly the files
of the older generation, ``--keep-days 0`` removes them and the tree still verifies, and the
default of 7 days removes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import repobuild.build as rb
from repobuild.cache import CACHE_FILE, read_entries, write_entries
from repobuild.config import Config
from tests.clients import (
    DEMO_KEYS,
    FIXTURES,
    ReadLog,
    fixture_generator,
    repobuild,
    snapshot,
)

TRUST = DEMO_KEYS / "trust.json"
AMD64 = "dists/stable/main/binary-amd64"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")




mr = fixture_generator()


@pytest.fixture(autouse=True)
def _real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """These builds follow each other in real time (gc compares with the clock)."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A private copy of the fixture release that the test may change."""
    return shutil.copytree(FIXTURES, tmp_path / "release")


def build(source: Path, out: Path, *extra: str) -> dict[str, Any]:
    repobuild("build", source, "--out", out, "--keys", DEMO_KEYS, *extra, check=True)
    return index_of(out)


def index_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "index.json").read_bytes())


def verify_ok(out: Path) -> None:
    proc = repobuild("verify", out, "--trust", TRUST)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact(index: dict[str, Any], path: str) -> dict[str, Any]:
    found = [a for a in index["artifacts"] if a["path"] == path]
    assert len(found) == 1, f"{path} is listed {len(found)} times as an artifact"
    return found[0]


def stanzas(packages: str) -> list[dict[str, str]]:
    out = []
    for block in packages.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace():
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        out.append(fields)
    return out


def release_sha256(release: str) -> dict[str, tuple[str, int]]:
    """name -> (sha256, size) of Release's SHA256 section."""
    out: dict[str, tuple[str, int]] = {}
    section = release.split("\nSHA256:\n", 1)[1]
    for line in section.splitlines():
        if not line.startswith(" "):
            break
        digest, size, name = line.split()
        out[name] = (digest, int(size))
    return out


def collectable(rel: str) -> bool:
    return rel.startswith("blobs/") or (rel.startswith("dists/") and "/by-hash/" in rel)


def listed_paths(index: dict[str, Any]) -> set[str]:
    return {a["blob"] for a in index["artifacts"]} | set(index["files"])


def current_paths(index: dict[str, Any]) -> set[str]:
    return {a["blob"] for a in index["artifacts"]} | {
        p for p, f in index["files"].items() if not f.get("retired")}


# --- a new package ----------------------------------------------------------------------------


def test_new_package_reaches_every_index_and_no_blob_is_touched(src: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = build(src, out)
    before = snapshot(out)
    old_blobs = {rel: v for rel, v in before.items() if rel.startswith("blobs/")}
    assert len(old_blobs) >= 10

    deb = mr.make_deb(src / "debs", "rbdemo-new", "3.0-1", "amd64")
    wheel = mr.make_wheel(src / "python", "rbdemo-new", "3.0.0")
    second = build(src, out)
    assert second["version"] == first["version"] + 1

    after = snapshot(out)
    for rel, (inode, size, mtime_ns, data) in old_blobs.items():
        assert rel in after, f"{rel} is gone"
        assert after[rel][:3] == (inode, size, mtime_ns), f"{rel} was rewritten"
        assert after[rel][3] == data

    # index.json
    deb_art = artifact(second, f"debs/{deb.name}")
    whl_art = artifact(second, f"python/{wheel.name}")
    for art, path in ((deb_art, deb), (whl_art, wheel)):
        data = path.read_bytes()
        assert art["sha256"] == sha256(data) and art["size"] == len(data)
        assert (out / art["blob"]).read_bytes() == data
        assert art["blob"] not in before
    assert (deb_art["name"], deb_art["version"], deb_art["architecture"]) == (
        "rbdemo-new", "3.0-1", "amd64")
    assert (whl_art["kind"], whl_art["name"], whl_art["version"]) == ("wheel", "rbdemo-new",
                                                                      "3.0.0")

    # apt: Packages of amd64 (and its compressed twins), Release's hashes, by-hash
    packages = (out / AMD64 / "Packages").read_bytes()
    assert gzip.decompress((out / AMD64 / "Packages.gz").read_bytes()) == packages
    assert lzma.decompress((out / AMD64 / "Packages.xz").read_bytes()) == packages
    new = [s for s in stanzas(packages.decode()) if s["Package"] == "rbdemo-new"]
    assert new == [new[0]] and new[0]["Version"] == "3.0-1", new
    assert new[0]["Filename"] == deb_art["blob"]
    assert new[0]["SHA256"] == deb_art["sha256"] and int(new[0]["Size"]) == deb_art["size"]
    assert not any(s["Package"] == "rbdemo-new"
                   for s in stanzas((out / "dists/stable/main/binary-arm64/Packages").read_text()))
    for signed in ("Release", "InRelease"):
        hashes = release_sha256((out / "dists/stable" / signed).read_text())
        for suffix in ("", ".gz", ".xz"):
            data = (out / AMD64 / f"Packages{suffix}").read_bytes()
            assert hashes[f"main/binary-amd64/Packages{suffix}"] == (sha256(data), len(data))
            by_hash = out / AMD64 / "by-hash/SHA256" / sha256(data)
            assert by_hash.read_bytes() == data
    assert (out / "dists/stable/Release").read_bytes() != before["dists/stable/Release"][3]

    # pip: PEP 503 root and project page, PEP 691 twins
    assert 'href="rbdemo-new/"' in (out / "simple/index.html").read_text()
    assert {"name": "rbdemo-new"} in json.loads((out / "simple/index.json").read_bytes())[
        "projects"]
    page = (out / "simple/rbdemo-new/index.html").read_text()
    assert f'href="../../{whl_art["blob"]}#sha256={whl_art["sha256"]}"' in page, page
    project = json.loads((out / "simple/rbdemo-new/index.json").read_bytes())
    assert project["name"] == "rbdemo-new" and project["versions"] == ["3.0.0"]
    assert [(f["filename"], f["hashes"]["sha256"], f["url"]) for f in project["files"]] == [
        (wheel.name, whl_art["sha256"], f"../../{whl_art['blob']}")]

    # the landing page, and every index file listed in index.json with its new hash
    landing = (out / "index.html").read_text()
    assert "rbdemo-new" in landing and "3.0-1" in landing and "3.0.0" in landing
    for rel in (f"{AMD64}/Packages", "dists/stable/Release", "dists/stable/InRelease",
                "simple/index.html", "simple/index.json", "simple/rbdemo-new/index.html",
                "simple/rbdemo-new/index.json", "index.html", f"{whl_art['blob']}.metadata"):
        assert second["files"][rel]["sha256"] == sha256((out / rel).read_bytes()), rel
    verify_ok(out)


# --- the build cache --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "worker-processes"])
def test_unchanged_rebuild_reads_no_artifact_and_rehash_reads_all(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    monkeypatch.setenv("REPOBUILD_WORKERS", workers)
    log = ReadLog(monkeypatch, tmp_path / "reads.log")
    out = tmp_path / "out"
    every = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())

    first = rb.build(src, out, DEMO_KEYS, Config())
    assert log.reads() == every
    index1 = index_of(out)
    blobs = {k: v for k, v in snapshot(out).items() if k.startswith("blobs/")}

    log.clear()
    second = rb.build(src, out, DEMO_KEYS, Config())
    assert log.reads() == [], f"an unchanged rebuild read {log.reads()}"
    assert second.version == first.version + 1 and second.new_blobs == 0
    index2 = index_of(out)
    assert index2["artifacts"] == index1["artifacts"], "cached artifacts differ from read ones"
    assert {k: v for k, v in index2["files"].items() if k.startswith("blobs/")} == {
        k: v for k, v in index1["files"].items() if k.startswith("blobs/")}

    log.clear()
    third = rb.build(src, out, DEMO_KEYS, Config(), rehash=True)
    assert log.reads() == every, "rehash=True must read every file again"
    assert third.version == second.version + 1 and third.new_blobs == 0
    assert index_of(out)["artifacts"] == index1["artifacts"]
    assert {k: v for k, v in snapshot(out).items() if k.startswith("blobs/")} == blobs
    verify_ok(out)


def test_a_few_new_files_are_read_in_the_build_process(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With worker processes, a first build sends its files to them; a rebuild with one new
    package reads it in its own process (a worker's round trip costs more than the read)."""
    monkeypatch.setenv("REPOBUILD_WORKERS", "2")
    monkeypatch.setattr(rb, "IN_PROCESS_FILES", 3)  # fewer than the fixture's files
    here: list[str] = []
    ingest_into = rb.ingest_into

    def counted(root: str, job: tuple[str, str], **kw: Any) -> Any:
        here.append(job[1])
        return ingest_into(root, job, **kw)

    monkeypatch.setattr(rb, "ingest_into", counted)
    out = tmp_path / "out"
    rb.build(src, out, DEMO_KEYS, Config())
    assert here == []
    mr.make_deb(src / "debs", "rbdemo-new", "3.0-1", "amd64")
    result = rb.build(src, out, DEMO_KEYS, Config())
    assert here == ["debs/rbdemo-new_3.0-1_amd64.deb"] and result.new_blobs == 1
    verify_ok(out)


def test_an_entry_vouched_for_but_unusable_is_read_again(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry whose stamp matches the file but whose artifact cannot be made from it: the
    file is read again, with the new one, and the index is what it was."""
    monkeypatch.setenv("REPOBUILD_WORKERS", "2")
    out = tmp_path / "out"
    rb.build(src, out, DEMO_KEYS, Config())
    artifacts = index_of(out)["artifacts"]
    cache_file = out / ".repobuild" / CACHE_FILE
    entries = read_entries(cache_file.read_bytes())
    deb = "debs/rbdemo-hello_1.0-1_amd64.deb"
    entries[deb][7] = ["no version, no architecture"]  # the package's fields, cut
    with open(cache_file, "wb") as fh:
        write_entries(fh.write, entries)
    log = ReadLog(monkeypatch, tmp_path / "reads.log")
    mr.make_deb(src / "debs", "rbdemo-new", "3.0-1", "amd64")
    result = rb.build(src, out, DEMO_KEYS, Config())
    assert log.reads() == sorted([deb, "debs/rbdemo-new_3.0-1_amd64.deb"])
    assert result.new_blobs == 1
    index = index_of(out)
    assert artifact(index, deb) == next(a for a in artifacts if a["path"] == deb)
    assert artifact(index, "debs/rbdemo-new_3.0-1_amd64.deb")
    verify_ok(out)


@pytest.mark.parametrize("damage", ["cut", "garbage", "other-format", "wrong-shape"])
def test_a_damaged_cache_costs_a_read_and_nothing_else(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """The cache file cut short, overwritten, of another format or with entries of the wrong
    shape: every file is read again, the index is the same, and the next build trusts the
    cache it saved. A cache of the format before (cache.json) is removed."""
    monkeypatch.setenv("REPOBUILD_WORKERS", "0")
    out = tmp_path / "out"
    every = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    rb.build(src, out, DEMO_KEYS, Config())
    artifacts = index_of(out)["artifacts"]
    cache_file = out / ".repobuild" / CACHE_FILE
    data = cache_file.read_bytes()
    entries = read_entries(data)
    assert sorted(entries) == every
    if damage == "cut":
        cache_file.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        cache_file.write_bytes(os.urandom(len(data)))
    elif damage == "other-format":
        cache_file.write_bytes(data.replace(b"repobuild-cache\n6 ", b"repobuild-cache\n9 ", 1))
    else:
        with open(cache_file, "wb") as fh:
            write_entries(fh.write, {rel: [entry] for rel, entry in entries.items()})
    (out / ".repobuild" / "cache.json").write_text('{"format":4,"files":{}}')

    log = ReadLog(monkeypatch, tmp_path / "reads.log")
    rb.build(src, out, DEMO_KEYS, Config())
    assert log.reads() == every
    assert index_of(out)["artifacts"] == artifacts
    assert read_entries(cache_file.read_bytes()) == entries
    assert not (out / ".repobuild" / "cache.json").exists()
    log.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert log.reads() == []
    verify_ok(out)


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "worker-processes"])
def test_blob_deleted_from_out_is_put_back_by_the_next_build(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    """The cache vouches for a file without looking at OUT; a blob (or a wheel's .metadata)
    deleted from OUT is found missing by the build's walk of OUT (in a worker, with workers)
    and read again."""
    monkeypatch.setenv("REPOBUILD_WORKERS", workers)
    log = ReadLog(monkeypatch, tmp_path / "reads.log")
    out = tmp_path / "out"
    first = rb.build(src, out, DEMO_KEYS, Config())
    index = index_of(out)
    deb = artifact(index, "debs/rbdemo-hello_1.0-1_amd64.deb")
    whl = artifact(index, "python/rbdemo_lib-1.0.0-py3-none-any.whl")
    deb_bytes = (out / deb["blob"]).read_bytes()
    meta_bytes = (out / whl["metadata"]["path"]).read_bytes()
    (out / deb["blob"]).unlink()
    (out / whl["metadata"]["path"]).unlink()
    log.clear()
    second = rb.build(src, out, DEMO_KEYS, Config())
    assert second.errors == [] and second.version == first.version + 1
    assert log.reads() == sorted([deb["path"], whl["path"]])
    assert (out / deb["blob"]).read_bytes() == deb_bytes
    assert (out / whl["metadata"]["path"]).read_bytes() == meta_bytes
    verify_ok(out)
    log.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert log.reads() == [], "the restored files are in the cache again"


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "worker-processes"])
def test_a_rebuild_prunes_what_no_index_lists(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    """Files dropped into OUT by hand (among the blobs too) are removed by the next build; its
    own blobs stay, new and old (a removed wheel's blob and .metadata, retired until gc)."""
    monkeypatch.setenv("REPOBUILD_WORKERS", workers)
    out = tmp_path / "out"
    rb.build(src, out, DEMO_KEYS, Config())
    whl = artifact(index_of(out), "python/rbdemo_lib-1.0.0-py3-none-any.whl")
    strays = ["stray.txt", "simple/stray/index.html", "blobs/sha256/00/stray",
              whl["blob"] + ".old", "dists/stray"]
    for rel in strays:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("not listed")
    (src / "python/rbdemo_lib-1.0.0-py3-none-any.whl").unlink()
    mr.make_deb(src / "debs", "rbdemo-new", "3.0-1", "amd64")
    result = rb.build(src, out, DEMO_KEYS, Config())
    assert result.removed >= len(strays)  # and what the index no longer lists
    for rel in strays:
        assert not (out / rel).exists(), rel
    index = index_of(out)
    for rel in (whl["blob"], whl["metadata"]["path"]):  # kept (retired) until gc
        assert (out / rel).exists() and index["files"][rel]["retired"], rel
    assert artifact(index, "debs/rbdemo-new_3.0-1_amd64.deb")
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*")
               if p.is_file() and ".repobuild" not in p.parts}
    listed = {a["blob"] for a in index["artifacts"]} | set(index["files"])
    assert on_disk - listed <= {"index.json", "index.json.asc", "index.json.sig",
                                "index.json.sigstore.json"}
    verify_ok(out)


def _change_in_place(path: Path) -> tuple[str, str]:
    """Flip one byte, keep the size, put the mtime back; returns (old, new) SHA-256."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    old = sha256(bytes(data))
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = path.stat()
    assert (again.st_size, again.st_mtime_ns, again.st_ino) == (
        st.st_size, st.st_mtime_ns, st.st_ino)
    return old, sha256(bytes(data))


def test_same_size_change_with_restored_mtime_is_caught(src: Path, tmp_path: Path) -> None:
    rel = "files/README.txt"
    plain, rehashed = tmp_path / "plain", tmp_path / "rehashed"
    build(src, plain)
    build(src, rehashed)
    old, new = _change_in_place(src / rel)

    # without --rehash: the ctime moved, so the cache entry is not trusted
    assert artifact(build(src, plain), rel)["sha256"] == new
    # with --rehash
    art = artifact(build(src, rehashed, "--rehash"), rel)
    assert art["sha256"] == new
    assert (rehashed / art["blob"]).read_bytes() == (src / rel).read_bytes()
    for out in (plain, rehashed):
        index = index_of(out)
        retired = [p for p, f in index["files"].items() if f.get("retired")]
        assert [p for p in retired if old in p] == [f"blobs/sha256/{old[:2]}/{old}/README.txt"]
        verify_ok(out)


def test_rehash_catches_a_change_the_cache_vouches_for(src: Path, tmp_path: Path) -> None:
    """A change that keeps every stamp (as a restore from backup or a coarse file system can):
    the cache entry is made to match the changed file; only --rehash reads it."""
    rel = "python/rbdemo_lib-1.0.0-py3-none-any.whl"
    out = tmp_path / "out"
    build(src, out)
    old, new = _change_in_place(src / rel)  # a byte of the zip's first local header name
    cache_file = out / ".repobuild" / CACHE_FILE
    entries = read_entries(cache_file.read_bytes())
    st = (src / rel).stat()
    entry = entries[rel]  # [size, mtime_ns, ctime_ns, inode, kind, sha256, ...]
    assert entry[5] == old
    entry[:4] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    with open(cache_file, "wb") as fh:
        write_entries(fh.write, entries)

    assert artifact(build(src, out), rel)["sha256"] == old, "the forged stamp was not trusted"
    art = artifact(build(src, out, "--rehash"), rel)
    assert art["sha256"] == new
    assert (out / art["blob"]).read_bytes() == (src / rel).read_bytes()
    verify_ok(out)


# --- removing a file, and gc ------------------------------------------------------------------


def _gc(out: Path, *args: str) -> set[str]:
    proc = repobuild("gc", out, *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    verb = "would remove" if "--dry-run" in args else "removed"
    names = set(re.findall(rf"^{verb} (\S+) \(\d+ bytes\)$", proc.stdout, re.M))
    total = re.search(rf"^{verb} (\d+) files", proc.stdout, re.M)
    assert total is not None and int(total.group(1)) == len(names), proc.stdout
    return names


def test_removed_file_is_retired_then_collected_by_gc(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = build(src, out)
    gone = ["debs/rbdemo-hello_1.1-1_amd64.deb", "python/rbdemo_cli-0.1.0-py3-none-any.whl",
            "files/README.txt"]
    gone_blobs = {artifact(first, rel)["blob"] for rel in gone}
    gone_blobs.add(artifact(first, gone[1])["blob"] + ".metadata")
    for rel in gone:
        (src / rel).unlink()
    kept_before = snapshot(out)
    second = build(src, out)
    assert second["version"] == first["version"] + 1
    assert not {a["path"] for a in second["artifacts"]} & set(gone)

    # the blobs stay, untouched, listed with a retired time
    after = snapshot(out)
    for blob in gone_blobs:
        assert after[blob][:3] == kept_before[blob][:3], blob
        entry = second["files"][blob]
        assert RFC3339.match(entry.get("retired", "")), entry
        assert entry["sha256"] == sha256(after[blob][3])
    # the older generation: what index 1 listed that index 2 no longer lists as current
    older = {p for p in listed_paths(first) if collectable(p)} - current_paths(second)
    assert gone_blobs <= older
    old_by_hash = {p for p in older if "/by-hash/" in p}
    assert len(old_by_hash) == 3, old_by_hash  # amd64 Packages, .gz, .xz of version 1
    assert older == {p for p, f in second["files"].items() if f.get("retired")}
    assert all((out / p).is_file() for p in older)
    verify_ok(out)

    state = snapshot(out)
    assert _gc(out, "--keep-days", "0", "--dry-run") == older
    assert snapshot(out) == state, "gc --dry-run changed the tree"
    assert _gc(out) == set(), "gc with the default 7 days removed files just after a build"
    assert snapshot(out) == state

    assert _gc(out, "--keep-days", "0") == older
    for p in older:
        assert not (out / p).exists(), f"gc left {p}"
    for p in current_paths(second) | {"index.json", "index.json.asc"}:
        assert (out / p).is_file(), f"gc removed {p}, which the index lists as current"
    assert (out / "index.json").read_bytes() == json.dumps(
        second, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    verify_ok(out)

    state = snapshot(out)
    assert _gc(out) == set()
    assert snapshot(out) == state


def test_saved_summary_is_the_index_summary_and_a_stale_or_broken_one_is_ignored(
        src: Path, tmp_path: Path) -> None:
    """A build saves the summary of its index.json (what the next build needs of it) in
    .repobuild/previous.bin, keyed by the index's stamp; the next build uses it instead of
    parsing the index, and parses the index when the summary is not this index's."""
    from repobuild.formats import manifest

    out = tmp_path / "out"
    saved = out / ".repobuild" / "previous.bin"

    def summary_is_the_index_summary() -> manifest.Previous:
        index = out / "index.json"
        data = index.read_bytes()
        st = index.stat()
        key = f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"
        summary = manifest.read_summary(saved.read_bytes(), key)
        assert summary is not None
        assert summary == manifest.previous(data)
        return summary

    build(src, out)
    summary_is_the_index_summary()
    (src / "files/README.txt").unlink()
    second = build(src, out)  # lists the README's blob as retired
    summary = summary_is_the_index_summary()
    assert any(retired for _size, _sha, retired in summary.kept_files.values())
    stale = saved.read_bytes()

    third = build(src, out)
    assert third["version"] == second["version"] + 1
    retired = {p: f["retired"] for p, f in third["files"].items() if f.get("retired")}
    assert retired == {p: f["retired"] for p, f in second["files"].items() if f.get("retired")}

    for bad in (stale, b"{not json", b'{"format":1}', stale[:len(stale) // 2]):
        saved.write_bytes(bad)  # the second build's summary, or garbage: not this index's
        before = index_of(out)
        again = build(src, out)
        assert again["version"] == before["version"] + 1
        assert {p: f.get("retired") for p, f in again["files"].items() if f.get("retired")} \
            == retired
        assert [(a["path"], a["uploaded"]) for a in again["artifacts"]] == [
            (a["path"], a["uploaded"]) for a in before["artifacts"]]
        summary_is_the_index_summary()
    verify_ok(out)


def test_the_summary_spares_reading_the_index_until_the_index_is_touched(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The saved summary is used while index.json is the file it was saved for (its stamp);
    once anything writes to index.json, the index itself is read."""
    from repobuild.formats import manifest

    out = tmp_path / "out"
    rb.build(src, out, DEMO_KEYS, Config())
    parsed: list[int] = []
    real = manifest.previous

    def counted(data: bytes) -> manifest.Previous:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(manifest, "previous", counted)
    second = rb.build(src, out, DEMO_KEYS, Config())
    assert parsed == []
    index = out / "index.json"
    size = index.stat().st_size
    index.write_bytes(index.read_bytes())  # the same bytes: a new ctime
    third = rb.build(src, out, DEMO_KEYS, Config())
    assert parsed == [size]  # the small index is read in this process
    assert third.version == second.version + 1
    verify_ok(out)
