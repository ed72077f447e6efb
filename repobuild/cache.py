"""The persistent build cache under ``OUT/.repobuild/cache.bin`` (never served or published).

Keyed by SOURCE path and validated against the file's size, mtime, ctime and inode, so that an
unchanged file is neither read nor hashed again. ctime changes on every write, even when the
mtime is put back, so an entry that disagrees with the disk in any of these is never trusted;
``--rehash`` ignores the cache altogether.

The file is Python's ``marshal`` format, in frames of a few thousand entries: it loads in half
the time of the same entries as JSON and is written in a fifth, at every build. It is local
state, written and read by this tool only; an entry of the wrong shape is not used (nor is a
file of another format, or another Python's: then every file is read again, once).
"""

from __future__ import annotations

import marshal
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repobuild.formats.deb import DebInfo
from repobuild.formats.pydist import DistInfo
from repobuild.model import Artifact

if TYPE_CHECKING:
    from repobuild.scan import SourceFile

CACHE_FILE = "cache.bin"
OLD_FILES = ("cache.json",)  # earlier formats' files, removed when the cache is saved
#: marshal frames of [path, entry], a later one for a path replacing an earlier one and an
#: entry of None dropping it, so that a build that changed a few entries appends them (6; 5
#: was the same without None entries and is read as well; 4 was one JSON list per file)
CACHE_FORMAT = 6
_MAGIC = b"repobuild-cache\n%d %d\n" % (CACHE_FORMAT, marshal.version)
_READ_MAGICS = (_MAGIC, b"repobuild-cache\n5 %d\n" % marshal.version)
#: a file holding more than twice as many entries as are current (and this many more) is
#: written anew instead of appended to
_SLACK = 1024
_FRAME = struct.Struct("<I")  # the length of the marshal data that follows
FRAME_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Stamp:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


# An entry: [size, mtime_ns, ctime_ns, inode, kind, sha256, sha512, deb, dist, metadata_sha256,
# metadata_size], deb = [package, version, architecture, control], dist = [name, version,
# requires_python, summary]; lists, not dicts: 100,000 of them are held during a build.
_STAMP, _KIND, _SHA256, _SHA512, _DEB, _DIST, _META_SHA, _META_SIZE = 4, 4, 5, 6, 7, 8, 9, 10


def _encode(art: Artifact, stamp: Stamp, metadata_size: int | None) -> list[Any]:
    deb = art.deb
    dist = art.dist
    return [
        stamp.size, stamp.mtime_ns, stamp.ctime_ns, stamp.inode,
        art.kind, art.sha256, art.sha512,
        [deb.package, deb.version, deb.architecture, deb.control] if deb is not None else None,
        [dist.name, dist.version, dist.requires_python, dist.summary] if dist is not None
        else None,
        art.metadata_sha256 if dist is not None else None,
        metadata_size if dist is not None and art.metadata_sha256 else None,
    ]


def _decode(rel: str, entry: list[Any]) -> Artifact:
    art = Artifact(rel, rel.rsplit("/", 1)[-1], str(entry[_KIND]), int(entry[0]),
                   str(entry[_SHA256]), entry[_SHA512])
    deb = entry[_DEB]
    if deb:
        art.deb = DebInfo(str(deb[0]), str(deb[1]), str(deb[2]), str(deb[3]))
    dist = entry[_DIST]
    if dist:
        # the core metadata itself lives beside the blob (blob + ".metadata"); not kept here
        art.dist = DistInfo(str(dist[0]), str(dist[1]), dist[2], str(dist[3]), b"")
        art.metadata_sha256 = entry[_META_SHA]
    return art


class BuildCache:
    def __init__(self, state_dir: Path, *, enabled: bool = True) -> None:
        self.path = state_dir / CACHE_FILE
        self.enabled = enabled
        self.entries: dict[str, list[Any]] = {}
        self.fresh: dict[str, list[Any]] = {}
        self._loaded = -1  # entries in the file (-1: no usable file)
        self._hits = 0  # lookups answered from it
        self._written = 0  # entries written in the file, replaced and dropped ones included
        self._appendable = False  # the file is whole and of this format: changes go at its end
        self._dropped: set[str] = set()  # in the file, but no longer vouched for
        self._recorded: list[str] = []  # entries made by this build
        if enabled:
            try:
                data = self.path.read_bytes()
                self.entries, self._written, whole = _read(data)
                self._loaded = len(self.entries)
                self._appendable = whole and data.startswith(_MAGIC)
            except (OSError, ValueError, EOFError, TypeError, struct.error):
                self.entries = {}

    def lookup_all(self, files: Sequence[SourceFile], *, sha512: bool) -> list[Artifact | None]:
        """The cached artifact of each file whose entry matches it on disk exactly (else None:
        the file is read again), in one loop (~10,000 files at every rebuild); a wheel's only
        with its .metadata file's size recorded. Each entry is looked up once: what is left
        is stale."""
        if not self.enabled:
            for sf in files:
                self.entries.pop(sf.rel, None)
            return [None] * len(files)
        pop, fresh, dropped = self.entries.pop, self.fresh, self._dropped
        found: list[Artifact | None] = []
        hits = 0
        for _path, rel, size, mtime_ns, inode, ctime_ns in files:
            entry = pop(rel, None)
            if entry is None:
                found.append(None)
                continue
            try:
                if (entry[0] != size or entry[1] != mtime_ns or entry[2] != ctime_ns
                        or entry[3] != inode or (sha512 and not entry[_SHA512])):
                    dropped.add(rel)
                    found.append(None)
                    continue
                art: Artifact | None = _decode(rel, entry)
                if entry[_KIND] == "wheel" and not (len(entry) > _META_SIZE
                                                    and isinstance(entry[_META_SIZE], int)):
                    art = None  # read again (then recorded anew)
            except (IndexError, KeyError, TypeError, ValueError):
                dropped.add(rel)
                found.append(None)
                continue
            fresh[rel] = entry
            hits += 1
            found.append(art)
        self._hits += hits
        return found

    def metadata_size(self, rel: str) -> int | None:
        entry = self.fresh.get(rel)
        size = entry[_META_SIZE] if entry is not None and len(entry) > _META_SIZE else None
        return size if isinstance(size, int) else None

    def forget(self, rel: str) -> None:
        if self.fresh.pop(rel, None) is not None:
            self._hits -= 1
            self._dropped.add(rel)

    def record(self, art: Artifact, stamp: Stamp, metadata_size: int | None) -> None:
        self.fresh[art.path] = _encode(art, stamp, metadata_size)
        self._recorded.append(art.path)

    def save(self, tmp: Path) -> None:
        """The entries for the next build: the changes appended to the file, or the file
        written anew (then through ``tmp``) when it is not whole, of an earlier format, or
        would hold too many replaced entries."""
        if self.loaded_unchanged():
            return  # the same entries as on disk: nothing to write
        changes: dict[str, list[Any] | None] = {
            rel: None for rel in (*self.entries, *self._dropped) if rel not in self.fresh}
        for rel in self._recorded:
            if rel in self.fresh:
                changes[rel] = self.fresh[rel]
        for name in OLD_FILES:
            (self.path.parent / name).unlink(missing_ok=True)
        if (self.enabled and self._appendable and self._loaded >= 0
                and 2 * len(changes) <= len(self.fresh) + _SLACK
                and self._written + len(changes) <= 2 * len(self.fresh) + _SLACK):
            try:
                with open(self.path, "ab") as fh:
                    _write_frames(fh.write, sorted(changes.items()))
                self._written += len(changes)
                return
            except OSError:
                pass  # written anew below
        with open(tmp, "wb") as fh:
            write_entries(fh.write, self.fresh)
        os.replace(tmp, self.path)
        self._written, self._appendable = len(self.fresh), True

    def loaded_unchanged(self) -> bool:
        """Every entry came from the file as it was and none is left over."""
        return (self.enabled and not self.entries and self._loaded == len(self.fresh)
                and self._hits == len(self.fresh))


def write_entries(write: Callable[[bytes], object], entries: dict[str, list[Any]]) -> None:
    """A cache file of these entries, in path order, frame by frame: one marshal of 100,000
    entries would hold ~40 MB at once."""
    write(_MAGIC)
    _write_frames(write, sorted(entries.items()))


def _write_frames(write: Callable[[bytes], object],
                  items: list[tuple[str, list[Any] | None]]) -> None:
    for start in range(0, len(items), FRAME_ENTRIES):
        frame = marshal.dumps(items[start:start + FRAME_ENTRIES], 4)
        write(_FRAME.pack(len(frame)))
        write(frame)


def read_entries(data: bytes) -> dict[str, list[Any]]:
    """The entries of a cache file; ValueError when it is not one of this format."""
    return _read(data)[0]


def _read(data: bytes) -> tuple[dict[str, list[Any]], int, bool]:
    """The entries of a cache file, how many were written in it (replaced and dropped ones
    included), and whether it is whole: a frame cut short at its end (an append that did not
    finish) is left out, and what came before it stands (an entry replaced there is stale
    anyway: its stamp is no longer the file's). ValueError when it is not a cache file."""
    magic = next((m for m in _READ_MAGICS if data.startswith(m)), None)
    if magic is None:
        raise ValueError("not a cache file of this format")
    entries: dict[str, list[Any]] = {}
    written = 0
    view = memoryview(data)
    at = len(magic)
    while at < len(data):
        if at + _FRAME.size > len(data):
            return entries, written, False
        (size,) = _FRAME.unpack_from(data, at)
        at += _FRAME.size
        if at + size > len(data):
            return entries, written, False
        frame = marshal.loads(view[at:at + size])
        at += size
        if type(frame) is not list:
            raise ValueError("not a frame of entries")
        for rel, entry in frame:
            if type(rel) is not str:
                raise ValueError("not an entry")
            if entry is None:
                entries.pop(rel, None)
            elif type(entry) is list:
                entries[rel] = entry
            else:
                raise ValueError("not an entry")
        written += len(frame)
    return entries, written, True
