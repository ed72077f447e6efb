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
CACHE_FORMAT = 3  # 1 could hold the SHA-256 of empty core metadata for cached wheels


@dataclass(frozen=True, slots=True)
class Stamp:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _encode(art: Artifact, stamp: Stamp, metadata_size: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "stamp": [stamp.size, stamp.mtime_ns, stamp.ctime_ns, stamp.inode],
        "kind": art.kind,
        "sha256": art.sha256,
    }
    if art.sha512:
        entry["sha512"] = art.sha512
    if art.deb is not None:
        entry["deb"] = {
            "package": art.deb.package, "version": art.deb.version,
            "architecture": art.deb.architecture, "control": art.deb.control,
        }
    if art.dist is not None:
        entry["dist"] = {
            "name": art.dist.name, "version": art.dist.version,
            "requires_python": art.dist.requires_python, "summary": art.dist.summary,
        }
        if art.metadata_sha256:
            entry["dist"]["metadata_sha256"] = art.metadata_sha256
            entry["dist"]["metadata_size"] = metadata_size
    return entry


def _decode(rel: str, entry: dict[str, Any]) -> Artifact:
    art = Artifact(
        path=rel, filename=rel.rsplit("/", 1)[-1], kind=entry["kind"], size=entry["stamp"][0],
        sha256=entry["sha256"], sha512=entry.get("sha512"),
    )
    deb = entry.get("deb")
    if deb:
        art.deb = DebInfo(deb["package"], deb["version"], deb["architecture"], deb["control"])
    dist = entry.get("dist")
    if dist:
        # the core metadata itself lives beside the blob (blob + ".metadata"); not kept here
        art.dist = DistInfo(dist["name"], dist["version"], dist["requires_python"],
                            dist["summary"], b"")
        art.metadata_sha256 = dist.get("metadata_sha256")
    return art


class BuildCache:
    def __init__(self, state_dir: Path, *, enabled: bool = True) -> None:
        self.path = state_dir / CACHE_FILE
        self.enabled = enabled
        self.entries: dict[str, dict[str, Any]] = {}
        self.fresh: dict[str, dict[str, Any]] = {}
        if enabled:
            try:
                doc = json.loads(self.path.read_bytes())
                if doc.get("format") == CACHE_FORMAT and isinstance(doc.get("files"), dict):
                    self.entries = doc["files"]
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    def lookup(self, rel: str, stamp: Stamp, *, sha512: bool) -> Artifact | None:
        """The cached artifact when the entry matches the file on disk exactly."""
        entry = self.entries.get(rel)
        if not self.enabled or entry is None:
            return None
        try:
            if entry["stamp"] != [stamp.size, stamp.mtime_ns, stamp.ctime_ns, stamp.inode]:
                return None
            if sha512 and not entry.get("sha512"):
                return None
            art = _decode(rel, entry)
        except (KeyError, TypeError, ValueError):
            return None
        self.fresh[rel] = entry
        return art

    def metadata_size(self, rel: str) -> int | None:
        dist = (self.fresh.get(rel) or {}).get("dist") or {}
        size = dist.get("metadata_size")
        return size if isinstance(size, int) else None

    def record(self, art: Artifact, stamp: Stamp, metadata_size: int | None) -> None:
        self.fresh[art.path] = _encode(art, stamp, metadata_size)

    def save(self, tmp: Path) -> None:
        doc = {"format": CACHE_FORMAT, "files": self.fresh}
        with open(tmp, "w", encoding="utf-8") as fh:  # streamed: no 60 MB string at 100,000
            json.dump(doc, fh, separators=(",", ":"), sort_keys=True)
        os.replace(tmp, self.path)
