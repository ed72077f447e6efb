"""Compressed xz blocks and gzip segments of the last build, kept in OUT/.repobuild/xz-blocks/
(never served).

A large Packages file is compressed in blocks cut by its content (repobuild.formats.xz.cut):
after one package is added to 10,000, one block of ~120 KB is new and the others are the last
build's. Packages.gz is made of deflate segments of the same parts (repobuild.formats.gz).

A kept block or segment is named by the SHA-256 of the bytes it compresses, and its file holds
that digest again and the SHA-256 of the compressed bytes that follow: it is used again only
when both match (a damaged, cut, swapped or foreign file costs one compression, never a wrong
Packages.xz), which is checked without decompressing it. Decompressing each to compare (as
before) took ~40 ms of CPU at every rebuild of 10,000 packages, in threads whose many short
steps each waited for the build's own thread to let go of the GIL: the apt indices were ready
~0.1 s after they were started. This is local state, trusted as the build cache is (see
repobuild.cache); a file crafted to match would need the build's own state folder.

Kept ones are looked up in the calling thread (:meth:`BlockCache.kept_block`,
:meth:`BlockCache.kept_segment`: a read and a hash each), and only the new ones are compressed
in threads (:meth:`BlockCache.make_block`, :meth:`BlockCache.make_segment`). Blocks and
segments that no build used are removed when a build has landed (:meth:`BlockCache.prune`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from repobuild.formats import gz, xz

FOLDER = "xz-blocks"
_SUFFIX = ".xzb"
_GZ_SUFFIX = ".gzs"  # a kept gzip segment
T = TypeVar("T")
#: a kept block: its unpadded and uncompressed sizes, then the SHA-256 of what it compresses
#: (its name) and of its bytes, then its bytes; a kept segment: the two digests, then its bytes
_HEAD = struct.Struct("<QQ32s32s")
_GZ_HEAD = struct.Struct("<32s32s")


def digest(data: bytes) -> bytes:
    """What names a part's kept block and segment."""
    return hashlib.sha256(data).digest()


class BlockCache:
    def __init__(self, folder: Path, *, enabled: bool = True) -> None:
        self.folder = folder
        self.enabled = enabled
        self._used: set[str] = set()
        self._lock = threading.Lock()
        self.reused = 0  # blocks taken from the folder by this build
        self.made = 0  # blocks compressed by this build

    def block(self, data: bytes) -> xz.Block:
        """``data`` as an xz block (:func:`repobuild.formats.xz.block`): the kept one if it
        is the one of exactly ``data``, else compressed now and kept."""
        name = digest(data)
        kept = self.kept_block(data, name)
        return kept if kept is not None else self.make_block(data, name)

    def segment(self, data: bytes) -> bytes:
        """``data`` as a gzip segment (:func:`repobuild.formats.gz.segment`): the kept one if
        it is the one of exactly ``data``, else compressed now and kept."""
        name = digest(data)
        kept = self.kept_segment(data, name)
        return kept if kept is not None else self.make_segment(data, name)

    def kept_block(self, data: bytes, name: bytes) -> xz.Block | None:
        """The kept block of ``data`` (whose :func:`digest` is ``name``), or None."""
        return self._kept(name, _SUFFIX, lambda raw: _read_block(raw, name, len(data)))

    def kept_segment(self, data: bytes, name: bytes) -> bytes | None:
        """The kept gzip segment of ``data`` (whose :func:`digest` is ``name``), or None."""
        return self._kept(name, _GZ_SUFFIX, lambda raw: _read_segment(raw, name))

    def make_block(self, data: bytes, name: bytes) -> xz.Block:
        """``data`` compressed as an xz block, and kept (from any thread)."""
        block = xz.block(data)
        self._made(name, _SUFFIX, lambda: _HEAD.pack(
            block.unpadded, block.uncompressed, name, digest(block.data)) + block.data)
        return block

    def make_segment(self, data: bytes, name: bytes) -> bytes:
        """``data`` compressed as a gzip segment, and kept (from any thread)."""
        segment = gz.segment(data)
        self._made(name, _GZ_SUFFIX, lambda: _GZ_HEAD.pack(name, digest(segment)) + segment)
        return segment

    def _kept(self, name: bytes, suffix: str, read: Callable[[bytes], T | None]) -> T | None:
        file = name.hex() + suffix
        with self._lock:
            self._used.add(file)
        if not self.enabled:
            return None
        try:
            kept = read((self.folder / file).read_bytes())
        except (OSError, struct.error):
            return None
        if kept is not None:
            with self._lock:
                self.reused += 1
        return kept

    def _made(self, name: bytes, suffix: str, content: Callable[[], bytes]) -> None:
        file = name.hex() + suffix
        with self._lock:
            self._used.add(file)
            self.made += 1
        if self.enabled:
            _keep(self.folder / file, content())

    def prune(self) -> None:
        """Remove the kept blocks that this build did not use (after it has landed)."""
        if not self.enabled:
            return
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:  # and what a killed build left half-written
            if name not in self._used:
                (self.folder / name).unlink(missing_ok=True)


def _read_block(raw: bytes, name: bytes, size: int) -> xz.Block | None:
    unpadded, uncompressed, named, hashed = _HEAD.unpack_from(raw)
    data = raw[_HEAD.size:]
    if named != name or uncompressed != size or hashed != digest(data):
        return None
    return xz.Block(data, unpadded, uncompressed)


def _read_segment(raw: bytes, name: bytes) -> bytes | None:
    named, hashed = _GZ_HEAD.unpack_from(raw)
    data = raw[_GZ_HEAD.size:]
    return data if named == name and hashed == digest(data) else None


def _keep(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
