"""`repobuild publish`: push a built tree to several destinations at once, in the safe order.

Per destination: immutable files it lacks (blobs, by-hash) first, then the mutable files whose
hash differs from the destination's current index.json, then index.json and its signatures
last; finally files neither index lists any more. The purge list is what a CDN must invalidate:
the mutable paths that changed.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repobuild.errors import UsageError, ValidationError
from repobuild.formats import manifest
from repobuild.formats.manifest import Manifest, ManifestError
from repobuild.mirror.cachepolicy import is_immutable
from repobuild.mirror.storage import Storage, open_storage
from repobuild.trust import SIGNATURE_FILES


@dataclass
class DestResult:
    dest: str
    ok: bool = True
    error: str = ""
    uploaded: list[str] = field(default_factory=list)
    skipped: int = 0
    deleted: list[str] = field(default_factory=list)
    purge: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "dest": self.dest, "ok": self.ok, "error": self.error,
            "uploaded": len(self.uploaded), "uploaded_immutable": sum(
                1 for p in self.uploaded if is_immutable(p)),
            "uploaded_mutable": sum(1 for p in self.uploaded if not is_immutable(p)),
            "skipped": self.skipped, "deleted": len(self.deleted),
            "purge": self.purge, "seconds": round(self.seconds, 3),
        }


def load_local(out: Path) -> tuple[bytes, Manifest, list[str]]:
    """The tree's index.json, parsed, and the signature files present beside it."""
    path = out / "index.json"
    try:
        data = path.read_bytes()
    except OSError:
        raise UsageError("holds no index.json: build it first", out) from None
    try:
        index = manifest.parse(data)
    except ManifestError as exc:
        raise ValidationError(f"malformed: {exc}", path) from None
    for rel, (size, _digest) in index.listed().items():
        try:
            if (out / rel).stat().st_size != size:
                raise ValidationError("size differs from index.json: rebuild or verify", out / rel)
        except FileNotFoundError:
            raise ValidationError("listed in index.json but missing", out / rel) from None
    sigs = [s for s in SIGNATURE_FILES if (out / s).is_file()]
    return data, index, sigs


def publish_one(out: Path, index_bytes: bytes, index: Manifest, sigs: list[str],
                storage: Storage) -> DestResult:
    started = time.monotonic()
    res = DestResult(storage.label)
    try:
        previous: dict[str, tuple[int, str]] = {}
        old = storage.read("index.json")
        if old is not None:
            try:
                previous = manifest.parse(old).listed()
            except ManifestError:
                previous = {}
        listed = index.listed()
        immutable = sorted(p for p in listed if is_immutable(p))
        mutable = sorted(p for p in listed if not is_immutable(p))
        todo_imm = [p for p in immutable if not storage.exists(p, listed[p][0])]
        res.skipped = len(immutable) - len(todo_imm)
        changed = [p for p in mutable if previous.get(p) != listed[p]]
        res.skipped += len(mutable) - len(changed)
        storage.put_many(out, todo_imm)
        storage.put_many(out, changed)
        last = ["index.json", *sigs] if old != index_bytes else []
        storage.put_many(out, last)
        res.uploaded = todo_imm + changed + last
        res.purge = sorted(changed + last)
        gone = sorted(p for p in previous if p not in listed)
        storage.delete_many(gone)
        res.deleted = gone
        res.purge = sorted(set(res.purge) | {p for p in gone if not is_immutable(p)})
    except Exception as exc:  # one failing destination must not stop the others
        res.ok = False
        res.error = f"{type(exc).__name__}: {exc}"
    res.seconds = time.monotonic() - started
    return res


def publish(out: Path, dests: list[str], *, endpoint_url: str | None = None) -> list[DestResult]:
    if not dests:
        raise UsageError("name at least one --to destination")
    index_bytes, index, sigs = load_local(out)
    storages = [open_storage(d, endpoint_url=endpoint_url) for d in dests]
    with ThreadPoolExecutor(max_workers=len(storages)) as pool:
        return list(pool.map(lambda s: publish_one(out, index_bytes, index, sigs, s), storages))
