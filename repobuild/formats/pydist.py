"""Wheels and sdists: core metadata read from bytes fed once, in order.

A wheel's METADATA sits near the end of the zip (the .dist-info folder comes last and the
central directory follows it), so the inspector keeps only the file's tail; a read that would
reach before the tail asks the caller for the file once more (``NeedsFullFile``), which no
ordinary wheel does. An sdist's PKG-INFO is found by a streaming gunzip + tar scan.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

TAIL_BYTES = 4 << 20
_MAX_METADATA = 16 << 20


class DistError(ValueError):
    """The bytes are not a valid wheel or sdist."""


class NeedsFullFile(Exception):
    """The kept tail was not enough; the caller should retry on the whole file."""


@dataclass(frozen=True, slots=True)
class DistInfo:
    name: str  # as METADATA spells it
    version: str
    requires_python: str | None
    summary: str
    metadata: bytes  # the METADATA / PKG-INFO bytes, served as PEP 658 .metadata


def parse_metadata(raw: bytes, what: str) -> tuple[str, str, str | None, str]:
    msg = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
    name = (msg.get("Name") or "").strip()
    version = (msg.get("Version") or "").strip()
    if not name or not version:
        raise DistError(f"{what} lacks Name or Version")
    try:
        Version(version)
    except InvalidVersion:
        raise DistError(f"{what} has an invalid Version {version!r}") from None
    rp = msg.get("Requires-Python")
    requires_python = str(rp).strip() if rp else None
    if requires_python:
        try:
            SpecifierSet(requires_python)
        except InvalidSpecifier:
            raise DistError(f"{what} has an invalid Requires-Python {requires_python!r}") from None
    summary = str(msg.get("Summary") or "").strip()
    return name, version, requires_python, summary


class _TailFile(io.RawIOBase):
    """A read-only file over the last bytes of a larger file."""

    def __init__(self, tail: bytes, total: int) -> None:
        self._tail, self._total, self._pos = tail, total, 0
        self._start = total - len(tail)

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
        lo = self._pos - self._start
        data = self._tail[lo : lo + size]
        self._pos += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class TailInspector:
    """Keeps the last TAIL_BYTES of a stream (or all of it, for small files).

    The chunks themselves are kept (references, not copies) until the later ones cover
    TAIL_BYTES: copying every chunk into one buffer cost as much as hashing it.
    """

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._chunks.append(chunk)
        self._held += len(chunk)
        while self._held - len(self._chunks[0]) >= TAIL_BYTES:
            self._held -= len(self._chunks.popleft())

    def tail_file(self) -> io.RawIOBase:
        tail = b"".join(self._chunks)[-TAIL_BYTES:]
        return _TailFile(tail, self.total)


def _open_zip(fileobj: io.RawIOBase | io.BufferedIOBase) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fileobj)  # type: ignore[arg-type]
    except zipfile.BadZipFile as exc:
        raise DistError(f"not a valid zip archive: {exc}") from None


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > _MAX_METADATA:
        raise DistError(f"{name} is implausibly large")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DistError(f"cannot read {name}: {exc}") from None


def wheel_info(filename: str, fileobj: io.RawIOBase | io.BufferedIOBase) -> DistInfo:
    """Check a wheel: its file name parses and agrees with its .dist-info/METADATA."""
    try:
        fn_name, fn_version, _build, _tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise DistError(f"invalid wheel file name: {exc}") from None
    with _open_zip(fileobj) as zf:
        candidates = [
            n
            for n in zf.namelist()
            if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        ]
        if not candidates:
            raise DistError("wheel has no .dist-info/METADATA")
        if len(candidates) > 1:
            raise DistError(f"wheel has several METADATA files: {', '.join(sorted(candidates))}")
        raw = _read_member(zf, candidates[0])
    name, version, requires_python, summary = parse_metadata(raw, "METADATA")
    if canonicalize_name(name) != fn_name or Version(version) != fn_version:
        raise DistError(
            f"file name says {fn_name} {fn_version} but METADATA says {name} {version}"
        )
    return DistInfo(name, version, requires_python, summary, raw)


def sdist_name_version(filename: str) -> tuple[str, str] | None:
    try:
        name, version = parse_sdist_filename(filename)
    except (InvalidSdistFilename, InvalidVersion):
        return None
    return str(name), str(version)


def zip_sdist_info(fileobj: io.RawIOBase | io.BufferedIOBase) -> DistInfo | None:
    """A .zip is an sdist when it holds exactly one top-level ``<dir>/PKG-INFO``."""
    try:
        zf = zipfile.ZipFile(fileobj)  # type: ignore[arg-type]
    except zipfile.BadZipFile:
        return None
    with zf:
        hits = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/PKG-INFO")]
        if len(hits) != 1:
            return None
        raw = _read_member(zf, hits[0])
    return _dist_from_pkginfo(raw)


def _dist_from_pkginfo(raw: bytes) -> DistInfo:
    name, version, requires_python, summary = parse_metadata(raw, "PKG-INFO")
    return DistInfo(name, version, requires_python, summary, raw)


class TarGzSdistInspector:
    """Streams a .tar.gz looking for a top-level ``<dir>/PKG-INFO``; never keeps file data."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=31)
        self._buf = bytearray()
        self._skip = 0
        self._want: tuple[str, int] | None = None
        self._longname: str | None = None
        self._pax_path: str | None = None
        self._pending_meta: str | None = None
        self.pkg_info: bytes | None = None
        self.broken = False
        self._done = False

    def feed(self, chunk: bytes) -> None:
        if self._done or self.broken:
            return
        try:
            self._buf += self._z.decompress(chunk)
        except zlib.error:
            self.broken = True
            return
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

    def _header(self, header: bytes) -> None:
        try:
            size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
        except ValueError:
            self.broken = True
            self._done = True
            return
        kind = header[156:157]
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and prefix:
            name = f"{prefix}/{name}"
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
