"""Wheels and sdists: core metadata read from bytes fed once, in order.

A wheel's METADATA sits near the end of the zip (the .dist-info folder comes last and the
central directory follows it), so the inspector keeps only the file's tail; a read that would
reach before the tail asks the caller for the file once more (``NeedsFullFile``), which no
ordinary wheel does. An sdist's PKG-INFO is found by a streaming gunzip + tar scan that inflates
only as much as the scan needs.

The common case is read here directly: a plain zip's central directory and member
(:class:`_PlainZip`), the header block of METADATA / PKG-INFO (:func:`_plain_headers`). Whatever
those readers are not sure to read exactly as :mod:`zipfile` and :mod:`email.parser` do (zip64,
comments, encryption, other compression, CRLF or 8-bit headers, ...) goes to those modules, so
the results and the errors are always theirs.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

if TYPE_CHECKING:  # zipfile, email's parser and packaging's specifiers are imported where
    import zipfile  # used: a rebuild that reads no distribution never needs them (~10 ms)

TAIL_BYTES = 4 << 20
_MAX_METADATA = 16 << 20


class DistError(ValueError):
    """The bytes are not a valid wheel or sdist."""


class NeedsFullFile(Exception):
    """The kept tail was not enough; the caller should retry on the whole file."""


# not frozen (nothing changes it once parsed): a frozen dataclass is made at a third of the
# speed, and a build makes one for each of 100,000 cached artifacts
@dataclass(slots=True)
class DistInfo:
    name: str  # as METADATA spells it
    version: str
    requires_python: str | None
    summary: str
    metadata: bytes  # the METADATA / PKG-INFO bytes, served as PEP 658 .metadata


# -- core metadata -----------------------------------------------------------------------------

# email.feedparser.headerRE: a header line, a continuation line, or a Unix "From " line
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
# The header block as the simple reader takes it: header lines ("Name:" with a name of one or
# more of headerRE's characters), each followed by its continuation lines; no carriage return.
_PLAIN_BLOCK = re.compile(
    rb"(?:[\041-\071\073-\176]+:[^\r\n]*(?:\n|\Z)(?:[\t ][^\r\n]*(?:\n|\Z))*)*"
)
_WANTED_FIELD = re.compile(
    rb"^(name|version|requires-python|summary):([^\n]*(?:\n[\t ][^\n]*)*)", re.I | re.M
)


def _plain_headers(raw: bytes) -> dict[str, str] | None:
    """Name, Version, Requires-Python and Summary (those present, by lower-case name) as
    ``BytesParser(policy=compat32).parsebytes(raw, headersonly=True).get(...)`` returns them:
    the first field of that name in any case; the rest of its first line from the first
    non-blank, its continuation lines appended as they are, the line end stripped.

    None where email.parser might read the header block otherwise: a carriage return (it ends
    lines there too), a "From " line, a line that is only ":..." or a first line that is a
    continuation (defects it skips), or a wanted value with 8-bit bytes (which it returns as an
    email.header.Header, not a str).
    """
    end = _PLAIN_BLOCK.match(raw).end()  # type: ignore[union-attr]  # (it matches "")
    if end < len(raw) and _HEADER_LINE.match(raw, end):
        return None  # the next line is one email.parser would still take as a header
    found: dict[str, bytes] = {}
    for m in _WANTED_FIELD.finditer(raw, 0, end):
        found.setdefault(m[1].lower().decode(), m[2])
    try:
        return {key: value.lstrip(b" \t").decode("ascii") for key, value in found.items()}
    except UnicodeDecodeError:
        return None


@lru_cache(maxsize=256)
def _valid_specifier(text: str) -> bool:
    """Whether ``text`` parses as a specifier set; the same few Requires-Python values recur
    in thousands of wheels."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(text)
    except InvalidSpecifier:
        return False
    return True


def parse_metadata(raw: bytes, what: str) -> tuple[str, str, str | None, str]:
    plain = _plain_headers(raw)
    get: Callable[[str], Any]  # a str, or email.header.Header for 8-bit values
    if plain is not None:
        get = lambda key: plain.get(key.lower())  # noqa: E731
    else:
        from email.parser import BytesParser
        from email.policy import compat32

        get = BytesParser(policy=compat32).parsebytes(raw, headersonly=True).get
    name = (get("Name") or "").strip()
    version = (get("Version") or "").strip()
    if not name or not version:
        raise DistError(f"{what} lacks Name or Version")
    try:
        Version(version)
    except InvalidVersion:
        raise DistError(f"{what} has an invalid Version {version!r}") from None
    rp = get("Requires-Python")
    requires_python = str(rp).strip() if rp else None
    if requires_python and not _valid_specifier(requires_python):
        raise DistError(f"{what} has an invalid Requires-Python {requires_python!r}")
    summary = str(get("Summary") or "").strip()
    return name, version, requires_python, summary


# -- zip: wheels and zip sdists ----------------------------------------------------------------


class _TailFile(io.RawIOBase):
    """A read-only file over the last bytes (at most TAIL_BYTES) of a larger file.

    It holds the chunks as they were fed: :meth:`span` hands out the few bytes a plain zip's
    reader needs without joining them, and the tail is joined only if zipfile reads it.
    """

    def __init__(self, chunks: list[bytes], total: int) -> None:
        self._chunks, self._total, self._pos = chunks, total, 0
        self._start = total - min(sum(map(len, chunks)), TAIL_BYTES)
        self._joined: bytes | None = None

    @property
    def total(self) -> int:
        return self._total

    def span(self, start: int, end: int) -> bytes | memoryview | None:
        """Bytes ``start`` to ``end`` of the file; None when not all of them are kept."""
        if start < self._start or end > self._total or start > end:
            return None
        parts: list[memoryview] = []
        hi = self._total
        for chunk in reversed(self._chunks):  # they end at the file's end
            lo = hi - len(chunk)
            if lo < end and start < hi:
                parts.append(memoryview(chunk)[max(start - lo, 0) : min(end, hi) - lo])
            if lo <= start:
                break
            hi = lo
        if len(parts) == 1:
            return parts[0]
        return b"".join(reversed(parts))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._total}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._total - self._pos
        if size and self._pos < self._start and self._pos < self._total:
            raise NeedsFullFile
        if self._joined is None:
            self._joined = b"".join(self._chunks)[-TAIL_BYTES:]
        lo = self._pos - self._start
        data = self._joined[lo : lo + size]
        self._pos += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class TailInspector:
    """Keeps the last TAIL_BYTES of a stream (or all of it, for small files).

    Each kept chunk is copied once, as it comes (the reader reuses its buffer), and dropped
    when the later ones cover TAIL_BYTES; joining them is left to the rare reader that needs
    it. Given the stream's size, the chunks before its tail are not copied at all.
    """

    def __init__(self, expected: int | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self.total = 0
        # the stream's size when known: chunks wholly before its last TAIL_BYTES are not kept
        self._skip_below = expected - TAIL_BYTES if expected is not None else -1

    def feed(self, chunk: bytes | memoryview) -> None:
        """Keeps a copy of ``chunk`` (a view into a buffer reused for the next read) only when
        it can hold part of the tail."""
        self.total += len(chunk)
        if self.total <= self._skip_below:
            return
        self._chunks.append(bytes(chunk))
        self._held += len(chunk)
        while self._held - len(self._chunks[0]) >= TAIL_BYTES:
            self._held -= len(self._chunks.popleft())

    def tail_file(self) -> _TailFile:
        return _TailFile(list(self._chunks), self.total)


_EOCD = struct.Struct("<4s4H2LH")  # zipfile.structEndArchive
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # zipfile.structCentralDir
_CENTRAL_SKIM = struct.Struct("<4s2xBxH18x3H")  # its signature, version, flags and lengths
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # zipfile.structFileHeader
_EXTRA = struct.Struct("<HH")
_UTF8_NAME = 0x800
# encrypted (bit 0), compressed patched data (bit 5), strong encryption (bit 6)
_UNREADABLE_FLAGS = 0x01 | 0x20 | 0x40
_WHEEL_METADATA = b".dist-info/METADATA"
_ZIP_PKG_INFO = b"/PKG-INFO"


class _Entry(NamedTuple):
    name: str  # as zipfile.ZipInfo.filename
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compress_size: int
    file_size: int
    offset: int  # of the local header


class _PlainZip:
    """A zip's central directory and a member read from the kept tail, where that is sure to
    give what :mod:`zipfile` gives: :meth:`of` is None, and :meth:`read` None, for anything
    else (zip64, an archive comment, bytes before the tail, a corrupt or unusual record, ...),
    and the caller asks zipfile.

    Every entry is checked as zipfile checks it, but only the top-level names ending in the
    wanted suffix (``<dir>/<...suffix>``, the only ones the callers look for) are decoded and
    kept: a big wheel has thousands of entries.
    """

    def __init__(self, tail: _TailFile, hits: list[_Entry], offsets: list[int],
                 start_dir: int) -> None:
        self._tail, self.hits, self._offsets, self._start_dir = tail, hits, offsets, start_dir

    @classmethod
    def of(cls, fileobj: io.RawIOBase | io.BufferedIOBase, suffix: bytes) -> _PlainZip | None:
        if not isinstance(fileobj, _TailFile) or os.sep != "/":
            return None
        tail, total = fileobj, fileobj.total
        # End of central directory, last in the file (no comment), and no zip64 locator
        # before it: zipfile's _EndRecData / _EndRecData64 find the same record.
        end = tail.span(total - 22 - 20, total)
        if end is None or end[:4] == b"PK\x06\x07":
            return None
        sig, _disk, _disk_dir, _n, _n_total, size_cd, offset_cd, comment_len = _EOCD.unpack(
            end[20:]
        )
        if sig != b"PK\x05\x06" or comment_len:
            return None
        location = total - 22
        concat = location - size_cd - offset_cd  # bytes before the archive, if any
        start_dir = location - size_cd
        span = tail.span(start_dir, location) if start_dir >= 0 else None
        if span is None:
            return None
        cd = bytes(span)
        hits: list[_Entry] = []
        offsets: list[int] = []
        pos = 0
        skim, find, count, endswith = _CENTRAL_SKIM.unpack_from, cd.find, cd.count, cd.endswith
        while pos < size_cd:
            if pos + 46 > size_cd:
                return None
            sig, extract_version, flags, name_len, extra_len, comment_len = skim(cd, pos)
            name_start = pos + 46
            name_end = name_start + name_len
            after = name_end + extra_len + comment_len
            if sig != b"PK\x01\x02" or after > size_cd or extract_version > 63:
                return None
            if extra_len and not _plain_extra(cd[name_end : name_end + extra_len]):
                return None
            if flags & _UTF8_NAME:
                try:
                    cd[name_start:name_end].decode("utf-8")
                except UnicodeDecodeError:
                    return None
            # zipfile cuts a name at its first NUL; "/" and the ASCII suffix are the same bytes
            # in UTF-8 and in cp437, so the test holds on the bytes as on the decoded name
            stop = find(b"\0", name_start, name_end)
            stop = name_end if stop < 0 else stop
            if endswith(suffix, name_start, stop) and count(b"/", name_start, stop) == 1:
                (_s, _cv, _cs, _ev, _r, _f, method, _t, _d, crc, csize, fsize, _nl, _el, _cl,
                 _vol, _ia, _ea, offset) = _CENTRAL.unpack_from(cd, pos)
                raw_name = cd[name_start:name_end]
                name = raw_name[: stop - name_start].decode(
                    "utf-8" if flags & _UTF8_NAME else "cp437")
                hits.append(_Entry(name, raw_name, flags, method, crc, csize, fsize,
                                   offset + concat))
            offsets.append(int.from_bytes(cd[pos + 42 : pos + 46], "little") + concat)
            pos = after
        return cls(tail, hits, offsets, start_dir)

    @property
    def names(self) -> list[str]:
        """The names zipfile's namelist() gives that end in the suffix, in order."""
        return [e.name for e in self.hits]

    def info(self, name: str) -> _Entry:
        """The last entry of that name, as zipfile's getinfo."""
        return next(e for e in reversed(self.hits) if e.name == name)

    def read(self, entry: _Entry) -> bytes | None:
        """The member's bytes, whole and with the right CRC-32; None: ask zipfile."""
        if entry.flags & _UNREADABLE_FLAGS or entry.method not in (0, 8):
            return None
        head = self._tail.span(entry.offset, entry.offset + 30)
        if head is None:
            return None
        sig, _v, _s, flags, _m, _t, _d, _crc, _cs, _fs, name_len, extra_len = _LOCAL.unpack(head)
        if sig != b"PK\x03\x04" or (flags ^ entry.flags) & _UTF8_NAME:
            return None
        name_end = entry.offset + 30 + name_len
        if self._tail.span(entry.offset + 30, name_end) != entry.raw_name:
            return None
        start = name_end + extra_len
        end = start + entry.compress_size
        # no other entry inside the member's bytes (newer Pythons refuse overlapping entries)
        if end > self._start_dir or sum(entry.offset <= o < end for o in self._offsets) != 1:
            return None
        data = self._tail.span(start, end)
        if data is None:
            return None
        if entry.method == 0:
            if entry.compress_size != entry.file_size:
                return None
            out = bytes(data)
        else:
            inflate = zlib.decompressobj(-15)
            try:
                out = inflate.decompress(data)
            except zlib.error:
                return None
            if not inflate.eof or len(out) != entry.file_size:
                return None
        return out if zlib.crc32(out) == entry.crc else None


def _plain_extra(extra: bytes) -> bool:
    """An extra field zipfile's _decodeExtra reads without error and without zip64 values."""
    pos = 0
    while len(extra) - pos >= 4:
        kind, size = _EXTRA.unpack_from(extra, pos)
        if kind == 0x0001 or pos + 4 + size > len(extra):
            return False
        pos += 4 + size
    return True


def _open_zip(fileobj: io.RawIOBase | io.BufferedIOBase) -> zipfile.ZipFile:
    import zipfile

    try:
        return zipfile.ZipFile(fileobj)  # type: ignore[arg-type]
    except zipfile.BadZipFile as exc:
        raise DistError(f"not a valid zip archive: {exc}") from None


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    import zipfile

    info = zf.getinfo(name)
    if info.file_size > _MAX_METADATA:
        raise DistError(f"{name} is implausibly large")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DistError(f"cannot read {name}: {exc}") from None


def _read_plain_member(
    plain: _PlainZip, name: str, fileobj: io.RawIOBase | io.BufferedIOBase
) -> bytes:
    """:func:`_read_member`, by the plain reader where it can."""
    entry = plain.info(name)
    if entry.file_size > _MAX_METADATA:
        raise DistError(f"{name} is implausibly large")
    data = plain.read(entry)
    if data is not None:
        return data
    with _open_zip(fileobj) as zf:
        return _read_member(zf, name)


def _top_level(names: list[str], suffix: str) -> list[str]:
    """The ``<dir>/<...suffix>`` names."""
    return [n for n in names if n.count("/") == 1 and n.endswith(suffix)]


def wheel_info(filename: str, fileobj: io.RawIOBase | io.BufferedIOBase) -> DistInfo:
    """Check a wheel: its file name parses and agrees with its .dist-info/METADATA."""
    try:
        fn_name, fn_version, _build, _tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise DistError(f"invalid wheel file name: {exc}") from None
    plain = _PlainZip.of(fileobj, _WHEEL_METADATA)
    if plain is not None:
        raw = _read_plain_member(plain, _metadata_name(plain.names), fileobj)
    else:
        with _open_zip(fileobj) as zf:
            raw = _read_member(zf, _metadata_name(_top_level(zf.namelist(), ".dist-info/METADATA")))
    name, version, requires_python, summary = parse_metadata(raw, "METADATA")
    if canonicalize_name(name) != fn_name or Version(version) != fn_version:
        raise DistError(
            f"file name says {fn_name} {fn_version} but METADATA says {name} {version}"
        )
    return DistInfo(name, version, requires_python, summary, raw)


def _metadata_name(candidates: list[str]) -> str:
    if not candidates:
        raise DistError("wheel has no .dist-info/METADATA")
    if len(candidates) > 1:
        raise DistError(f"wheel has several METADATA files: {', '.join(sorted(candidates))}")
    return candidates[0]


def sdist_name_version(filename: str) -> tuple[str, str] | None:
    try:
        name, version = parse_sdist_filename(filename)
    except (InvalidSdistFilename, InvalidVersion):
        return None
    return str(name), str(version)


def zip_sdist_info(fileobj: io.RawIOBase | io.BufferedIOBase) -> DistInfo | None:
    """A .zip is an sdist when it holds exactly one top-level ``<dir>/PKG-INFO``."""
    plain = _PlainZip.of(fileobj, _ZIP_PKG_INFO)
    if plain is not None:
        if len(plain.hits) != 1:
            return None
        return _dist_from_pkginfo(_read_plain_member(plain, plain.hits[0].name, fileobj))
    import zipfile

    try:
        zf = zipfile.ZipFile(fileobj)  # type: ignore[arg-type]
    except zipfile.BadZipFile:
        return None
    with zf:
        hits = _top_level(zf.namelist(), "/PKG-INFO")
        if len(hits) != 1:
            return None
        raw = _read_member(zf, hits[0])
    return _dist_from_pkginfo(raw)


def _dist_from_pkginfo(raw: bytes) -> DistInfo:
    name, version, requires_python, summary = parse_metadata(raw, "PKG-INFO")
    return DistInfo(name, version, requires_python, summary, raw)


# -- tar: sdists (and a .deb's control.tar) ----------------------------------------------------


class TarHeader(NamedTuple):
    name: bytes  # the name field, up to its first NUL
    prefix: bytes  # the ustar prefix field, up to its first NUL
    ustar: bool  # the magic says ustar (POSIX, or GNU's "ustar  ")
    kind: bytes  # the type flag
    size: int | None  # None: the size field is not an octal number


def _field(block: bytes, start: int, end: int) -> bytes:
    nul = block.find(b"\0", start, end)
    return block[start : nul if nul >= 0 else end]


def tar_header(block: bytes) -> TarHeader:
    """The fields of one 512-byte tar header that the tar walkers here go by (the one tar
    header parser for the sdist scan below and for a .deb's control.tar)."""
    try:
        size: int | None = int(block[124:136].rstrip(b"\0 ").decode() or "0", 8)
    except ValueError:
        size = None
    return TarHeader(
        _field(block, 0, 100), _field(block, 345, 500), block[257:262] == b"ustar",
        block[156:157], size,
    )


_INFLATE_FIRST = 1 << 10  # compressed bytes inflated first: PKG-INFO is often the 2nd entry
_INFLATE_MAX = 64 << 10  # ... doubling up to this much at a time
_INFLATE_OUT = 64 << 10  # at most this much output per step


class TarGzSdistInspector:
    """Streams a .tar.gz looking for a top-level ``<dir>/PKG-INFO``; never keeps file data.

    Each chunk is inflated a step at a time (``max_length``, ``unconsumed_tail``) and scanned
    as it comes, so once PKG-INFO is found (often the first few KB) the rest of the archive is
    hashed but never inflated.
    """

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=31)
        self._step = _INFLATE_FIRST
        self._buf = bytearray()
        self._skip = 0
        self._want: tuple[str, int] | None = None
        self._longname: str | None = None
        self._pax_path: str | None = None
        self.pkg_info: bytes | None = None
        self.broken = False
        self._done = False

    def feed(self, chunk: bytes | memoryview) -> None:
        z = self._z
        view = memoryview(chunk)
        pos = 0
        while not (self._done or self.broken or z.eof):
            data: bytes | memoryview = z.unconsumed_tail
            if not data:
                if pos >= len(view):
                    return
                data = view[pos : pos + self._step]
                pos += len(data)
                self._step = min(2 * self._step, _INFLATE_MAX)
            try:
                out = z.decompress(data, _INFLATE_OUT)
            except zlib.error:
                self.broken = True
                return
            if self._skip and not self._buf:  # inside a member's data: drop it unbuffered
                n = min(self._skip, len(out))
                self._skip -= n
                if n == len(out):
                    continue
                out = out[n:]
            self._buf += out
            self._scan()

    def _scan(self) -> None:
        buf = self._buf
        while not self._done:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    return
                continue
            if self._want is not None:
                kind, size = self._want
                padded = (size + 511) // 512 * 512
                if len(buf) < padded:
                    return
                data = bytes(buf[:size])
                del buf[:padded]
                self._want = None
                self._take(kind, data)
                continue
            if len(buf) < 512:
                return
            header = bytes(buf[:512])
            del buf[:512]
            if header == b"\0" * 512:
                self._done = True
                return
            self._header(header)

    def _header(self, block: bytes) -> None:
        header = tar_header(block)
        if header.size is None:
            self.broken = True
            self._done = True
            return
        size, kind = header.size, header.kind
        name = header.name.decode("utf-8", "replace")
        if header.ustar and header.prefix:
            name = f"{header.prefix.decode('utf-8', 'replace')}/{name}"
        if self._longname is not None:
            name, self._longname = self._longname, None
        if self._pax_path is not None:
            name, self._pax_path = self._pax_path, None
        if kind == b"L":
            self._want = ("longname", size)
        elif kind == b"x":
            self._want = ("pax", size)
        elif kind in (b"0", b"\0") and _is_top_pkginfo(name) and size <= _MAX_METADATA:
            self._want = ("pkginfo", size)
        else:
            self._skip = (size + 511) // 512 * 512

    def _take(self, kind: str, data: bytes) -> None:
        if kind == "longname":
            self._longname = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == "pax":
            for line in data.decode("utf-8", "replace").splitlines():
                _, _, kv = line.partition(" ")
                key, _, value = kv.partition("=")
                if key == "path":
                    self._pax_path = value
        else:
            self.pkg_info = data
            self._done = True

    def finish(self) -> DistInfo | None:
        if self.pkg_info is None:
            return None
        return _dist_from_pkginfo(self.pkg_info)


def _is_top_pkginfo(name: str) -> bool:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return len(parts) == 2 and parts[1] == "PKG-INFO"


_WHEEL_RE = re.compile(r"\.whl$", re.IGNORECASE)


def is_wheel_name(filename: str) -> bool:
    return bool(_WHEEL_RE.search(filename))
