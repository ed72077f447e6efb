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
    pieces = xz.split(data, parts)
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


def test_split_keeps_everything_and_never_cuts_empty() -> None:
    assert xz.split(b"no separator here", 2) == [b"no separator here"]
    assert xz.split(b"a\n\n", 2) == [b"a\n\n"]
    assert xz.split(b"a\n\nb\n\nc", 2) == [b"a\n\nb\n\n", b"c"]  # cut after the middle
    assert xz.split(b"a\n\nb\n\nc", 3) == [b"a\n\nb\n\n", b"c"]  # at most 3 parts
    with pytest.raises(ValueError):
        xz.block(b"")


def test_a_large_packages_file_is_compressed_in_two_blocks(tmp_path: Path) -> None:
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
    assert xz_tool_counts(path) in (None, (1, 2))
    # and a small one stays one block, as before
    small = AptJob(debs[:10], Config()).finish(Unsigned(), datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    assert small.mutable[f"{folder}/Packages.xz"] == xz.compress(
        small.mutable[f"{folder}/Packages"])
