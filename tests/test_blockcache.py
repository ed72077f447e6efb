"""Packages.xz blocks kept from the last build (repobuild.blockcache): a rebuild that adds a
package compresses the block that holds it and uses the others again, and writes the very
bytes a build without them writes; a kept block that is damaged or not what it claims is never
used."""

from __future__ import annotations

import functools
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


def packages(arts: list[Artifact], blocks: BlockCache | None) -> tuple[bytes, bytes]:
    out = AptJob(arts, Config(), blocks).finish(Unsigned(), WHEN)  # type: ignore[arg-type]
    return out.mutable[f"{FOLDER}/Packages"], out.mutable[f"{FOLDER}/Packages.xz"]


def readable(tmp_path: Path, packed: bytes, plain: bytes) -> None:
    """xz's own test, and apt's own decompressor, read it back as the Packages file."""
    path = tmp_path / "Packages.xz"
    path.write_bytes(packed)
    assert lzma.decompress(packed) == plain
    if shutil.which("xz"):
        subprocess.run(["xz", "--test", str(path)], check=True)
    if APT_HELPER.exists():
        read = subprocess.run([str(APT_HELPER), "cat-file", str(path)], capture_output=True,
                              check=True).stdout
        assert read == plain


def test_a_package_more_compresses_one_block_and_writes_the_same_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "blocks"
    first = BlockCache(folder)
    plain, packed = packages(debs(6000), first)
    count = len(xz.cut(plain))
    assert count >= 8 and (first.made, first.reused) == (count, 0)
    assert len(os.listdir(folder)) == count
    readable(tmp_path, packed, plain)

    again = BlockCache(folder)
    plain2, packed2 = packages(debs(6000, extra=99999), again)  # sorts in the middle
    assert plain2 != plain and again.made <= 2 and again.reused >= count - 2
    assert packed2 == packages(debs(6000, extra=99999), None)[1]  # as without kept blocks
    readable(tmp_path, packed2, plain2)
    again.prune()  # the replaced block goes; those in use stay
    assert len(os.listdir(folder)) == len(xz.cut(plain2))


@pytest.mark.parametrize("damage", ["garbage", "swapped", "cut", "empty"])
def test_a_damaged_kept_block_is_compressed_again(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "blocks"
    plain, packed = packages(debs(6000), BlockCache(folder))
    names = sorted(os.listdir(folder))
    first, second = folder / names[0], folder / names[1]
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
    assert packages(debs(6000), again) == (plain, packed)
    assert again.made == (2 if damage == "swapped" else 1)
    assert again.reused == len(names) - again.made
    readable(tmp_path, packed, plain)


def test_disabled_kept_blocks_are_neither_read_nor_written(tmp_path: Path) -> None:
    folder = tmp_path / "blocks"
    plain, packed = packages(debs(6000), BlockCache(folder))
    off = BlockCache(folder, enabled=False)
    assert packages(debs(6000), off) == (plain, packed)
    assert off.reused == 0 and off.made == len(xz.cut(plain))


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
        return {hashlib.sha256(p).hexdigest() + ".xzb"
                for index in (out / "dists").rglob("Packages")
                for p in xz.cut(index.read_bytes())}

    rb.build(src, out, DEMO_KEYS, Config())
    assert len(blocks_of_packages()) >= 3 and set(os.listdir(kept)) == blocks_of_packages()
    fixture_generator().make_deb(src / "debs", "rbdemo-new", "3.0-1", "amd64")
    rb.build(src, out, DEMO_KEYS, Config())
    assert set(os.listdir(kept)) == blocks_of_packages()
    packed = (out / FOLDER / "Packages.xz").read_bytes()
    readable(tmp_path, packed, (out / FOLDER / "Packages").read_bytes())
    fresh = tmp_path / "fresh"
    rb.build(src, fresh, DEMO_KEYS, Config(), rehash=True)
    assert (fresh / FOLDER / "Packages.xz").read_bytes() == packed

    if not have_apt():
        pytest.skip("apt-get is not installed on this machine")
    served = shutil.copytree(out, tmp_path / "served")
    for index in (served / "dists").rglob("Packages*"):  # only .xz is left for apt to take
        if index.name != "Packages.xz":
            by_hash = index.parent / "by-hash" / "SHA256" / hashlib.sha256(
                index.read_bytes()).hexdigest()
            index.unlink()
            by_hash.unlink()
    with http_server(served) as server:
        apt = make_apt(tmp_path / "apt", server.url, served / "keys" / "repo.gpg")
        update = apt.update()
        assert update.returncode == 0, update.stdout + update.stderr
        assert apt.versions("rbdemo-new") == ["3.0-1"]
