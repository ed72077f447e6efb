"""The persistent build cache under ``OUT/.repobuild/cache.json`` (never served or published).

Keyed by SOURCE path and validated against the file's size, mtime, ctime and inode, so that an
unchanged file is neither read nor hashed again. ctime changes on every write, even when the
mtime is put back, so an entry that disagrees with the disk in any of these is never trusted;
``--rehash`` ignores the cache altogether.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repobuild.formats.deb import DebInfo
from repobuild.formats.pydist import DistInfo
from repobuild.model import Artifact

CACHE_FILE = "cache.json"
CACHE_FORMAT = 4  # one JSON list per file (3 was a dict per file: 3× the memory)


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
    art = Artifact(
        path=rel, filename=rel.rsplit("/", 1)[-1], kind=str(entry[_KIND]), size=int(entry[0]),
        sha256=str(entry[_SHA256]), sha512=entry[_SHA512],
    )
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
        if enabled:
            try:
                doc = json.loads(self.path.read_bytes())
                if doc.get("format") == CACHE_FORMAT and isinstance(doc.get("files"), dict):
                    self.entries = doc["files"]
                    self._loaded = len(self.entries)
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    def lookup(self, rel: str, stamp: Stamp, *, sha512: bool) -> Artifact | None:
        """The cached artifact when the entry matches the file on disk exactly."""
        entry = self.entries.pop(rel, None)  # looked up once: what is left is stale
        if not self.enabled or entry is None:
            return None
        try:
            if entry[:_STAMP] != [stamp.size, stamp.mtime_ns, stamp.ctime_ns, stamp.inode]:
                return None
            if sha512 and not entry[_SHA512]:
                return None
            art = _decode(rel, entry)
        except (IndexError, KeyError, TypeError, ValueError):
            return None
        self.fresh[rel] = entry
        self._hits += 1
        return art

    def metadata_size(self, rel: str) -> int | None:
        entry = self.fresh.get(rel)
        size = entry[_META_SIZE] if entry is not None and len(entry) > _META_SIZE else None
        return size if isinstance(size, int) else None

    def forget(self, rel: str) -> None:
        if self.fresh.pop(rel, None) is not None:
            self._hits -= 1

    def record(self, art: Artifact, stamp: Stamp, metadata_size: int | None) -> None:
        self.fresh[art.path] = _encode(art, stamp, metadata_size)

    def save(self, tmp: Path) -> None:
        if self.loaded_unchanged():
            return  # the same entries as on disk: nothing to write
        # entry by entry, each through the C encoder: json.dump streams through the pure-Python
        # encoder (~5 × slower), json.dumps of the whole holds ~60 MB at 100,000 files
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"files":{')
            for n, rel in enumerate(sorted(self.fresh)):
                fh.write(f'{"," if n else ""}{dumps(rel)}:{dumps(self.fresh[rel])}')
            fh.write(f'}},"format":{CACHE_FORMAT}}}')
        os.replace(tmp, self.path)

    def loaded_unchanged(self) -> bool:
        """Every entry came from the file as it was and none is left over."""
        return (self.enabled and not self.entries and self._loaded == len(self.fresh)
                and self._hits == len(self.fresh))
