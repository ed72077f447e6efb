"""Packages.xz blocks and Packages.gz segments kept from the last build (repobuild.blockcache):
a rebuild that adds a package compresses the block and the segment that hold it and uses the
others again, and writes the very bytes a build without them writes; a kept block or segment
that is damaged or not what it claims is never used."""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

import repobuild.aptrepo as aptrepo
import repobuild.build as rb
from repobuild.aptrepo import AptJob
from repobuild.blockcache import BlockCache
from repobuild.config import Config
from repobuild.formats import xz
from repobuild.formats.apt import gzip_bytes
from repobuild.formats.deb import DebInfo
from repobuild.model import Artifact
from tests.clients import DEMO_KEYS, FIXTURES, fixture_generator, have_apt, http_server, make_apt

APT_HELPER = Path("/usr/lib/apt/apt-helper")
FOLDER = "dists/stable/main/binary-amd64"
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


class Unsigned:
    def clearsign(self, data: bytes) -> bytes:
        return data

    def sign(self, data: bytes) -> bytes:
        return b""


def debs(count: int, extra: int | None = None) -> list[Artifact]:
    out = []
    for i in [*range(count), *([] if extra is None else [extra])]:
        control = (f"Package: pkg{i:05d}\nVersion: 1.0-{i}\nArchitecture: amd64\n"
                   f"Description: package {i}\n {'x' * (200 + i % 97)}")
        art = Artifact(path=f"pkg{i}_1.0_amd64.deb", filename=f"pkg{i}_1.0_amd64.deb",
                       kind="deb", size=1000 + i, sha256=f"{i:064x}")
        art.deb = DebInfo(f"pkg{i:05d}", f"1.0-{i}", "amd64", control)
        out.append(art)
    return out


def packages(arts: list[Artifact], blocks: BlockCache | None) -> tuple[bytes, bytes, bytes]:
    out = AptJob(arts, Config(), blocks).finish(Unsigned(), WHEN)  # type: ignore[arg-type]
    return (out.mutable[f"{FOLDER}/Packages"], out.mutable[f"{FOLDER}/Packages.xz"],
            out.mutable[f"{FOLDER}/Packages.gz"])


def readable(tmp_path: Path, packed: bytes, plain: bytes, name: str = "Packages.xz") -> None:
    """xz's or gzip's own test, and apt's own decompressor, read it back as the Packages
    file."""
    path = tmp_path / name
    path.write_bytes(packed)
    if name.endswith(".xz"):
        assert lzma.decompress(packed) == plain
        if shutil.which("xz"):
            subprocess.run(["xz", "--test", str(path)], check=True)
    else:
        assert gzip.decompress(packed) == plain
        subprocess.run(["gzip", "--test", str(path)], check=True)
        zcat = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True)
        assert zcat.stdout == plain
    if APT_HELPER.exists():
        read = subprocess.run([str(APT_HELPER), "cat-file", str(path)], capture_output=True,
                              check=True).stdout
        assert read == plain


def test_a_package_more_compresses_one_block_and_writes_the_same_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "blocks"
    first = BlockCache(folder)
    plain, packed, packed_gz = packages(debs(6000), first)
    count = len(xz.cut(plain))
    assert count >= 8 and (first.made, first.reused) == (2 * count, 0)
    assert len(os.listdir(folder)) == 2 * count  # a block and a segment per part
    readable(tmp_path, packed, plain)
    readable(tmp_path, packed_gz, plain, "Packages.gz")
    # as gzip -9 of the whole, nearly: ~3 % larger here, ~2.3 % for the bench's 10,000 packages
    # (blocks of ~120 KB, so that a rebuild compresses little again; see repobuild.formats.xz)
    assert len(packed_gz) < 1.04 * len(gzip_bytes(plain))

    again = BlockCache(folder)
    plain2, packed2, packed2_gz = packages(debs(6000, extra=99999), again)  # in the middle
    assert plain2 != plain and again.made <= 4 and again.reused >= 2 * count - 4
    assert (packed2, packed2_gz) == packages(debs(6000, extra=99999), None)[1:]  # as without
    readable(tmp_path, packed2, plain2)
    readable(tmp_path, packed2_gz, plain2, "Packages.gz")
    again.prune()  # the replaced block and segment go; those in use stay
    assert len(os.listdir(folder)) == 2 * len(xz.cut(plain2))


@pytest.mark.parametrize("suffix", [".xzb", ".gzs"])
@pytest.mark.parametrize("damage", ["garbage", "swapped", "cut", "empty"])
def test_a_damaged_kept_block_is_compressed_again(tmp_path: Path, damage: str,
                                                  suffix: str) -> None:
    folder = tmp_path / "blocks"
    plain, packed, packed_gz = packages(debs(6000), BlockCache(folder))
    names = sorted(os.listdir(folder))
    first, second = (folder / name for name in [n for n in names if n.endswith(suffix)][:2])
    if damage == "garbage":
        first.write_bytes(os.urandom(first.stat().st_size))
    elif damage == "swapped":  # a valid block, but of other bytes than its name says
        data = second.read_bytes()
        second.write_bytes(first.read_bytes())
        first.write_bytes(data)
    elif damage == "cut":
        first.write_bytes(first.read_bytes()[:-9])
    else:
        first.write_bytes(b"")
    again = BlockCache(folder)
    assert packages(debs(6000), again) == (plain, packed, packed_gz)
    assert again.made == (2 if damage == "swapped" else 1)
    assert again.reused == len(names) - again.made
    readable(tmp_path, packed, plain)
    readable(tmp_path, packed_gz, plain, "Packages.gz")


def test_disabled_kept_blocks_are_neither_read_nor_written(tmp_path: Path) -> None:
    folder = tmp_path / "blocks"
    plain, packed, packed_gz = packages(debs(6000), BlockCache(folder))
    off = BlockCache(folder, enabled=False)
    assert packages(debs(6000), off) == (plain, packed, packed_gz)
    assert off.reused == 0 and off.made == 2 * len(xz.cut(plain))


def test_rebuild_uses_kept_blocks_and_apt_reads_the_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a whole build (blocks made small, so that the fixture's Packages files have
    several):
    a rebuild with one more package keeps exactly the blocks of its Packages files, writes what
    a build without kept blocks writes, and real apt-get, isolated, lists the new package from
    Packages.xz."""
    monkeypatch.setattr(aptrepo, "XZ_SPLIT_BYTES", 1)
    monkeypatch.setattr(xz, "cut", functools.partial(xz.cut, min_size=1, every=1))
    monkeypatch.setenv("REPOBUILD_WORKERS", "0")
    src = shutil.copytree(FIXTURES, tmp_path / "release")
    out = tmp_path / "out"
    kept = out / ".repobuild" / "xz-blocks"

    def blocks_of_packages() -> set[str]:
        return {hashlib.sha256(p).hexdigest() + suffix
                for index in (out / "dists").rglob("Packages")
                for p in xz.cut(index.read_bytes()) for suffix in (".xzb", ".gzs")}

    rb.build(src, out, DEMO_KEYS, Config())
    assert len(blocks_of_packages()) >= 3 and set(os.listdir(kept)) == blocks_of_packages()
    fixture_generator().make_deb(src / "debs", "rbdemo-new", "3.0-1", "amd64")
    rb.build(src, out, DEMO_KEYS, Config())
    assert set(os.listdir(kept)) == blocks_of_packages()
    packed = (out / FOLDER / "Packages.xz").read_bytes()
    packed_gz = (out / FOLDER / "Packages.gz").read_bytes()
    readable(tmp_path, packed, (out / FOLDER / "Packages").read_bytes())
    readable(tmp_path, packed_gz, (out / FOLDER / "Packages").read_bytes(), "Packages.gz")
    fresh = tmp_path / "fresh"
    rb.build(src, fresh, DEMO_KEYS, Config(), rehash=True)
    assert (fresh / FOLDER / "Packages.xz").read_bytes() == packed
    assert (fresh / FOLDER / "Packages.gz").read_bytes() == packed_gz

    if not have_apt():
        pytest.skip("apt-get is not installed on this machine")
    for only in ("Packages.xz", "Packages.gz"):  # apt has only that one to take
        served = shutil.copytree(out, tmp_path / f"served-{only}")
        for index in (served / "dists").rglob("Packages*"):
            if index.name != only:
                by_hash = index.parent / "by-hash" / "SHA256" / hashlib.sha256(
                    index.read_bytes()).hexdigest()
                index.unlink()
                by_hash.unlink()
        with http_server(served) as server:
            apt = make_apt(tmp_path / f"apt-{only}", server.url, served / "keys" / "repo.gpg")
            update = apt.update()
            assert update.returncode == 0, update.stdout + update.stderr
            assert apt.versions("rbdemo-new") == ["3.0-1"], only
