"""`repobuild build --link`: blobs are hard links of the source files, the tree verifies, and
the next build finds every file in the cache although linking changed the files' ctime."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import repobuild.build as build_mod
from repobuild.config import Config
from repobuild.formats import manifest
from tests.clients import DEMO_KEYS, FIXTURES, ReadLog, repobuild


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "worker-processes"])
def test_link_builds_share_inodes_and_rebuild_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    monkeypatch.setenv("REPOBUILD_WORKERS", workers)
    log = ReadLog(monkeypatch, tmp_path / "reads.log")
    source = shutil.copytree(FIXTURES, tmp_path / "src")
    out = tmp_path / "out"
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    build_mod.build(source, out, DEMO_KEYS, Config(), link=True)
    index = manifest.parse((out / "index.json").read_bytes())
    for art in index.artifacts:
        assert (out / art["blob"]).stat().st_ino == (source / art["path"]).stat().st_ino
    assert repobuild("verify", out, "--trust", DEMO_KEYS / "trust.json").returncode == 0

    every = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert log.reads() == every
    log.clear()
    build_mod.build(source, out, DEMO_KEYS, Config(), link=True)
    assert log.reads() == [], log.reads()
    assert manifest.parse((out / "index.json").read_bytes()).version == 2


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "worker-processes"])
def test_a_file_replaced_after_it_was_read_is_not_linked_as_its_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """--link names the source *path* in OUT; had the path come to hold another file between
    the read and the link, the blob would not be the bytes hashed. The build refuses."""
    import repobuild.ingest as ingest_mod

    monkeypatch.setenv("REPOBUILD_WORKERS", workers)
    source = shutil.copytree(FIXTURES, tmp_path / "src")
    victim = next(p for p in sorted(source.rglob("*.whl")))
    real = ingest_mod.ingest

    def then_replaced(src: object, rel: str, *args: object, **kwargs: object) -> object:
        item = real(src, rel, *args, **kwargs)  # type: ignore[arg-type]
        if rel == victim.relative_to(source).as_posix():
            other = victim.with_name("swap.tmp")
            other.write_bytes(b"not the bytes that were hashed\n")
            other.replace(victim)  # a new inode under the same name
        return item

    monkeypatch.setattr(ingest_mod, "ingest", then_replaced)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="changed while it was being read"):
        build_mod.build(source, out, DEMO_KEYS, Config(), link=True)
    assert not (out / "index.json").exists()
    blobs = out / "blobs"
    left = [p for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []
    assert left == [], left


def test_worker_results_cross_processes_whole(tmp_path: Path) -> None:
    """ingest_batch hands its results back packed as plain tuples: unpacked, they are the
    very Ingested records (every field) that ingest_into made."""
    import dataclasses
    import pickle

    import repobuild.ingest as ingest_mod

    root, other_root = tmp_path / "out", tmp_path / "direct"
    for folder in (root, other_root):
        (folder / ".repobuild" / "tmp").mkdir(parents=True)
    jobs = [(str(p), p.relative_to(FIXTURES).as_posix())
            for p in sorted(FIXTURES.rglob("*")) if p.is_file()]
    direct = [ingest_mod.ingest_into(str(other_root), job, link=False, sha512=True)
              for job in jobs]
    packed, error = ingest_mod.ingest_batch(str(root), jobs, False, True)
    assert error is None
    back = [ingest_mod.unpack(t) for t in pickle.loads(pickle.dumps(packed))]
    kinds = {item.artifact.kind for item in back}
    assert {"deb", "wheel", "sdist", "file"} <= kinds
    for one, other in zip(direct, back, strict=True):
        assert dataclasses.asdict(one) == dataclasses.asdict(other)


def _other_file_system(tmp_path: Path) -> Path:
    """A folder on another file system than tmp_path (/dev/shm), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm to put OUT on another file system")
    if shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same file system as the test's folder")
    return Path(tempfile.mkdtemp(dir=shm, prefix="repobuild-test-"))


@pytest.mark.parametrize("replaced", [False, True], ids=["plain", "replaced-after-read"])
def test_link_across_file_systems_copies_and_checks_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replaced: bool
) -> None:
    """--link with OUT on another file system: link(2) fails with EXDEV and the blob is a copy,
    made from the source's path. A file replaced between the read and that copy is refused."""
    import repobuild.ingest as ingest_mod

    monkeypatch.setenv("REPOBUILD_WORKERS", "0")
    source = shutil.copytree(FIXTURES, tmp_path / "src")
    other = _other_file_system(tmp_path)
    try:
        out = other / "out"
        victim = sorted(source.rglob("*.deb"))[0]
        if replaced:
            real = ingest_mod.ingest

            def then_replaced(src: object, rel: str, *args: object, **kwargs: object) -> object:
                item = real(src, rel, *args, **kwargs)  # type: ignore[arg-type]
                if rel == victim.relative_to(source).as_posix():
                    data = bytearray(victim.read_bytes())
                    data[-1] ^= 0xFF  # same size, other bytes
                    swap = victim.with_name("swap.tmp")
                    swap.write_bytes(bytes(data))
                    swap.replace(victim)
                return item

            monkeypatch.setattr(ingest_mod, "ingest", then_replaced)
            with pytest.raises(Exception, match="changed while it was being read"):
                build_mod.build(source, out, DEMO_KEYS, Config(), link=True)
            assert not (out / "index.json").exists()
            left = [p for p in (out / "blobs").rglob("*") if p.is_file()] if (
                out / "blobs").exists() else []
            assert left == [], left
            return
        build_mod.build(source, out, DEMO_KEYS, Config(), link=True)
        index = manifest.parse((out / "index.json").read_bytes())
        for art in index.artifacts:
            blob = out / art["blob"]
            assert blob.stat().st_nlink == 1, "a copy, not a link"
            assert blob.read_bytes() == (source / art["path"]).read_bytes()
        proc = repobuild("verify", out, "--trust", DEMO_KEYS / "trust.json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        shutil.rmtree(other, ignore_errors=True)
