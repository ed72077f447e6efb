"""Packages.xz in blocks compressed at once (repobuild.formats.xz): one standard xz stream that
liblzma, the xz tool and apt's own decompressor read back as the file, and that for one block is
liblzma's stream byte for byte."""

from __future__ import annotations

import lzma
import random
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from repobuild.aptrepo import XZ_SPLIT_BYTES, AptJob
from repobuild.config import Config
from repobuild.formats import xz
from repobuild.formats.deb import DebInfo
from repobuild.model import Artifact

APT_HELPER = Path("/usr/lib/apt/apt-helper")


def stanzas(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return b"\n".join(
        f"Package: pkg{i}\nVersion: 1.{i}\nDescription: {rng.randbytes(40).hex()}\n".encode()
        for i in range(n)
    )


def xz_tool_counts(path: Path) -> tuple[int, int] | None:
    """(streams, blocks) of an .xz file as the xz tool lists it, after its own --test; None
    without the tool."""
    if not shutil.which("xz"):
        return None
    subprocess.run(["xz", "--test", str(path)], check=True)
    listing = subprocess.run(["xz", "--robot", "--list", str(path)], capture_output=True,
                             text=True, check=True).stdout
    totals = next(line.split("\t") for line in listing.splitlines() if line.startswith("totals"))
    return int(totals[1]), int(totals[2])


def test_one_block_joined_is_liblzmas_own_stream() -> None:
    data = stanzas(500)
    assert xz.join([xz.block(data)]) == xz.compress(data, xz.BLOCK_FILTERS)


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_blocks_make_one_stream_of_the_whole(tmp_path: Path, parts: int) -> None:
    data = stanzas(3000)
    pieces = xz.cut(data, min_size=len(data) // parts, max_size=len(data) // parts, every=1)
    assert len(pieces) == parts and b"".join(pieces) == data
    assert all(p.endswith(b"\n\n") for p in pieces[:-1])
    stream = xz.join([xz.block(p) for p in pieces])
    assert lzma.decompress(stream) == data
    path = tmp_path / "Packages.xz"
    path.write_bytes(stream)
    assert xz_tool_counts(path) in (None, (1, parts))  # one stream, that many blocks
    if not APT_HELPER.exists():
        pytest.skip("apt-helper (apt's own decompression) is not installed")
    read = subprocess.run([str(APT_HELPER), "cat-file", str(path)], capture_output=True,
                          check=True).stdout
    assert read == data


def test_cut_keeps_everything_and_never_cuts_empty() -> None:
    assert xz.cut(b"no separator here") == [b"no separator here"]
    assert xz.cut(b"") == [b""]
    assert xz.cut(b"a\n\n", min_size=1, every=1) == [b"a\n\n"]
    assert xz.cut(b"a\n\nb\n\nc", min_size=1, every=1) == [b"a\n\n", b"b\n\n", b"c"]
    assert xz.cut(b"a\n\nbb\n\nc", min_size=4, every=1) == [b"a\n\nbb\n\n", b"c"]
    assert xz.cut(b"a\n\nbb\n\nc", min_size=99, max_size=5) == [b"a\n\nbb\n\n", b"c"]
    with pytest.raises(ValueError):
        xz.block(b"")


def test_cut_is_by_content_an_insertion_changes_the_parts_around_it() -> None:
    """Cut where the content says, an insertion or a removal leaves the other parts as they
    were: those are the blocks a rebuild uses again."""
    data = stanzas(20000)
    parts = xz.cut(data)
    assert b"".join(parts) == data and len(parts) >= 8
    assert all(p.endswith(b"\n\n") and xz.CUT_MIN <= len(p) < xz.CUT_MAX + 100
               for p in parts[:-1])
    assert xz.cut(data) == parts
    stanza_list = data.split(b"\n\n")
    for at in (0, 7, 5000, 12345, len(stanza_list) - 1):
        inserted = b"\n\n".join(stanza_list[:at] + [b"Package: new\nVersion: 1"]
                                 + stanza_list[at:])
        removed = b"\n\n".join(stanza_list[:at] + stanza_list[at + 1:])
        for changed in (inserted, removed):
            new_parts = xz.cut(changed)
            assert b"".join(new_parts) == changed
            assert len(set(new_parts) - set(parts)) <= 3, at
            assert len(set(parts) - set(new_parts)) <= 3, at


def test_a_large_packages_file_is_compressed_in_blocks(tmp_path: Path) -> None:
    debs = []
    for i in range(XZ_SPLIT_BYTES // 400 + 10):
        control = f"Package: pkg{i}\nVersion: 1.0-{i}\nArchitecture: amd64\nDescription: {i}"
        control += "\n " + "x" * 300
        art = Artifact(path=f"pkg{i}_1.0-{i}_amd64.deb", filename=f"pkg{i}_1.0-{i}_amd64.deb",
                       kind="deb", size=1000 + i, sha256=f"{i:064x}")
        art.deb = DebInfo(f"pkg{i}", f"1.0-{i}", "amd64", control)
        debs.append(art)

    class Unsigned:
        def clearsign(self, data: bytes) -> bytes:
            return data

        def sign(self, data: bytes) -> bytes:
            return b""

    out = AptJob(debs, Config()).finish(Unsigned(), datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    folder = "dists/stable/main/binary-amd64"
    plain = out.mutable[f"{folder}/Packages"]
    packed = out.mutable[f"{folder}/Packages.xz"]
    assert len(plain) >= XZ_SPLIT_BYTES
    assert lzma.decompress(packed) == plain
    path = tmp_path / "Packages.xz"
    path.write_bytes(packed)
    assert xz_tool_counts(path) in (None, (1, len(xz.cut(plain))))
    assert len(xz.cut(plain)) >= 2
    # and a small one stays one block, as before
    small = AptJob(debs[:10], Config()).finish(Unsigned(), datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    assert small.mutable[f"{folder}/Packages.xz"] == xz.compress(
        small.mutable[f"{folder}/Packages"])
