"""`repobuild sync`: mirror a tree from one of several upstreams, verifying before anything lands.

1. index.json and its signatures come from the first upstream that answers in time (each
   request has a timeout and is retried with backoff; then the next upstream is asked). They
   must verify under the pinned trust root (``verify.check_index``: signatures, threshold,
   expiry) and must not be older than what DEST holds (its index.json, or the version recorded
   in ``DEST/.repobuild/sync.json``). An older index is a rollback and is refused; an index of
   the *same* version with different bytes is refused too (a fork or a replay: a publisher's
   version grows at every build); the same bytes again is a no-op.
2. Every listed file DEST lacks is fetched, in a bounded thread pool, from whichever upstream
   has it (the one that served the index first, then the others in the order given; an
   upstream caught serving bad bytes is asked last from then on, one that refuses connections
   is not asked again). Bytes stream into ``DEST/.repobuild/partial/<sha256>`` and are hashed
   on the way; a body longer than the signed size is cut off, a SHA-256 mismatch discards the
   file and the next upstream is asked. A partial file left by an interrupted run is resumed
   with an HTTP Range request from its size (the whole file is then hashed, old bytes
   included; a resumed file that does not match is fetched once more from scratch). Folder
   upstreams are simply copied. Files of equal content (an apt index and its by-hash twin) are
   fetched once.
3. Nothing appears in DEST during the downloads, so a sync that fails or is killed then leaves
   DEST exactly as it was (its own index.json still verifies and lists only present files),
   and the next run reuses every complete partial file without asking any upstream for it.
   When every file is at hand they land by renames in the safe order: blobs and by-hash files,
   then the other files (Packages, project pages, …), then the indices that name those
   (Release, InRelease, Release.gpg, the simple root pages, the landing page), index.json's
   signatures and index.json last of all. A reader that reads DEST/index.json and looks for
   every listed file never finds one missing.
4. Files the new index no longer lists. The publisher's index.json already lists the old blobs
   and by-hash files it retains (with a ``retired`` time, for its own retention period), so
   clients and CDNs holding yesterday's InRelease are served by the publisher's policy, and a
   mirror that keeps exactly the listed files passes ``repobuild verify DEST`` (CONTRACT.md
   guarantee 1). Files even the publisher stopped listing (a project page that went away, an
   older by-hash file past the publisher's retention) stay for ``--grace-days`` (default 7),
   so that a client or cache still holding the previous index keeps working; when each became
   unlisted is recorded in ``DEST/.repobuild/sync.json``, and ``repobuild verify`` of the
   folder reads that record and accepts them while they wait. ``--delete-unlisted`` removes
   them as soon as index.json lands.
5. A no-op sync is cheap: DEST's files are never read or hashed again. A listed file counts as
   present when a stat gives the listed size and either its path is content-addressed (blobs,
   by-hash) or DEST's current index.json — the one this command verified and landed, known by
   the SHA-256 recorded in sync.json (else re-checked by its signatures) — lists it with the
   same SHA-256.
6. The quick no-op. When the fetched index.json is byte for byte the one a sync landed in DEST,
   it was parsed and checked then; what can have changed since is the clock, the signatures
   served with it and DEST itself. So the sync checks the signatures (gpgv and cosign, in a
   thread) and the validity window recorded in sync.json, and meanwhile stats every listed
   file against the sizes recorded in ``DEST/.repobuild/sync-listing.json`` (written with the
   listing, keyed by index.json's SHA-256) — without parsing index.json at all. Anything short
   of perfect (a file missing or of another size, a signature that does not verify or is
   missing, expiry) and the sync goes the ordinary way above, with its messages and repairs.
   The prune step (4.) needs to know every file in DEST; instead of walking DEST again it
   compares the inode and change time of every folder the last walk saw (a file added,
   removed or renamed changes its folder's) with a digest kept in sync.json, and walks only
   when one differs. A digest is recorded only when every folder changed before a file
   created just then (its change time is the file system's clock): a change within the
   same timestamp tick as a later one could go unseen (git's "racy" index entries).

DEST is locked (the build's lock) while a sync runs. ``DEST/.repobuild/`` is local state: it is
never listed (index.json cannot name a dot-path), never fetched from an upstream, never
served.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repobuild.errors import UsageError, VerificationError
from repobuild.mirror.cachepolicy import is_immutable
from repobuild.sources import CHUNK, FetchError, FolderSource, HttpSource
from repobuild.store import OutTree, iter_tree
from repobuild.trust import SIGNATURE_FILES, SignatureResult, TrustPolicy, check_signatures

if TYPE_CHECKING:
    from repobuild.formats.manifest import Manifest

# repobuild.verify and repobuild.formats.manifest (with the package parsers they import) are
# imported where they are used: the quick no-op (point 6) needs neither.

STATE = "sync.json"
LISTING = "sync-listing.json"  # the quick no-op's sizes and folders (point 6)
PARTIAL = "partial"
INDEX = "index.json"
MAX_MESSAGES = 20

Source = FolderSource | HttpSource
Progress = Callable[[int, int], None]


# -- results ----------------------------------------------------------------------------------
@dataclass
class UpstreamStats:
    files: int = 0
    bytes: int = 0
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)


@dataclass
class SyncResult:
    ok: bool = True
    version: int | None = None
    upstream: str | None = None  # the one whose index.json was taken
    fetched: int = 0  # files landed from upstreams
    bytes: int = 0  # bytes received (or copied) from upstreams
    skipped: int = 0  # listed files DEST already held
    removed: int = 0
    in_grace: int = 0
    noop: bool = False
    seconds: float = 0.0
    upstreams: dict[str, UpstreamStats] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.ok = False
        self.failures.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "version": self.version, "upstream": self.upstream,
            "fetched": self.fetched, "bytes": self.bytes, "skipped": self.skipped,
            "removed": self.removed, "in_grace": self.in_grace, "noop": self.noop,
            "seconds": round(self.seconds, 3),
            "upstreams": {u: {"files": s.files, "bytes": s.bytes, "errors": s.errors,
                              "messages": s.messages}
                          for u, s in self.upstreams.items()},
            "failures": self.failures,
        }


# -- local state ------------------------------------------------------------------------------
def read_state(dest: Path) -> dict[str, Any]:
    try:
        doc = json.loads((dest / ".repobuild" / STATE).read_bytes())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def grace_files(dest: Path) -> set[str]:
    """Unlisted files a mirror keeps for a while (``--keep-unlisted``; see the docstring)."""
    grace = read_state(dest).get("grace", {})
    return set(grace) if isinstance(grace, dict) else set()


def _state_version(state: dict[str, Any]) -> int:
    value = state.get("version", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass
class _Dest:
    data: bytes | None = None  # DEST's index.json
    sha256: str | None = None  # its SHA-256, when a sync landed it (else not computed)
    version: int | None = None  # its version
    ours: bool = False  # landed by a sync (its SHA-256 is in sync.json), or signed
    index: Manifest | None = None  # parsed only when not ours
    min_version: int = 0

    def trusted(self, new_data: bytes, new_index: Manifest) -> dict[str, tuple[int, str]]:
        """DEST's verified listing: what its files are, without reading them."""
        from repobuild.formats import manifest
        from repobuild.formats.manifest import ManifestError

        if not self.ours:
            return {}
        if self.data == new_data:
            return new_index.listed()  # the same document: no second parse
        if self.index is None and self.data is not None:
            try:
                self.index = manifest.parse(self.data)
            except ManifestError:
                return {}
        return self.index.listed() if self.index is not None else {}


def _read_dest(dest: Path, state: dict[str, Any], policy: TrustPolicy) -> _Dest:
    out = _Dest(min_version=_state_version(state))
    try:
        out.data = (dest / INDEX).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return out
    sha256 = hashlib.sha256(out.data).hexdigest()
    if state.get("index_sha256") == sha256:
        out.ours, out.version = True, out.min_version  # the version sync.json recorded
        out.sha256 = sha256
        return out
    from repobuild.formats import manifest
    from repobuild.formats.manifest import ManifestError

    try:
        out.index = manifest.parse(out.data)
    except ManifestError:
        return out
    out.version = out.index.version
    out.min_version = max(out.min_version, out.index.version)
    # not landed by a sync (a published copy, say): its listing counts only if it is signed
    sigs: dict[str, bytes | None] = {}
    for name in SIGNATURE_FILES:
        try:
            sigs[name] = (dest / name).read_bytes()
        except OSError:
            sigs[name] = None
    out.ours, _results = check_signatures(policy, out.data, sigs)
    return out


# -- the quick no-op (point 6 of the docstring) ------------------------------------------------
@dataclass
class _Quick:
    """What the last sync left for a no-op: it landed the index.json of SHA-256 ``sha256``."""

    sha256: str
    version: int
    generated: int  # the index's validity window, in seconds since the epoch
    expires: int
    sizes: dict[str, int]  # every listed path and its size
    dirs: list[str]  # every folder below DEST (but .repobuild) its last walk saw; "" is DEST
    digest: str | None  # of those folders' inodes and change times; None: not known
    dirs_same: bool = False  # the check found every folder as the digest says
    root_stat: tuple[int, int] | None = None  # DEST's own inode and change time, then

    def check(self, root: Path, policy: TrustPolicy, data: bytes,
              sigs: dict[str, bytes | None], now: datetime) -> bool:
        """True when the signatures verify (every one), the window holds and every listed
        file has its size. Nothing is written; on False the caller checks the ordinary way."""
        clock = now.timestamp()
        if not self.generated <= clock <= self.expires:
            return False  # expired (or not valid yet): the ordinary check says so
        box: list[tuple[bool, list[SignatureResult]] | Exception] = []

        def signatures() -> None:
            try:
                box.append(check_signatures(policy, data, sigs))
            except Exception as exc:  # the ordinary check meets it again
                box.append(exc)

        thread = threading.Thread(target=signatures, name="sync-signatures", daemon=True)
        thread.start()
        try:
            present = _all_present(str(root), self.sizes)
            if present and self.digest is not None:
                self.root_stat = _dir_stat(str(root))
                self.dirs_same = _dirs_digest(str(root), self.dirs) == self.digest
        finally:
            thread.join()
        if not present or not box or isinstance(box[0], Exception):
            return False
        ok, results = box[0]
        return ok and all(r.ok for r in results)


def _load_quick(tree: OutTree, state: dict[str, Any], have: _Dest) -> _Quick | None:
    quick = state.get("quick")
    if not have.ours or have.sha256 is None or not isinstance(quick, dict):
        return None
    if quick.get("index_sha256") != have.sha256 or have.version is None:
        return None
    try:
        doc = json.loads((tree.state / LISTING).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("index_sha256") != have.sha256:
        return None
    sizes, dirs, digest = doc.get("listed"), doc.get("dirs"), quick.get("dirs")
    generated, expires = quick.get("generated"), quick.get("expires")
    if not (isinstance(sizes, dict) and isinstance(dirs, list) and isinstance(generated, int)
            and isinstance(expires, int) and (digest is None or isinstance(digest, str))):
        return None
    return _Quick(have.sha256, have.version, generated, expires, sizes, dirs, digest)


def _all_present(root: str, sizes: dict[str, int]) -> bool:
    """Every path has its size (a stat each; the sizes come from a listing a sync verified)."""
    base = root + "/"
    stat = os.stat
    try:
        for rel, size in sizes.items():
            if stat(base + rel).st_size != size:
                return False
    except (OSError, TypeError, ValueError):
        return False
    return True


def _dir_stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def _fs_now(tree: OutTree) -> int | None:
    """The file system's clock: the change time of a file created for the purpose."""
    path = tree.temp_path()
    try:
        path.write_bytes(b"")
        return os.lstat(path).st_ctime_ns
    except OSError:
        return None
    finally:
        path.unlink(missing_ok=True)


def _record_digest(tree: OutTree, dirs: list[str]) -> str | None:
    """The folders' digest to keep, or None while one of them may still change unseen."""
    fs_now = _fs_now(tree)
    return None if fs_now is None else _dirs_digest(str(tree.root), dirs, fs_now)


def _dirs_digest(root: str, dirs: list[str], changed_before: int | None = None) -> str | None:
    """SHA-256 of each folder's path, inode and change time (creating, removing or renaming an
    entry changes its folder's). None when a folder is gone, or, with ``changed_before``,
    changed at that time or later: a later change in the same timestamp tick would leave its
    change time as it is."""
    lines = []
    lstat = os.lstat
    base = root + "/"
    try:
        for rel in dirs:
            st = lstat(base + rel if rel else root)
            if changed_before is not None and st.st_ctime_ns >= changed_before:
                return None
            lines.append(f"{rel}\0{st.st_ino}\0{st.st_ctime_ns}")
    except (OSError, TypeError):
        return None
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class _Walk:
    files: list[str]  # sorted
    dirs: list[str]  # sorted; "" is the root
    complete: bool  # no folder was unreadable


def _walk(root: Path, state_dir: str) -> _Walk:
    """Every file below ``root`` but the local state folder, as ``os.walk`` sees them (a
    symlink to a folder is neither a file nor followed), and every folder walked."""
    files: list[str] = []
    dirs = [""]
    complete = True
    for _folder, found, folders in iter_tree(str(root), state_dir):
        if folders is None:
            complete = False
            continue
        dirs += folders
        files += found
    files.sort()
    dirs.sort()
    return _Walk(files, dirs, complete)


# -- upstreams --------------------------------------------------------------------------------
class _Missing(FetchError):
    """The upstream does not have the file."""


class _Unreachable(FetchError):
    """Connection refused, reset or timed out."""


@dataclass
class _Upstream:
    name: str  # as the user wrote it: the key of the summary
    source: Source
    rank: int
    down: bool = False
    strikes: int = 0  # bad bytes served


def _open_source(upstream: str, timeout: float) -> Source:
    if upstream.startswith(("http://", "https://")):
        return HttpSource(upstream, timeout=timeout, retries=2)
    path = Path(upstream)
    if not path.is_dir():
        raise UsageError("upstream is neither a folder nor an http(s) URL", upstream)
    return FolderSource(path)


def _hash_prefix(part: Path, size: int) -> tuple[int, Any]:
    """Size and running SHA-256 of a partial file (emptied when longer than ``size``)."""
    h = hashlib.sha256()
    try:
        with open(part, "rb", buffering=0) as fh:
            have = 0
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                have += len(chunk)
    except FileNotFoundError:
        return 0, h
    if have > size:
        part.unlink()
        return 0, hashlib.sha256()
    return have, h


class _Fetcher:
    """Brings one file into ``partial/<sha256>``, checked against the signed size and hash."""

    def __init__(self, partial_dir: Path, timeout: float) -> None:
        self.dir = partial_dir
        self.timeout = timeout

    def fetch(self, up: _Upstream, rel: str, size: int, digest: str) -> tuple[Path, int]:
        """The verified partial file and the bytes moved to get it."""
        part = self.dir / digest
        have, h = _hash_prefix(part, size)
        if have == size:
            if h.hexdigest() == digest:
                return part, 0  # complete from an earlier, interrupted run
            part.unlink()
        src = up.source
        try:
            if isinstance(src, FolderSource):
                return part, self._copy(src, rel, part, size, digest)
            try:
                return part, self._download(src, rel, part, size, digest)
            except VerificationError:
                if not have:
                    raise
                # the kept prefix may be what another upstream sent: once more from scratch
                part.unlink(missing_ok=True)
                return part, self._download(src, rel, part, size, digest)
        except VerificationError:
            part.unlink(missing_ok=True)
            raise

    @staticmethod
    def _copy(src: FolderSource, rel: str, part: Path, size: int, digest: str) -> int:
        h = hashlib.sha256()
        got = 0
        try:
            with open(src.root / rel, "rb", buffering=0) as fin, open(part, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    got += len(chunk)
                    if got > size:
                        break
                    h.update(chunk)
                    fout.write(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            part.unlink(missing_ok=True)
            raise _Missing(f"{src.root / rel}: missing") from None
        except OSError as exc:
            raise FetchError(f"{src.root / rel}: {exc.strerror or exc}") from None
        _check(got, size, h.hexdigest(), digest)
        return got

    def _download(self, src: HttpSource, rel: str, part: Path, size: int, digest: str) -> int:
        last: FetchError | None = None
        moved = 0
        for attempt in range(src.retries + 1):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            try:
                return moved + self._get(src, rel, part, size, digest)
            except _Missing:
                raise
            except _Interrupted as exc:  # what arrived stays: the retry resumes it
                moved += exc.moved
                last = exc
            except FetchError as exc:
                last = exc
        assert last is not None
        raise last

    def _get(self, src: HttpSource, rel: str, part: Path, size: int, digest: str) -> int:
        have, h = _hash_prefix(part, size)
        url = src.url(rel)
        headers = {"User-Agent": "repobuild", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                raise _Missing(f"{url}: HTTP {exc.code}") from None
            if exc.code == 416 and have:
                part.unlink(missing_ok=True)
            raise FetchError(f"{url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _Unreachable(f"{url}: {getattr(exc, 'reason', None) or exc}") from None
        got = have
        with resp:
            if have and not _resumes_at(resp, have):
                have, got, h = 0, 0, hashlib.sha256()  # a full body: start over
            try:
                with open(part, "ab" if have else "wb") as fh:
                    while chunk := resp.read(CHUNK):
                        got += len(chunk)
                        if got > size:
                            raise VerificationError(
                                f"more than the {size} bytes index.json lists (tampered)")
                        h.update(chunk)
                        fh.write(chunk)
            except (OSError, http.client.HTTPException) as exc:
                raise _Interrupted(f"{url}: interrupted after {got} of {size} bytes: {exc}",
                                   got - have) from None
        if got < size:
            raise _Interrupted(f"{url}: closed after {got} of {size} bytes", got - have)
        _check(got, size, h.hexdigest(), digest)
        return got - have


class _Interrupted(FetchError):
    def __init__(self, message: str, moved: int) -> None:
        super().__init__(message)
        self.moved = moved


def _resumes_at(resp: Any, offset: int) -> bool:
    if getattr(resp, "status", 200) != 206:
        return False
    crange = resp.headers.get("Content-Range", "")
    return isinstance(crange, str) and crange.startswith(f"bytes {offset}-")


def _check(got: int, size: int, got_digest: str, digest: str) -> None:
    if got != size:
        raise VerificationError(f"{got} bytes, index.json lists {size} (tampered or corrupt)")
    if got_digest != digest:
        raise VerificationError("SHA-256 differs from index.json (tampered or corrupt)")


# -- the sync ---------------------------------------------------------------------------------
def sync(
    upstreams: list[str],
    dest: Path,
    policy: TrustPolicy,
    *,
    timeout: float = 20.0,
    grace_days: float = 7.0,
    keep_unlisted: bool = True,
    workers: int = 8,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> SyncResult:
    started = time.monotonic()
    now = now or datetime.now(UTC)
    names = list(dict.fromkeys(upstreams))
    if not names:
        raise UsageError("name at least one UPSTREAM")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if grace_days < 0:
        raise UsageError("--grace-days must not be negative")
    ups = [_Upstream(n, _open_source(n, timeout), i) for i, n in enumerate(names)]
    for up in ups:
        if isinstance(up.source, FolderSource) and _same_folder(up.source.root, dest):
            raise UsageError("DEST is also an upstream", dest)
    result = SyncResult(upstreams={u.name: UpstreamStats() for u in ups})
    tree = OutTree(dest)
    tree.open()
    try:
        state = read_state(dest)
        have = _read_dest(dest, state, policy)
        quick = _load_quick(tree, state, have)
        chosen = _choose_index(ups, policy, have, now, result, quick, dest)
        if chosen is None:
            result.ok = False
            if not result.failures:
                result.failures.append("no upstream served a verifiable index.json")
            return result
        first, data, sigs, index = chosen
        if index is None:  # DEST's own index.json again, checked the quick way (point 6)
            assert quick is not None
            result.version, result.upstream = quick.version, first.name
            result.skipped = len(quick.sizes)
            result.noop = True
            _land(tree, {}, data, sigs)
            listing = _Listing(quick.sha256, quick.version, None, quick.generated,
                               quick.expires, quick.sizes)
        else:
            result.version, result.upstream = index.version, first.name
            listed = index.listed()
            needed = _missing(dest, index, have.trusted(data, index))
            result.skipped = len(listed) - len(needed)
            first.rank = -1  # the upstream that served the index is asked first
            fetched = _fetch_all(tree, ups, index, needed, timeout, workers, result, progress)
            if not result.ok:
                return result
            result.noop = have.data == data and not fetched
            _land(tree, fetched, data, sigs)
            listing = _Listing.of(index, data, have)
        keep = {*listing.sizes, INDEX, *SIGNATURE_FILES}
        grace_days_or_none = grace_days if keep_unlisted else None
        if index is None and quick is not None and quick.dirs_same:
            # no folder changed since the last walk: DEST holds the listed files (all there,
            # as the check found) and the unlisted ones sync.json's grace record names
            old = state.get("grace")
            known = sorted(old) if isinstance(old, dict) else []
            _prune(tree, keep, known, now, grace_days_or_none, state, result)
            same = not result.removed and _dir_stat(str(dest)) == quick.root_stat
            dirs = quick.dirs
            digest = quick.digest if same else _record_digest(tree, dirs)
        else:
            walked = _walk(dest, tree.state.name)
            _prune(tree, keep, walked.files, now, grace_days_or_none, state, result)
            dirs = walked.dirs
            digest = _record_digest(tree, dirs) if walked.complete else None
        _write_state(tree, listing, dirs, digest, first.name, now, state,
                     cached=quick if index is None else None)
        shutil.rmtree(tree.state / PARTIAL, ignore_errors=True)
        return result
    finally:
        tree.close(failed=not result.ok)
        result.seconds = time.monotonic() - started


@dataclass
class _Listing:
    """What the state files record of the index.json that landed."""

    sha256: str
    version: int
    generated_text: str | None  # as sync.json has it (None: unchanged)
    generated: int  # seconds since the epoch
    expires: int
    sizes: dict[str, int]  # every listed path and its size

    @classmethod
    def of(cls, index: Manifest, data: bytes, have: _Dest) -> _Listing:
        from repobuild.formats.manifest import rfc3339

        sha256 = have.sha256 if have.sha256 and have.data == data else (
            hashlib.sha256(data).hexdigest())
        return cls(sha256, index.version, rfc3339(index.generated),
                   int(index.generated.timestamp()), int(index.expires.timestamp()),
                   {rel: size for rel, (size, _digest) in index.listed().items()})


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _choose_index(
    ups: list[_Upstream], policy: TrustPolicy, have: _Dest, now: datetime, result: SyncResult,
    quick: _Quick | None = None, dest: Path | None = None,
) -> tuple[_Upstream, bytes, dict[str, bytes | None], Manifest | None] | None:
    """The first upstream whose index verifies, is unexpired and is not older than DEST's.
    The index comes back parsed, or as None when it is DEST's own and passed ``quick``."""
    for up in ups:
        stats = result.upstreams[up.name]
        try:
            data = up.source.read(INDEX)
            if data is None:
                stats.error("index.json: missing")
                result.failures.append(f"{up.name}: index.json: missing")
                continue
            sigs = {name: up.source.read(name) for name in SIGNATURE_FILES}
        except FetchError as exc:
            up.down = True
            stats.error(str(exc))
            result.failures.append(f"{up.name}: {exc}")
            continue
        if quick is not None and dest is not None and data == have.data:
            if quick.check(dest, policy, data, sigs, now):
                result.failures.clear()
                return up, data, sigs, None
            quick = None  # not all in place: the ordinary way, which says what is wrong
        from repobuild.verify import Report, check_index

        report = Report(target=up.name)
        index = check_index(policy, data, sigs, now=now, min_version=have.min_version,
                            report=report)
        if (index is not None and report.ok and index.version == have.version
                and data != have.data):
            report.fail(INDEX, f"version {index.version} differs from the version "
                        f"{index.version} DEST holds (a fork or a replay)")
        if index is None or not report.ok:
            for path, reason in report.failures:
                stats.error(f"{path}: {reason}")
                result.failures.append(f"{up.name}: {path}: {reason}")
            continue
        result.failures.clear()  # the refusals of earlier upstreams stay in their stats
        return up, data, sigs, index
    return None


def _missing(dest: Path, index: Manifest, trusted: dict[str, tuple[int, str]]) -> list[str]:
    """Listed files DEST lacks, judged by a stat and its own verified listing, never a read."""
    out = []
    root = str(dest) + "/"
    stat = os.stat
    for rel, (size, digest) in index.listed().items():
        try:
            on_disk = stat(root + rel).st_size
        except (FileNotFoundError, NotADirectoryError):
            out.append(rel)
            continue
        if on_disk != size or not (is_immutable(rel) or trusted.get(rel) == (size, digest)):
            out.append(rel)
    return out


def _fetch_all(
    tree: OutTree, ups: list[_Upstream], index: Manifest, needed: list[str], timeout: float,
    workers: int, result: SyncResult, progress: Progress | None,
) -> dict[str, Path]:
    """Every needed file into ``partial/``; path -> its verified partial file."""
    from concurrent.futures import ThreadPoolExecutor

    listed = index.listed()
    groups: dict[tuple[str, int], list[str]] = {}
    for rel in sorted(needed, key=lambda r: (not is_immutable(r), r)):
        size, digest = listed[rel]
        groups.setdefault((digest, size), []).append(rel)
    if not groups:
        return {}
    partial = tree.state / PARTIAL
    partial.mkdir(exist_ok=True)
    fetcher = _Fetcher(partial, timeout)
    lock = threading.Lock()

    def candidates() -> list[_Upstream]:
        with lock:
            return sorted((u for u in ups if not u.down), key=lambda u: (u.strikes, u.rank))

    def one(key: tuple[str, int]) -> tuple[list[str], Path | None, _Upstream | None, int, str]:
        digest, size = key
        rels = groups[key]
        errors = []
        for up in candidates():
            stats = result.upstreams[up.name]
            for rel in rels:
                try:
                    path, moved = fetcher.fetch(up, rel, size, digest)
                    return rels, path, up, moved, ""
                except _Missing as exc:
                    message = str(exc)
                    continue  # the same bytes may be there under another listed name
                except _Unreachable as exc:
                    message = str(exc)
                    with lock:
                        up.down = True
                except VerificationError as exc:
                    message = str(exc)
                    with lock:
                        up.strikes += 1
                except FetchError as exc:
                    message = str(exc)
                break
            with lock:
                stats.error(message if rel in message else f"{rel}: {message}")
            errors.append(f"{up.name}: {message}")
        if all(_retired(index, rel) for rel in rels):
            return rels, None, None, 0, ""  # collected upstream (repobuild gc): may be absent
        return rels, None, None, 0, "; ".join(errors) or "no upstream can be reached"

    fetched: dict[str, Path] = {}
    done = 0
    with ThreadPoolExecutor(max_workers=min(workers, len(groups))) as pool:
        for rels, path, up, moved, problem in pool.map(one, list(groups)):
            done += 1
            if progress:
                progress(done, len(groups))
            if problem:
                result.fail(f"{rels[0]}: {problem}")
            elif path is not None and up is not None:
                for rel in rels:
                    fetched[rel] = path
                stats = result.upstreams[up.name]
                stats.files += len(rels)
                stats.bytes += moved
                result.fetched += len(rels)
                result.bytes += moved
    return fetched


def _retired(index: Manifest, rel: str) -> bool:
    entry = index.files.get(rel)
    return entry is not None and entry.retired is not None


_NAMING = frozenset({"Release", "InRelease", "Release.gpg"})


def _land_rank(rel: str) -> int:
    """0: content-addressed; 1: ordinary files; 2: the indices that name other files."""
    if is_immutable(rel):
        return 0
    parts = rel.split("/")
    if (parts[0] == "dists" and parts[-1] in _NAMING) or rel in (
        "simple/index.html", "simple/index.json", "index.html"
    ):
        return 2
    return 1


def _land(tree: OutTree, fetched: dict[str, Path], data: bytes,
          sigs: dict[str, bytes | None]) -> None:
    """Renames in the safe order; index.json's signatures, then index.json, last."""
    uses: dict[Path, int] = {}
    for part in fetched.values():
        uses[part] = uses.get(part, 0) + 1
    for rel in sorted(fetched, key=lambda r: (_land_rank(r), r)):
        part = fetched[rel]
        dest = tree.path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part.chmod(0o644)
        uses[part] -= 1
        if uses[part]:  # the same bytes land under another name too: link a copy in
            tmp = tree.temp_path()
            try:
                os.link(part, tmp)
            except OSError:
                shutil.copyfile(part, tmp)
            os.replace(tmp, dest)
        else:
            os.replace(part, dest)
    # index.json's rename is the commit point: until it lands, readers see the old, complete
    # listing (signatures and index.json disagree for an instant in either order)
    for name in SIGNATURE_FILES:
        blob = sigs.get(name)
        if blob is not None:
            tree.write(name, blob)
    tree.write(INDEX, data)
    for name in SIGNATURE_FILES:
        if sigs.get(name) is None:
            tree.remove(name)


def _prune(tree: OutTree, keep: Collection[str], files: list[str], now: datetime,
           grace_days: float | None, state: dict[str, Any], result: SyncResult) -> None:
    """Remove what the new index does not list (or, with a grace period, once it is over);
    ``files``: every file DEST holds (or at least every one it does not list)."""
    old = state.get("grace")
    grace: dict[str, str] = dict(old) if isinstance(old, dict) else {}
    kept: dict[str, str] = {}
    unlisted = [rel for rel in files if rel not in keep]
    if unlisted:
        from repobuild.formats import manifest
        from repobuild.formats.manifest import ManifestError, rfc3339
    for rel in unlisted:
        if grace_days is not None:
            since = grace.get(rel)
            try:
                start = manifest.parse_time(since) if isinstance(since, str) else now
            except ManifestError:
                start = now
            if start + timedelta(days=grace_days) > now:
                kept[rel] = rfc3339(start)
                continue
        tree.remove(rel)
        result.removed += 1
    state["grace"] = kept
    result.in_grace = len(kept)


def _write_state(tree: OutTree, listing: _Listing, dirs: list[str], digest: str | None,
                 upstream: str, now: datetime, state: dict[str, Any],
                 cached: _Quick | None) -> None:
    """sync.json, and the listing the quick no-op reads (rewritten only when it changed;
    ``cached``: what it holds now, when known)."""
    if cached is None or cached.dirs != dirs:
        body = json.dumps({"index_sha256": listing.sha256, "listed": listing.sizes,
                           "dirs": dirs}, separators=(",", ":")).encode()
        _replace(tree, tree.state / LISTING, body)
    state.update(version=listing.version, index_sha256=listing.sha256,
                 synced=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),  # RFC 3339
                 upstream=upstream,
                 quick={"index_sha256": listing.sha256, "generated": listing.generated,
                        "expires": listing.expires, "dirs": digest})
    if listing.generated_text is not None:
        state["generated"] = listing.generated_text
    text = json.dumps(state, sort_keys=True, indent=1) + "\n"
    _replace(tree, tree.state / STATE, text.encode())


def _replace(tree: OutTree, path: Path, body: bytes) -> None:
    """Write ``path`` by a rename, unless it holds these bytes already."""
    try:
        if path.stat().st_size == len(body) and path.read_bytes() == body:
            return
    except OSError:
        pass
    tmp = tree.temp_path()
    tmp.write_bytes(body)
    os.replace(tmp, path)
