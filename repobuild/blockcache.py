"""Compressed xz blocks and gzip segments of the last build, kept in OUT/.repobuild/xz-blocks/
(never served).

A large Packages file is compressed in blocks cut by its content (repobuild.formats.xz.cut):
after one package is added to 10,000, one block of ~250 KB is new and the others are the last
build's. A kept block is used again only after it has been decompressed back to exactly the
block's bytes (liblzma checks its CRC-64 as well), so a damaged or foreign file costs one
compression, never a wrong Packages.xz. Packages.gz is made of deflate segments of the same
parts (repobuild.formats.gz), kept and checked the same way. Blocks and segments that no build
used are removed when a build has landed (:meth:`BlockCache.prune`).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from repobuild.formats import gz, xz

FOLDER = "xz-blocks"
_SUFFIX = ".xzb"
_GZ_SUFFIX = ".gzs"  # a kept gzip segment: its bytes as they are
T = TypeVar("T")
_HEAD = struct.Struct("<QQ")  # a kept block: its unpadded and uncompressed sizes, then its bytes


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
        holds exactly ``data``, else compressed now and kept. Called from several threads."""
        return self._kept_or_made(data, _SUFFIX, _read, xz.block, _write)

    def segment(self, data: bytes) -> bytes:
        """``data`` as a gzip segment (:func:`repobuild.formats.gz.segment`): the kept one if
        it inflates to exactly ``data``, else compressed now and kept."""
        return self._kept_or_made(data, _GZ_SUFFIX, _read_segment, gz.segment, _keep)

    def _kept_or_made(self, data: bytes, suffix: str, read: Callable[[Path, bytes], T | None],
                      make: Callable[[bytes], T], write: Callable[[Path, T], None]) -> T:
        name = hashlib.sha256(data).hexdigest() + suffix
        path = self.folder / name
        with self._lock:
            self._used.add(name)
        if self.enabled:
            kept = read(path, data)
            if kept is not None:
                with self._lock:
                    self.reused += 1
                return kept
        made = make(data)
        with self._lock:
            self.made += 1
        if self.enabled:
            write(path, made)
        return made

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


def _read(path: Path, data: bytes) -> xz.Block | None:
    try:
        raw = path.read_bytes()
        unpadded, uncompressed = _HEAD.unpack_from(raw)
        block = xz.Block(raw[_HEAD.size:], unpadded, uncompressed)
        if uncompressed != len(data) or lzma.decompress(xz.join([block])) != data:
            return None
    except (OSError, struct.error, lzma.LZMAError, ValueError, IndexError):
        return None
    return block


def _read_segment(path: Path, data: bytes) -> bytes | None:
    try:
        kept = path.read_bytes()
    except OSError:
        return None
    return kept if gz.inflate(kept) == data else None


def _write(path: Path, block: xz.Block) -> None:
    """Kept for the next build; a block that cannot be kept is only compressed again."""
    _keep(path, _HEAD.pack(block.unpadded, block.uncompressed) + block.data)


def _keep(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
