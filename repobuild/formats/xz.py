"""xz files made of several blocks, each compressed on its own (so several at once) and joined
into one standard stream, as ``xz -T`` writes them; every xz reader (liblzma, and so apt, xz
and Python's lzma) reads such a file as one.

The blocks are cut from liblzma's own output: a one-block stream per part, from which the block
and its index record are taken, then a stream header, the blocks in order, an index of them and
a stream footer around them. One block joined this way gives, byte for byte, liblzma's own
stream made with the same filters (BLOCK_FILTERS).

A large Packages file is cut into blocks by its content (:func:`cut`), not by its length, so
that adding or removing a package changes one block (rarely two or three) and every other block
of the last build can be used again (repobuild.blockcache) instead of compressed again.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Sequence
from typing import NamedTuple

# preset 6 with a 2 MiB dictionary: the same output every time, ~25 MB of compressor memory
# instead of ~94 MB (Packages files compress to a few percent either way)
FILTERS = ({"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 2 << 20},)
# a block's: a 1 MiB dictionary, so that two compressors at once hold what one did (a 2 MB
# Packages file in two blocks came out the same size as with 2 MiB)
BLOCK_FILTERS = ({"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20},)

_MAGIC = b"\xfd7zXZ\x00"
_FLAGS = b"\x00\x04"  # stream flags: CRC64 checks
_FOOTER_MAGIC = b"YZ"


class Block(NamedTuple):
    data: bytes  # as it sits in a stream: block header, compressed data, padding, check
    unpadded: int  # its index record: the size without the padding,
    uncompressed: int  # and the size of what it holds


def compress(data: bytes, filters: Sequence[dict[str, int]] = FILTERS) -> bytes:
    """``data`` as a one-block xz stream with CRC64 checks."""
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         filters=list(filters))


def block(data: bytes) -> Block:
    """``data`` (not empty) compressed as one block (BLOCK_FILTERS), for :func:`join`."""
    if not data:
        raise ValueError("an xz block holds at least one byte")
    stream = compress(data, BLOCK_FILTERS)
    backward = int.from_bytes(stream[-8:-4], "little")
    index_start = len(stream) - 12 - (backward + 1) * 4
    if stream[:8] != _MAGIC + _FLAGS or stream[index_start] != 0:
        raise ValueError("unexpected xz stream from liblzma")
    count, pos = _varint(stream, index_start + 1)
    unpadded, pos = _varint(stream, pos)
    uncompressed, pos = _varint(stream, pos)
    if count != 1 or uncompressed != len(data):
        raise ValueError("unexpected xz index from liblzma")
    return Block(stream[12:index_start], unpadded, uncompressed)


def join(blocks: Sequence[Block]) -> bytes:
    """One xz stream of ``blocks``, in order: it decompresses to their data, concatenated."""
    index = bytearray(b"\x00")
    index += _encode_varint(len(blocks))
    for b in blocks:
        index += _encode_varint(b.unpadded) + _encode_varint(b.uncompressed)
    index += bytes(-len(index) % 4)
    index += _crc32(index)
    backward = (len(index) // 4 - 1).to_bytes(4, "little")
    header = _MAGIC + _FLAGS + _crc32(_FLAGS)
    footer = _crc32(backward + _FLAGS) + backward + _FLAGS + _FOOTER_MAGIC
    return b"".join([header, *(b.data for b in blocks), bytes(index), footer])


# content-defined cuts: after a stanza whose CRC-32 is a multiple of CUT_EVERY, once the block
# holds CUT_MIN bytes; always once it holds CUT_MAX. With ~450-byte stanzas the blocks hold
# ~120 KB: a rebuild that adds a package compresses one of them again (~8 ms of xz, where a
# ~250 KB block took ~15 ms, while the build waited for it), for a Packages.xz ~2 % larger.
CUT_MIN = 64 << 10
CUT_MAX = 1 << 20
CUT_EVERY = 128


def cut(data: bytes, sep: bytes = b"\n\n", *, min_size: int = CUT_MIN,
        max_size: int = CUT_MAX, every: int = CUT_EVERY) -> list[bytes]:
    """``data`` cut just after some of its ``sep``, where the content says: after a piece
    (from one ``sep`` to the next) whose CRC-32 is a multiple of ``every``, once the part holds
    ``min_size`` bytes, and always once it holds ``max_size``. The same pieces give the same
    cuts wherever they stand, so an insertion or removal changes only the parts around it.
    None is empty, and together they are ``data``."""
    view = memoryview(data)
    parts: list[bytes] = []
    start = pos = 0
    while (at := data.find(sep, pos)) >= 0:
        end = at + len(sep)
        size = end - start
        if size >= max_size or (size >= min_size and zlib.crc32(view[pos:end]) % every == 0):
            parts.append(data[start:end])
            start = end
        pos = end
    if start < len(data) or not parts:
        parts.append(data[start:])
    return parts


def _crc32(data: bytes | bytearray) -> bytes:
    return zlib.crc32(data).to_bytes(4, "little")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("xz integer too long")
