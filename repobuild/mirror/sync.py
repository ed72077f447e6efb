"""`repobuild sync`: mirror a tree from one of several upstreams, verifying before anything lands.

1. index.json and its signatures come from the first upstream that answers; they must verify
   under the pinned trust root, be unexpired, and not be older than what DEST holds.
2. Every listed file DEST lacks is downloaded — in parallel, from whichever upstream has it —
   into ``DEST/.repobuild/partial/``, its size and SHA-256 checked against the verified index; a
   failed or tampered download is tried again from the next upstream, and a partial download is
   resumed (HTTP Range) by the next run. Nothing is visible in DEST during this phase, so a sync
   killed now leaves DEST exactly as it was.
3. Only when every file is at hand do they land, by renames, in the safe order: blobs and
   by-hash files, the other listed files, then index.json and its signatures last.
4. Files the new index no longer lists stay for a grace period (default 7 days, recorded in
   ``DEST/.repobuild/sync.json``) so that clients and caches holding the previous index can
   still fetch them; ``repobuild verify`` of the folder accepts them while they are in grace.

DEST's own files are never hashed again: what is there and listed with the same size and hash
by DEST's current (previously verified) index.json counts as present, so a no-op sync is a
handful of stats.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from repobuild.errors import UsageError, VerificationError
from repobuild.formats import manifest
from repobuild.formats.manifest import Manifest, ManifestError, rfc3339
from repobuild.mirror.cachepolicy import is_immutable
from repobuild.sources import CHUNK, FetchError, FolderSource, HttpSource
from repobuild.store import OutTree
from repobuild.trust import SIGNATURE_FILES, TrustPolicy
from repobuild.verify import Report, check_index

STATE = "sync.json"
PARTIAL = "partial"

Source = FolderSource | HttpSource


@dataclass
class UpstreamStats:
    files: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class SyncResult:
    ok: bool = True
    version: int | None = None
    fetched: int = 0
    bytes: int = 0
    skipped: int = 0
    removed: int = 0
    in_grace: int = 0
    noop: bool = False
    seconds: float = 0.0
    upstreams: dict[str, UpstreamStats] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "version": self.version, "fetched": self.fetched,
            "bytes": self.bytes, "skipped": self.skipped, "removed": self.removed,
            "in_grace": self.in_grace, "noop": self.noop, "seconds": round(self.seconds, 3),
            "upstreams": {u: {"files": s.files, "bytes": s.bytes, "errors": s.errors}
                          for u, s in self.upstreams.items()},
            "failures": self.failures,
        }



def read_state(dest: Path) -> dict[str, Any]:
    try:
        doc = json.loads((dest / ".repobuild" / STATE).read_bytes())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def grace_files(dest: Path) -> set[str]:
    """Files kept in DEST after the index stopped listing them (see module docstring)."""
    grace = read_state(dest).get("grace", {})
    return set(grace) if isinstance(grace, dict) else set()


def _partial_name(rel: str) -> str:
    return hashlib.sha256(rel.encode()).hexdigest()


class _Fetcher:
    """Downloads one listed file into the partial folder, checking it on the way."""

    def __init__(self, partial_dir: Path, timeout: float) -> None:
        self.dir = partial_dir
        self.timeout = timeout

    def fetch(self, src: Source, rel: str, size: int, digest: str) -> Path:
        part = self.dir / _partial_name(rel)
        if isinstance(src, FolderSource):
            self._copy(src.root / rel, part)
        else:
            self._download(src, rel, part, size)
        got_size, got_digest = _hash_file(part)
        if (got_size, got_digest) != (size, digest):
            part.unlink(missing_ok=True)
            raise VerificationError(
                f"{rel}: size or SHA-256 differs from the signed index (tampered or corrupt)"
            )
        return part

    @staticmethod
    def _copy(path: Path, part: Path) -> None:
        try:
            shutil.copyfile(path, part)
        except FileNotFoundError:
            raise FetchError(f"{path}: missing") from None

    def _download(self, src: HttpSource, rel: str, part: Path, size: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have >= size:
            if have == size:
                return  # complete from an earlier run; hashed by the caller
            part.unlink()
            have = 0
        headers = {"User-Agent": "repobuild"}
        if have:
            headers["Range"] = f"bytes={have}-"
        req = urllib.request.Request(src.url(rel), headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                part.unlink(missing_ok=True)
                return self._download(src, rel, part, size)
            raise FetchError(f"{src.url(rel)}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"{src.url(rel)}: {getattr(exc, 'reason', exc)}") from None
        with resp:
            mode = "ab" if have and resp.status == 206 else "wb"
            try:
                with open(part, mode) as fh:
                    while chunk := resp.read(CHUNK):
                        fh.write(chunk)
                        if fh.tell() > size:
                            break
            except (OSError, TimeoutError) as exc:
                raise FetchError(f"{src.url(rel)}: {exc}") from None
        return None


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _open(upstream: str, timeout: float) -> Source:
    if upstream.startswith(("http://", "https://")):
        return HttpSource(upstream, timeout=timeout, retries=1)
    path = Path(upstream)
    if not path.is_dir():
        raise UsageError("upstream is neither a folder nor an http(s) URL", upstream)
    return FolderSource(path)


def _dest_index(dest: Path) -> tuple[bytes | None, Manifest | None]:
    try:
        data = (dest / "index.json").read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        return data, manifest.parse(data)
    except ManifestError:
        return data, None


def _choose_index(
    sources: list[Source], policy: TrustPolicy, min_version: int, now: datetime,
    result: SyncResult,
) -> tuple[Source, bytes, dict[str, bytes | None], Manifest] | None:
    """The first upstream whose index verifies, is unexpired and not older than DEST."""
    for src in sources:
        stats = result.upstreams[src.label]
        try:
            data = src.read("index.json")
            if data is None:
                stats.errors.append("index.json: missing")
                continue
            sigs = {name: src.read(name) for name in SIGNATURE_FILES}
        except FetchError as exc:
            stats.errors.append(str(exc))
            continue
        report = Report(target=src.label)
        index = check_index(policy, data, sigs, now=now, min_version=min_version, report=report)
        if index is None or not report.ok:
            for path, reason in report.failures:
                stats.errors.append(f"{path}: {reason}")
                result.failures.append(f"{src.label}: {path}: {reason}")
            continue
        return src, data, sigs, index
    return None


def sync(
    upstreams: list[str],
    dest: Path,
    policy: TrustPolicy,
    *,
    timeout: float = 20.0,
    grace_days: float = 7.0,
    workers: int = 8,
    now: datetime | None = None,
) -> SyncResult:
    started = time.monotonic()
    now = now or datetime.now(UTC)
    if not upstreams:
        raise UsageError("name at least one UPSTREAM")
    sources = [_open(u, timeout) for u in upstreams]
    result = SyncResult(upstreams={s.label: UpstreamStats() for s in sources})
    tree = OutTree(dest)
    tree.open()
    try:
        old_bytes, old_index = _dest_index(dest)
        state = read_state(dest)
        min_version = max(old_index.version if old_index else 0, int(state.get("version", 0)))
        chosen = _choose_index(sources, policy, min_version, now, result)
        if chosen is None:
            result.ok = False
            if not result.failures:
                result.failures.append("no upstream served a verifiable index.json")
            return result
        first, data, sigs, index = chosen
        result.version = index.version
        result.failures.clear()  # refusals of other upstreams are in their stats
        old_listed = old_index.listed() if old_index else {}
        needed = _missing(dest, index, old_listed)
        result.skipped = len(index.listed()) - len(needed)
        ordered = [first, *[s for s in sources if s is not first]]
        fetched = _fetch_all(tree, ordered, index, needed, timeout, workers, result)
        if not result.ok:
            return result
        if old_bytes == data and not fetched:
            result.noop = True
        _land(tree, fetched, data, sigs)
        _retire(tree, dest, index, now, grace_days, state, result)
        _write_state(tree, dest, index, first.label, now, state)
        return result
    finally:
        tree.close(failed=not result.ok)
        result.seconds = time.monotonic() - started


def _missing(dest: Path, index: Manifest, old: dict[str, tuple[int, str]]) -> list[str]:
    """Listed files DEST lacks, judged by its own verified listing and a stat, never a read."""
    out = []
    for rel, (size, digest) in sorted(index.listed().items()):
        try:
            on_disk = (dest / rel).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            on_disk = -1
        same = on_disk == size and (is_immutable(rel) or old.get(rel) == (size, digest))
        if not same:
            out.append(rel)
    return out


def _fetch_all(
    tree: OutTree, sources: list[Source], index: Manifest, needed: list[str],
    timeout: float, workers: int, result: SyncResult,
) -> dict[str, Path]:
    partial = tree.state / PARTIAL
    partial.mkdir(exist_ok=True)
    fetcher = _Fetcher(partial, timeout)
    listed = index.listed()
    down: set[str] = set()

    def one(rel: str) -> tuple[str, Path | None, str | None, str]:
        size, digest = listed[rel]
        errors = []
        for src in sources:
            if src.label in down:
                continue
            try:
                return rel, fetcher.fetch(src, rel, size, digest), src.label, ""
            except FetchError as exc:
                errors.append(str(exc))
                result.upstreams[src.label].errors.append(str(exc))
                if "refused" in str(exc).lower() or "timed out" in str(exc).lower():
                    down.add(src.label)
            except VerificationError as exc:
                errors.append(f"{src.label}: {exc}")
                result.upstreams[src.label].errors.append(str(exc))
        entry = index.files.get(rel)
        if entry is not None and entry.retired:
            return rel, None, None, ""  # a retired file may be gone everywhere (gc)
        return rel, None, None, "; ".join(errors) or "no upstream has it"

    fetched: dict[str, Path] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for rel, path, label, problem in pool.map(one, needed):
            if problem:
                result.ok = False
                result.failures.append(f"{rel}: {problem}")
            elif path is not None and label is not None:
                fetched[rel] = path
                stats = result.upstreams[label]
                stats.files += 1
                stats.bytes += listed[rel][0]
                result.fetched += 1
                result.bytes += listed[rel][0]
    return fetched


def _land(tree: OutTree, fetched: dict[str, Path], data: bytes,
          sigs: dict[str, bytes | None]) -> None:
    """Renames in the safe order: immutable files, the rest, index.json and signatures last."""
    for group in (
        sorted(r for r in fetched if is_immutable(r)),
        sorted(r for r in fetched if not is_immutable(r)),
    ):
        for rel in group:
            dest = tree.path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fetched[rel].chmod(0o644)
            os.replace(fetched[rel], dest)
    tree.write("index.json", data)
    for name in SIGNATURE_FILES:
        blob = sigs.get(name)
        if blob is not None:
            tree.write(name, blob)
        else:
            tree.path(name).unlink(missing_ok=True)


def _retire(
    tree: OutTree, dest: Path, index: Manifest, now: datetime, grace_days: float,
    state: dict[str, Any], result: SyncResult,
) -> None:
    keep = set(index.listed()) | {"index.json", *SIGNATURE_FILES}
    grace: dict[str, str] = dict(state.get("grace", {})) if isinstance(
        state.get("grace"), dict) else {}
    for rel in tree.walk():
        if rel in keep:
            grace.pop(rel, None)
            continue
        since = grace.setdefault(rel, rfc3339(now))
        try:
            expired = manifest.parse_time(since) + timedelta(days=grace_days) <= now
        except ManifestError:
            expired = True
        if expired:
            tree.remove(rel)
            grace.pop(rel, None)
            result.removed += 1
    for rel in [r for r in grace if not tree.path(r).exists()]:
        grace.pop(rel)
    state["grace"] = grace
    result.in_grace = len(grace)
    shutil.rmtree(tree.state / PARTIAL, ignore_errors=True)


def _write_state(tree: OutTree, dest: Path, index: Manifest, upstream: str, now: datetime,
                 state: dict[str, Any]) -> None:
    state.update(version=index.version, generated=rfc3339(index.generated),
                 synced=rfc3339(now), upstream=upstream)
    tmp = tree.temp_path()
    tmp.write_text(json.dumps(state, sort_keys=True, indent=1))
    os.replace(tmp, dest / ".repobuild" / STATE)
