"""The build pipeline: scan → inspect and store → render → sign → write in safe order → prune.

Nothing visible in OUT changes until every input has been read and checked and every index
rendered and signed in memory. Then files land in the order of CONTRACT.md guarantee 3: blobs,
by-hash copies, mutable indices, index.json, its signatures last; a build that fails or is
killed leaves the previous tree valid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, KeysView, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

from packaging.utils import canonicalize_name
from packaging.version import Version

from repobuild.aptrepo import AptJob
from repobuild.blockcache import FOLDER as BLOCKS
from repobuild.blockcache import BlockCache
from repobuild.cache import BuildCache
from repobuild.config import Config, build_time, source_date_epoch
from repobuild.errors import RepobuildError, UsageError, ValidationError
from repobuild.formats import manifest
from repobuild.formats.manifest import ManifestError, rfc3339
from repobuild.formats.simple import project_files, render_root
from repobuild.gc import record_history
from repobuild.hashfile import HashingFile
from repobuild.ingest import (
    Ingested,
    Job,
    Packed,
    classify,
    ingest_batch,
    ingest_into,
    unpack,
)
from repobuild.keys import KeySet, check_keydir, load_keys, make_trust
from repobuild.mirror.cachepolicy import render_headers_file, render_nginx_snippet
from repobuild.model import Artifact, FileEntry
from repobuild.process import settle
from repobuild.pyrepo import (
    KnownWriter,
    PageRow,
    Project,
    forget_known,
    pack_projects,
    page_paths,
    renderer_version,
    stage_packed_pages,
    stage_project_pages,
)
from repobuild.scan import ScanAhead, SourceFile, scan_source
from repobuild.signing.cosign import public_key_hint
from repobuild.signing.gpg import DetachedSignature
from repobuild.store import SURVEY_FILE, OutTree, pack_paths, survey, unpack_paths
from repobuild.templating import keep_compiled, render_large
from repobuild.workers import Workers, worker_count

if TYPE_CHECKING:
    from repobuild.signing import intoto

INDEX = "index.json"
TEMPLATES = "templates"  # in OUT/.repobuild/: compiled templates (repobuild.templating)
BATCH_BYTES = 8 << 20  # work sent to a worker process at once
BATCH_FILES = 64
PAGE_BATCH = 256  # projects whose pages a worker renders at once
STEAL_BATCHES = 64  # at most this many batches: one no worker started is done by the build
# A few files to read (a package added to a large repository) are read here: a batch's round
# trip through a worker took 60-90 ms, reading a 500 KB package here 2-3 ms
IN_PROCESS_FILES = 16
IN_PROCESS_BYTES = 64 << 20
PARSE_ASIDE_BYTES = 2 << 20  # a previous index.json larger than this is parsed by a worker

Progress = Callable[[int, int], None]


@dataclass
class BuildResult:
    version: int
    artifacts: list[Artifact]
    new_blobs: int = 0
    new_bytes: int = 0
    seconds: float = 0.0
    written: int = 0
    removed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the tree is valid, but this failed


def _previous(
    tree: OutTree, workers: Workers,
) -> tuple[Callable[[], manifest.Previous | None], bool]:
    """The summary of the index this build replaces; parsed while the files are read (the
    returned function waits for it), and whether it is known already (then the function
    returns at once: no index, or the summary saved beside it)."""
    path = tree.path(INDEX)
    if not path.exists():
        leftovers = [p for p in tree.walk()]
        if leftovers:
            raise UsageError(
                f"is not empty and holds no repobuild index.json (found {leftovers[0]}); "
                "refusing to build into it",
                tree.root,
            )
        return (lambda: None), True
    # From the summary the build that wrote the index saved beside it, if it is this index's
    # (its stamp, as the build cache knows a file), else from the index itself. Reading
    # 100,000 entries of the index peaks at ~3 × their final size: a large index is read by a
    # worker process, which hands back only the summary.
    saved = _saved_summary(tree, path)
    if saved is not None:
        return (lambda: saved), True
    large = path.stat().st_size > PARSE_ASIDE_BYTES
    job = workers.submit(_read_previous, str(path)) if workers.count and large else None

    def result() -> manifest.Previous | None:
        try:
            return job.result() if job is not None else _read_previous(str(path))
        except (ManifestError, OSError) as exc:
            raise ValidationError(
                f"the existing index is unreadable ({exc}); not building over it", path
            ) from None

    return result, False


SUMMARY = "previous.bin"  # in OUT/.repobuild/: the summary of index.json, for the next build
OLD_SUMMARIES = ("previous.json",)  # an earlier format's file, removed when one is saved


def _index_key(index: Path) -> str:
    """What identifies the index file a summary was saved for: its stamp. Replacing index.json
    changes its inode, and any write to it its ctime (which no one can set back)."""
    st = index.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"


def _saved_summary(tree: OutTree, index: Path) -> manifest.Previous | None:
    try:
        key = _index_key(index)
        with open(tree.state / SUMMARY, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return manifest.read_summary(data, key)


def _start_summary(tree: OutTree, arts: list[Artifact],
                   listed: dict[str, FileEntry]) -> Path | None:
    """The summary's entries, written aside before index.json is in place (the file, or None
    if it could not be written: only a cache, the next build reads index.json)."""
    tmp = tree.temp_path()
    try:
        with open(tmp, "wb") as fh:
            manifest.start_summary(fh.write, arts, listed)
        return tmp
    except OSError:
        tmp.unlink(missing_ok=True)
        return None


def _save_summary(tree: OutTree, version: int, started: Path | None) -> None:
    """Completed and put in place after index.json is in place, under its stamp: a build
    killed in between leaves an older summary, whose stamp no longer matches, so the next build
    reads index.json instead. (An unfinished one is in OUT/.repobuild/tmp, removed at the end.)"""
    if started is None:
        return
    try:
        key = _index_key(tree.path(INDEX))
        with open(started, "ab") as fh:
            manifest.end_summary(fh.write, version, key)
        os.replace(started, tree.state / SUMMARY)
        for name in OLD_SUMMARIES:
            (tree.state / name).unlink(missing_ok=True)
    except OSError:
        started.unlink(missing_ok=True)  # only a cache: the next build reads index.json


def _read_previous(index: str) -> manifest.Previous:
    with open(index, "rb") as fh:
        return manifest.previous(fh.read())


def _ingest_all(
    files: list[SourceFile],
    tree: OutTree,
    cache: BuildCache,
    workers: Workers,
    created: list[str],
    *,
    link: bool,
    sha512: bool,
    progress: Progress | None,
    group_done: Callable[[str, list[Ingested]], None] | None = None,
) -> list[Ingested]:
    """Each file read once, or not at all when the cache vouches for it and its blob is there.

    The files are read by group, Python files, then .deb files, then the rest (see GROUPS), and
    ``group_done`` is called with each group as soon as it is all in, so that its indices are
    made while the rest is read.

    The files to read go to the worker processes in batches, unless they are only a few
    (IN_PROCESS_FILES); each worker hashes, inspects and places the blob. Every blob or
    .metadata file this build creates is added to ``created`` (removed again if the build
    fails before it lands anything else).
    """
    slots: list[Ingested | None] = [None] * len(files)
    todo: list[int] = []
    # a cached file's blob is taken to be in OUT: checked against the walk of OUT at the end
    # (a stat per file here cost more than the rest of an unchanged rebuild)
    for pos, (sf, art) in enumerate(zip(files, cache.lookup_all(files, sha512=sha512),
                                        strict=True)):
        if art is not None:
            slots[pos] = Ingested(art, cached=True, src=sf.path)
        else:
            todo.append(pos)
    settle()
    done = len(files) - len(todo)
    if progress:
        progress(done, len(files))
    root = str(tree.root)
    # a cached file's group from its kind (cheaper than from its name, and the same where it
    # matters: a .deb is a deb either way, and only dists are taken from the python group)
    group_of = [_group(sf.rel) if item is None else _KIND_GROUP.get(item.artifact.kind, "other")
                for sf, item in zip(files, slots, strict=True)]
    todo.sort(key=lambda pos: GROUPS.index(group_of[pos]))  # stable: SOURCE order in a group
    left = dict.fromkeys(GROUPS, 0)
    for pos in todo:
        left[group_of[pos]] += 1

    def group_in(group: str) -> None:
        if group_done is not None:
            group_done(group, [item for pos, item in enumerate(slots)
                               if item is not None and group_of[pos] == group])

    for group in GROUPS:
        if not left[group]:
            group_in(group)

    def job(pos: int) -> Job:
        sf = files[pos]
        return (sf.path, sf.rel)

    def take(positions: list[int], items: list[Ingested], error: BaseException | None) -> None:
        nonlocal done
        finished: list[str] = []
        for pos, item in zip(positions, items, strict=False):
            slots[pos] = item
            if item.placed:
                created.append(item.artifact.blob)
            if item.meta_created:
                created.append(item.artifact.blob + ".metadata")
            group = group_of[pos]
            left[group] -= 1
            if not left[group]:
                finished.append(group)
        done += len(items)
        if progress:
            progress(done, len(files))
        if error is not None:
            raise error
        for group in finished:
            group_in(group)

    if workers.count == 0 or (len(todo) < IN_PROCESS_FILES
                              and sum(files[pos].size for pos in todo) < IN_PROCESS_BYTES):
        for pos in todo:
            try:
                item = ingest_into(root, job(pos), link=link, sha512=sha512)
            except BaseException as exc:
                take([], [], exc)
            take([pos], [item], None)
    else:
        _in_workers(files, todo, workers, root, job, take, link=link, sha512=sha512)
    return [item for item in slots if item is not None]


#: the order in which files are read: Python files first (their pages are written by the
#: workers while the rest is read), then .deb files (their indices compress meanwhile)
GROUPS = ("python", "deb", "other")


_KIND_GROUP = {"wheel": "python", "sdist": "python", "deb": "deb"}


def _group(rel: str) -> str:
    kind = classify(rel.rsplit("/", 1)[-1])
    return "python" if kind in ("wheel", "sdist?") else "deb" if kind == "deb" else "other"


def _in_workers(
    files: list[SourceFile],
    todo: list[int],
    workers: Workers,
    root: str,
    job: Callable[[int], Job],
    take: Callable[[list[int], list[Ingested], BaseException | None], None],
    *,
    link: bool,
    sha512: bool,
) -> None:
    """Batches of about BATCH_BYTES (at most BATCH_FILES files), a few per worker in flight;
    results are taken in order. On the first failure nothing more is sent, and every batch
    still running is waited for, so that all it placed is known (and can be undone)."""
    window: deque[tuple[list[int], Future[tuple[list[Packed], BaseException | None]]]] = (
        deque()
    )
    failure: BaseException | None = None

    def drain_one() -> None:
        nonlocal failure
        positions, fut = window.popleft()
        try:
            packed, error = fut.result()
            items = [unpack(t) for t in packed]
        except BaseException as exc:  # a worker died (BrokenProcessPool) or pickling failed
            items, error = [], exc
        try:
            take(positions, items, error)
        except BaseException as exc:
            failure = failure or exc

    batch: list[int] = []
    size = 0
    for pos in todo:
        batch.append(pos)
        size += files[pos].size
        if size >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            window.append((batch, workers.submit(
                ingest_batch, root, [job(p) for p in batch], link, sha512)))
            batch, size = [], 0
            while len(window) >= workers.count * 3 or (window and window[0][1].done()):
                drain_one()
            if failure is not None:
                break
    if batch and failure is None:
        window.append((batch, workers.submit(
            ingest_batch, root, [job(p) for p in batch], link, sha512)))
    while window:
        drain_one()
    if failure is not None:
        raise failure


def _describe(arts: list[Artifact], config: Config, first_seen: dict[str, str] | None,
              stamp_now: str) -> None:
    """What the build adds to each file's artifact: when it came, its component, yanked or not
    (one loop: ~10,000 artifacts at every rebuild)."""
    seen = (first_seen or {}).get
    component_for, yank_reason = config.component_for, config.yank_reason
    # without component rules or yanked files (most repositories), no call per artifact
    rules, yanked, default = bool(config.components), bool(config.yanked), config.default_component
    for art in arts:
        art.uploaded = seen(art.sha256) or stamp_now
        art.component = component_for(art.path) if rules else default
        if art.dist is not None:
            art.yanked = yank_reason(art.path) if yanked else None


PageBatch = tuple[bytes, list[PageRow]]


class _PageJobs:
    """Project pages in batches, to the workers (or rendered here, without them), written
    below ``root`` (OUT, or a folder that lands whole). Those the last build recorded in the
    state folder ``known_in`` are only checked in OUT, not rendered again (repobuild.pyrepo).

    :meth:`results` takes them in order; a batch that no worker has started by then is done
    here instead (the build would only wait for it): a rebuild waited ~25-45 ms for the
    workers' checks of 10,000 pages, with this process idle. Not beyond STEAL_BATCHES: doing
    one here reads the record into this process, where at 50,000 projects it added ~30 MB to
    the peak of a rebuild (of 100,000 artifacts: 470 MB)."""

    def __init__(self, root: str, workers: Workers, projects: list[Project], renderer: str,
                 known_in: str | None = None) -> None:
        self._root, self._renderer, self._known_in = root, renderer, known_in
        self._batches = [projects[start:start + PAGE_BATCH]
                         for start in range(0, len(projects), PAGE_BATCH)]
        self._jobs: list[Future[PageBatch] | PageBatch] = []
        for batch in self._batches:
            if workers.count:
                self._jobs.append(workers.submit(stage_packed_pages, root, pack_projects(batch),
                                                 known_in, renderer))
            else:
                self._jobs.append(self._here(batch))
        if not workers.count:
            forget_known()  # read in this very process: not kept after the pages

    def _here(self, batch: list[Project]) -> PageBatch:
        return stage_project_pages(self._root, batch, self._known_in, self._renderer)

    def results(self) -> list[PageBatch]:
        jobs, self._jobs = self._jobs, []
        done: list[PageBatch | None] = [None if isinstance(job, Future) else job for job in jobs]
        waiting = [n for n, job in enumerate(jobs) if isinstance(job, Future)]
        steal = len(jobs) <= STEAL_BATCHES
        try:
            while waiting:
                # the last batch not started yet, done here; else the first one, waited for
                here = next((n for n in reversed(waiting)
                             if cast(Future[PageBatch], jobs[n]).cancel()), None) if steal else None
                if here is not None:
                    waiting.remove(here)
                    done[here] = self._here(self._batches[here])
                else:
                    first = waiting.pop(0)
                    done[first] = cast(Future[PageBatch], jobs[first]).result()
        finally:
            forget_known()  # the record, if read here: not held any longer
        return [batch for batch in done if batch is not None]


def _survey_later(
    tree: OutTree, arts: list[Artifact], workers: Workers, ahead: ScanAhead | None = None,
) -> Callable[[], tuple[list[str], set[str]]]:
    """OUT walked (:func:`repobuild.store.survey`) while this process renders: by the child
    that walked SOURCE, if it walked OUT as well (see :class:`repobuild.scan.ScanAhead`), else
    by a worker."""
    def expected_files() -> list[str]:
        expected = [art.blob for art in arts]
        expected += [art.blob + ".metadata" for art in arts if art.kind == "wheel"]
        return expected

    if ahead is not None:
        answer = ahead.survey(expected_files())

        def answered() -> tuple[list[str], set[str]]:
            found = answer()
            if found is None:  # the child walked no OUT, or failed: walked here
                found = survey(str(tree.root), expected_files(), keep_listings=True)
            return found

        return answered
    if not workers.count:
        found = survey(str(tree.root), expected_files(), keep_listings=True)
        return lambda: found
    job = workers.submit(_survey_packed, str(tree.root), expected_files())

    def result() -> tuple[list[str], set[str]]:
        packed, missing = job.result()
        return unpack_paths(packed), missing

    return result


def _survey_packed(root: str, expected: list[str]) -> tuple[bytes, set[str]]:
    """:func:`survey` in a worker; the paths come back packed (store.pack_paths)."""
    others, missing = survey(root, expected, keep_listings=True)
    return pack_paths(others), missing


def _restore_missing(
    tree: OutTree,
    ingested: list[Ingested],
    missing: set[str],
    cache: BuildCache,
    result: BuildResult,
    *,
    link: bool,
    sha512: bool,
) -> None:
    """Put back the blob (or .metadata) of a cached file that is gone from OUT (deleted by
    hand, say): read from its source again, placed if it still has the listed content."""
    for item in ingested:
        art = item.artifact
        gone = art.blob in missing or (
            art.kind == "wheel" and art.blob + ".metadata" in missing)
        if not item.cached or not gone or item.src is None:
            continue
        cache.forget(art.path)
        try:
            again = ingest_into(str(tree.root), (item.src, art.path), link=link, sha512=sha512)
        except RepobuildError as exc:
            result.errors.append(f"{art.blob}: missing from OUT and cannot be restored: {exc}")
            continue
        if again.artifact.sha256 != art.sha256:
            result.errors.append(
                f"{art.blob}: missing from OUT, and {art.path} has changed since it was read; "
                "build again")
            continue
        if again.stamp is not None:
            cache.record(again.artifact, again.stamp, again.meta_size)


def _check_duplicates(arts: list[Artifact]) -> None:
    """Two different files may not claim one package, version (and architecture or file name).

    Python files are keyed by file name first, and the project name and version normalized
    only where two share one: parsing 10,000 versions would cost more than the rest."""
    seen: dict[tuple[str, ...], list[Artifact]] = {}
    for art in arts:
        key: tuple[str, ...]
        if art.deb is not None:
            key = ("deb", art.deb.package, art.deb.version, art.deb.architecture)
        elif art.dist is not None:
            key = ("py", art.kind, art.filename)
        else:
            continue
        others = seen.setdefault(key, [])
        for other in others:
            if other.sha256 != art.sha256 and _same_claim(other, art):
                raise ValidationError(
                    f"claims {_claim(art)}, which {other.path} already provides with different "
                    "content",
                    art.path,
                )
        others.append(art)


def _same_claim(a: Artifact, b: Artifact) -> bool:
    if a.deb is not None:
        return True  # the key holds package, version and architecture
    assert a.dist is not None and b.dist is not None
    return (canonicalize_name(a.dist.name) == canonicalize_name(b.dist.name)
            and Version(a.dist.version) == Version(b.dist.version))


def _claim(art: Artifact) -> str:
    if art.deb is not None:
        return f"{art.deb.package} {art.deb.version} ({art.deb.architecture})"
    return art.filename


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _keys_files(keys: KeySet) -> dict[str, bytes]:
    files = {
        "keys/public.asc": keys.gpg_public,
        # the signer's exported key taken out of its armor (a fresh gpg home to dearmor it
        # cost ~0.1 s here)
        "keys/repo.gpg": keys.gpg_public_binary,
    }
    if keys.cosign_public:
        files["keys/cosign.pub"] = keys.cosign_public
    if keys.owner_public:
        files["keys/owner.pub"] = keys.owner_public
    trust = keys.trust or make_trust(
        gpg_public=keys.gpg_public,
        gpg_fingerprint=keys.gpg.key_id,
        cosign_public=keys.cosign_public,
        owner_public=None,
        owner_keyid=None,
    )
    files["keys/trust.json"] = json.dumps(trust, indent=2, sort_keys=True).encode() + b"\n"
    return files


def _repo_sources(config: Config, components: tuple[str, ...], public_asc: bytes) -> bytes:
    uri = config.base_url or "http://REPLACE-WITH-MIRROR-URL/"
    armored = public_asc.decode().strip().split("\n")
    key_lines = [" " + (ln if ln.strip() else ".") for ln in armored]
    text = "\n".join(
        [
            "# deb822 source for apt; set URIs to a mirror of this repository.",
            "# Signed-By holds the repository's public key itself (no keyring file needed).",
            "Types: deb",
            f"URIs: {uri}",
            f"Suites: {config.suite}",
            f"Components: {' '.join(components)}",
            "Signed-By:",
            *key_lines,
        ]
    )
    return (text + "\n").encode()


def _landing(
    *,
    config: Config,
    keys: KeySet,
    version: int,
    now: datetime,
    expires: datetime,
    arts: list[Artifact],
    projects: list[Project],
    components: tuple[str, ...],
) -> bytes:
    """The landing page: how to use the repository, its keys, and what it holds (``projects``
    as the simple index lists them, in name order)."""
    debs = sorted(filter(_deb_of, arts), key=_by_package)
    key_rows = [{"kind": "OpenPGP", "id": keys.gpg.key_id, "href": "keys/public.asc"}]
    if keys.cosign_public:
        key_rows.append(
            {"kind": "cosign (SHA-256 of key)", "id": public_key_hint(keys.cosign_public),
             "href": "keys/cosign.pub"}
        )
    if keys.owner_public:
        from repobuild.signing import intoto

        key_rows.append(
            {"kind": "in-toto layout owner", "id": intoto.key_id(keys.owner_public),
             "href": "keys/owner.pub"}
        )
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in config.label.lower())
    return render_large(
        "landing.html.j2",
        label=config.label,
        description=config.description.rstrip("."),
        version=version,
        generated=rfc3339(now),
        expires=rfc3339(expires),
        keys=key_rows,
        gpg_fingerprint=keys.gpg.key_id,
        base=config.base_url or "http://HOST/PREFIX/",
        slug=slug or "repo",
        suite=config.suite,
        components=list(components),
        # the artifacts themselves for the packages and the files (the rows' fields are
        # their attributes), and a NamedTuple per project, made by tuple.__new__ (a C call;
        # the NamedTuple's own __new__ is Python's): ~3 MB at 50,000 projects. Rows have
        # attributes, not keys: a dict's failing getattr (an exception per field) was half
        # the page's time
        debs=debs,
        projects=[_new_row(_ProjectRow, (name, files[0].version if len(files) == 1 else
                                        ", ".join(_by_version({f.version for f in files}))))
                  for name, files in projects],
        files=[a for a in arts if a.kind == "file"],
    )


#: the landing page's order of .deb packages: name, architecture, version (as text)
_by_package = attrgetter("deb.package", "deb.architecture", "deb.version")
_deb_of = attrgetter("deb")
_new_row = tuple.__new__


def _by_version(versions: set[str]) -> list[str]:
    """A project's versions in PEP 440 order (one needs no parsing: most projects have one)."""
    return sorted(versions, key=Version) if len(versions) > 1 else list(versions)


class _ProjectRow(NamedTuple):
    name: str
    versions: str  # comma-separated, in PEP 440 order


def _retained(
    prev: manifest.Previous | None,
    current: tuple[Mapping[str, object], ...],
    tree: OutTree,
    now: datetime,
    keep_by_hash: timedelta,
) -> dict[str, FileEntry]:
    """Older blobs (kept until `gc`) and by-hash files (kept for a while) still on disk: what
    the previous index listed and none of the ``current`` mappings holds. That is found by set
    difference on their keys, with no Python call per path (~16,000 at 10,000 artifacts, nearly
    all of them current): a loop over them took ~8 ms of a rebuild."""
    if prev is None:
        return {}
    gone: set[str] | KeysView[str] = prev.kept_files.keys()
    for mapping in current:
        gone = gone - mapping.keys()
    kept: dict[str, FileEntry] = {}
    for path in sorted(gone):
        size, sha256, was_retired = prev.kept_files[path]
        if size < 0:
            continue
        is_blob = path.startswith("blobs/")
        is_by_hash = "/by-hash/" in path and path.startswith("dists/")
        if not (is_blob or is_by_hash) or not tree.path(path).is_file():
            continue
        retired = was_retired or rfc3339(now)
        if is_by_hash and manifest.parse_time(retired) + keep_by_hash < now:
            continue
        kept[path] = FileEntry(size, sha256, retired)
    return kept


def build(
    source: Path,
    out: Path,
    keydir: Path,
    config: Config,
    *,
    link: bool = False,
    rehash: bool = False,
    signers: dict[str, str] | None = None,
    sigstore: bool = False,
    identity_token: str | None = None,
    progress: Progress | None = None,
    on_phase: Callable[[str], None] | None = None,
    scanned: ScanAhead | None = None,
) -> BuildResult:
    """``scanned``: SOURCE's walk started already (by the command line, while it imported
    this module), for SOURCE and OUT."""
    started = time.monotonic()
    now = build_time()
    epoch = source_date_epoch()
    expires = now + timedelta(days=config.validity_days)
    phase = on_phase or (lambda _name: None)
    if out.resolve() == source.resolve():
        if scanned is not None:
            scanned.close()
        raise UsageError("OUT must not be SOURCE itself", out)

    phase("scanning")
    files = scanned.result() if scanned is not None else scan_source(source, exclude=out)
    check_keydir(keydir)
    # forked first: before OUT's lock is taken (a worker would hold it) and before any thread
    workers = Workers(worker_count(len(files)))
    # Unlocking keys (gpg import, the cosign key's scrypt) overlaps with reading the files.
    key_pool = ThreadPoolExecutor(max_workers=1)
    keys_job = key_pool.submit(load_keys, keydir, faked_time=epoch, signers=signers)
    # and the in-toto layout (it depends on the keys and the expiry only) is signed meanwhile
    layout_job = key_pool.submit(_layout, keys_job, expires)
    key_pool.shutdown(wait=False)
    tree = OutTree(out)
    failed = True
    landing = False  # from here on, a failure keeps what this build placed
    created: list[str] = []  # blobs and .metadata files this build added to OUT
    page_record: KnownWriter | None = None  # dropped unless it lands with the build
    finished = False  # the build returns its result
    metadata_sizes: dict[str, int] = {}
    stack = ExitStack()  # files open until the build is over
    try:
        tree.open()
        keep_compiled(str(tree.state / TEMPLATES))
        prev_job, prev_known = _previous(tree, workers)

        phase("reading")
        cache = BuildCache(tree.state, enabled=not rehash)
        blocks = BlockCache(tree.state / BLOCKS, enabled=not rehash)
        if rehash:  # nor the listings of OUT's folders (repobuild.store.survey)
            (tree.state / SURVEY_FILE).unlink(missing_ok=True)
        stamp_now = rfc3339(now)
        early: list[AptJob] = []
        early_pages: list[tuple[list[Project], _PageJobs]] = []
        first_build = not tree.path(INDEX).exists()
        renderer = renderer_version()

        def group_done(group: str, items: list[Ingested]) -> None:
            """Indices made while the other files are read."""
            if group == "deb":  # the apt indices compress in threads
                debs = [item.artifact for item in items if item.artifact.deb is not None]
                for art in debs:
                    art.component = config.component_for(art.path)
                early.append(AptJob(debs, config, blocks))
            elif group == "python" and prev_known and workers.count:
                # the workers check the recorded pages (and render what changed) from here, not
                # after the rest is read and the apt indices are started (a rebuild that adds a
                # .deb waited ~0-30 ms for the checks, ~25 ms later); a first build's pages go
                # into a folder of their own, which lands whole (one rename) with the others
                folder = tree.stage_folder("simple") if first_build else str(tree.root)
                if folder is None:
                    return
                known = prev_job()
                dists = [item.artifact for item in items if item.artifact.dist is not None]
                _describe(dists, config, known.uploaded if known else None, stamp_now)
                early_pages.append(start_pages(dists, folder, known))

        def start_pages(dists: list[Artifact], root: str,
                        known: manifest.Previous | None) -> tuple[list[Project], _PageJobs]:
            """The project pages of these (described) artifacts, under way below ``root``;
            those the last build recorded (if there was one) only checked."""
            projects = list(project_files(dists).items())
            return projects, _PageJobs(root, workers, projects, renderer,
                                       str(tree.state) if known is not None else None)

        ingested = _ingest_all(
            files, tree, cache, workers, created,
            link=link, sha512=config.sha512, progress=progress, group_done=group_done,
        )
        # 100,000 scan records, not needed again: freed before the previous index comes in
        del files
        prev = prev_job()  # an unreadable index fails here: what was placed is undone
        version = (prev.version + 1) if prev else 1
        tree.use_workers(workers)
        arts = [i.artifact for i in ingested]
        _check_duplicates(arts)
        _describe(arts, config, prev.uploaded if prev else None, stamp_now)
        if prev is not None:  # what is still current is no candidate for keeping as retired
            prev.uploaded = {}
            drop = prev.kept_files.pop
            for art in arts:
                blob = art.blob
                drop(blob, None)
                drop(blob + ".metadata", None)

        phase("rendering")
        # the project pages are rendered and written by the workers while this process
        # renders the apt indices, the landing page and the rest
        if early_pages:
            projects, page_jobs = early_pages.pop()
        else:
            projects, page_jobs = start_pages([a for a in arts if a.dist is not None],
                                              str(tree.root), prev)
        # OUT as it is before landing, for the pruning after it (what landing adds is listed):
        # walked by the child that walked SOURCE, since the build started (~0.1 s of CPU at
        # 10,000 artifacts; in a worker after the page batches, as it was, a rebuild that adds
        # one package waited ~50-70 ms for it at the end), else by a worker. OUT held nothing
        # before a first build and the cache vouched for nothing: all there is was written by
        # this build
        fresh_tree = prev is None and not any(item.cached for item in ingested)
        survey_job = (lambda: ([], set())) if fresh_tree else _survey_later(
            tree, arts, workers, scanned)
        # the Packages files compress in threads (since the last .deb was read)
        apt_job = early[0] if early else AptJob([a for a in arts if a.deb is not None], config,
                                                blocks)
        early.clear()
        components = tuple(apt_job.components)
        keys = keys_job.result()
        # The apt indices are finished (their compression waited for, Release signed by gpg)
        # in a thread while this one renders the landing page, index.json's artifacts and the
        # link's materials, which need no gpg: the build waited ~15-50 ms for it here. Nothing
        # else runs gpg until it is done (see the index's signature below).
        apt_pool = ThreadPoolExecutor(max_workers=1)
        apt_done = apt_pool.submit(apt_job.finish, keys.gpg, now)
        # its thread is waited for before the keys (gpg's home) go; the pool, not the future,
        # is what is kept for that: the future would hold the apt indices (~30 MB at 100,000
        # artifacts) to the end
        stack.callback(apt_pool.shutdown)
        # Everything rendered is staged at once (written aside, or found identical in OUT) and
        # only its size and hash kept; the renames into place come in the writing phase.
        current: dict[str, FileEntry] = {}
        immutable: list[str] = []
        mutable: list[str] = []  # files that the indices below name
        tops: list[str] = []  # Release & co, root pages, landing page, in-toto: land after

        def stage(path: str, data: bytes | bytearray, group: list[str],
                  sha256: str | None = None) -> None:
            size, digest = tree.stage(path, data, sha256)
            current[path] = FileEntry(size, digest)
            group.append(path)

        for item in ingested:  # the PEP 658 files, written beside their blobs already
            art = item.artifact
            if art.kind != "wheel" or art.dist is None:
                continue
            size = cache.metadata_size(art.path) if item.cached else item.meta_size
            if size is None or not art.metadata_sha256:
                raise AssertionError(f"{art.path}: no core metadata recorded")
            current[art.blob + ".metadata"] = FileEntry(size, art.metadata_sha256)
            metadata_sizes[art.path] = size
        for path, data in _keys_files(keys).items():
            stage(path, data, mutable)
        stage("keys/repo.sources", _repo_sources(config, components, keys.gpg_public), mutable)
        stage("index.html", _landing(
            config=config, keys=keys, version=version, now=now, expires=expires,
            arts=arts, projects=projects, components=components,
        ), tops)
        root_html, root_json = render_root([name for name, _files in projects])
        stage("simple/index.html", root_html, tops)
        stage("simple/index.json", root_json, tops)
        del projects
        # index.json's artifacts and the in-toto link's materials depend on nothing still to
        # come: written while the apt indices compress and the workers finish the pages.
        # index.json is written to a file as it is rendered (~70 MB at 100,000 artifacts),
        # hashed meanwhile (cosign signs the digest), and renamed into place when its turn
        # comes.
        index_tmp = tree.temp_path()
        index_fh = stack.enter_context(HashingFile(index_tmp))  # written by a thread
        index_sig: list[DetachedSignature] = []  # gpg's, fed from the apt signatures on

        def write(piece: bytes) -> None:
            index_fh.write(piece)
            for signature in index_sig:
                signature.write(piece)

        index = manifest.IndexWriter(write, version=version, generated=now, expires=expires,
                                     meta={"origin": config.origin, "label": config.label,
                                           "suite": config.suite, "codename": config.codename})
        index.artifacts(arts)
        provenance = _start_link(keys, arts, layout_job.result())
        apt = apt_done.result()
        del apt_job, apt_done
        # index.json is signed by gpg as it is written: gpg hashes each piece as it comes, and
        # the signature is ready soon after the last. Started once Release is signed: two gpg
        # at work through one agent failed a signature once (0e6cf49).
        index_sig.append(keys.gpg.sign_stream())
        stack.callback(index_sig[0].abort)  # a no-op once the signature is finished
        index_sig[0].write_file(str(index_tmp), index_fh.written())  # what came before
        for path, data in apt.by_hash.items():
            stage(path, data, immutable, apt.digests.get(path))
        for path, data in apt.mutable.items():
            stage(path, data, mutable if "/binary-" in path else tops, apt.digests.get(path))
        del apt
        page_record = KnownWriter(tree.temp_path(), renderer)
        # a page OUT holds already (staged nowhere) is only listed: nothing is to land
        into_folder = tree.has_stage_folder("simple")
        for record, rows in page_jobs.results():
            page_record.add_entries(record)
            for name, html_size, html_sha, html_at, js_size, js_sha, js_at in rows:
                html_path, json_path = page_paths(name)
                current[html_path] = FileEntry(html_size, html_sha)
                current[json_path] = FileEntry(js_size, js_sha)
                if html_at is not None or into_folder:
                    tree.adopt(html_path, html_at)
                    mutable.append(html_path)
                if js_at is not None or into_folder:
                    tree.adopt(json_path, js_at)
                    mutable.append(json_path)
        del page_jobs
        stage("_headers", render_headers_file(), mutable)
        stage("nginx-repobuild.conf", render_nginx_snippet(), mutable)

        blob_paths = {a.blob: a.sha256 for a in arts}  # each blob path made once (a property)
        kept = _retained(
            prev, (current, blob_paths), tree, now,
            timedelta(days=config.by_hash_keep_days),
        )
        listed = current  # and the kept ones: no copy of 250,000 entries
        listed.update(kept)

        # in-toto: the owner's layout and the builder's link, signed in a thread while the
        # summary's entries are written (the in-toto files are no candidates for keeping)
        signed_link = None
        if provenance is not None:
            layout, writer = provenance
            signed_link = writer.products_signing(_Products(blob_paths, listed))
            del provenance, writer
        summary = _start_summary(tree, arts, listed)
        if signed_link is not None:
            link_name, link_bytes = signed_link()
            # in path order, as before: the link ("build.<keyid>.link"), then the layout
            stage(f"in-toto/{link_name}", link_bytes, tops, signed_link.sha256())
            stage("in-toto/root.layout", layout, tops)
            for path in (f"in-toto/{link_name}", "in-toto/root.layout"):
                listed[path] = current[path]
            del signed_link, layout, link_bytes

        index.files(listed)
        signatures = _sign_index(keys, index_tmp, index_fh.close(), index_sig[0].finish())
        # gpg has signed all it signs: its agent is stopped and its home removed (~5 ms, mostly
        # waiting for gpgconf) while the build lands; the keys' close at the end waits for it
        threading.Thread(target=keys.gpg.close, name="gpg close", daemon=True).start()
        errors: list[str] = []
        if sigstore:
            from repobuild.signing.keyless import KeylessError, sign_keyless
            from repobuild.trust import KEYLESS_BUNDLE  # the verifier's module (~1.6 ms)

            try:
                signatures[KEYLESS_BUNDLE] = sign_keyless(
                    index_tmp.read_bytes(), identity_token=identity_token
                )
            except KeylessError as exc:
                errors.append(f"{exc} (the tree is built and signed with the other keys)")

        # ---- from here on, OUT changes, in the safe order ---------------------------------
        phase("writing")
        landing = True
        result = BuildResult(version=version, artifacts=arts, errors=errors)
        for item in ingested:  # the blobs are in place already (ingest_into)
            if item.placed:
                result.new_blobs += 1
                result.new_bytes += item.artifact.size
        tree.commit_many(immutable)
        result.written = tree.commit_many(mutable) + tree.commit_many(tops)
        # the workers stay until the end: OUT's survey may still be running in one
        history = record_history(tree, version, index_tmp)  # a copy, not yet in place
        index_tmp.chmod(0o644)
        os.replace(index_tmp, tree.path(INDEX))
        for path, data in signatures.items():
            tree.write(path, data)
        failed = False
        history()
        _save_summary(tree, version, summary)
        for item in ingested:
            if item.stamp is not None:
                cache.record(item.artifact, item.stamp, metadata_sizes.get(item.artifact.path))

        phase("pruning")
        keep = listed.keys() | blob_paths.keys() | {INDEX, *signatures}
        on_disk, missing = survey_job()
        _restore_missing(tree, ingested, missing, cache, result, link=link,
                         sha512=config.sha512)
        for path in on_disk:
            if path not in keep:
                tree.remove(path)
                result.removed += 1
        del on_disk
        cache.save(tree.temp_path())
        blocks.prune()
        page_record.land(tree.state)
        result.by_kind = dict(Counter(map(attrgetter("kind"), arts)))
        if keys.insecure_demo:
            result.warnings.append(
                "signed with the INSECURE demo keys of keys.example/: anyone can forge these "
                "signatures; never publish this tree"
            )
        result.seconds = time.monotonic() - started
        finished = True
        return result
    finally:
        if scanned is not None:  # its survey of OUT, if still running, is of no use now
            scanned.close()
        stack.close()
        keep_compiled(None)
        # a build that finished left no work in them (a CLI build ended its process ~5 ms
        # sooner); one that failed waits for what they still do in OUT
        workers.close(wait=not finished)
        if page_record is not None:
            page_record.discard()  # nothing left to drop once it has landed
        if failed and not landing:
            for path in reversed(created):  # OUT as it was: no new blob stays behind
                tree.remove(path)
        tree.close(failed=failed and tree.created_root)
        if keys_job.done() and keys_job.exception() is None:
            keys_job.result().close()
        else:
            keys_job.add_done_callback(_close_keys)


def _close_keys(job: Future[KeySet]) -> None:
    if job.exception() is None:
        job.result().close()


def _sign_index(keys: KeySet, index: Path, digest: bytes, gpg_sig: bytes) -> dict[str, bytes]:
    """index.json's signatures (gpg's made as it was written), from the file and its SHA-256
    (never all of it in memory, except for a signer that needs the bytes: a key behind a
    signer URI)."""
    sigs = {"index.json.asc": gpg_sig}
    if keys.cosign is not None and keys.cosign_public is not None:
        from repobuild.signing.cosign import CosignSigner
        from repobuild.signing.sigstore_bundle import make_key_bundle_for_digest

        if isinstance(keys.cosign, CosignSigner):
            der = keys.cosign.sign_digest(digest)
        else:
            der = keys.cosign.sign(index.read_bytes())
        sigs["index.json.sig"] = base64.b64encode(der)
        sigs["index.json.sigstore.json"] = make_key_bundle_for_digest(
            digest, der, keys.cosign_public)
    return sigs


def _layout(keys_job: Future[KeySet], expires: datetime) -> bytes | None:
    """The owner's signed in-toto layout, or None without in-toto keys."""
    try:
        keys = keys_job.result()
    except BaseException:  # reported where the keys are used
        return None
    if keys.owner_key is None or keys.builder_public is None:
        return None
    from repobuild.signing import intoto

    return intoto.make_layout(keys.owner_key, keys.builder_public, expires=expires)


class _Products(Mapping[str, str]):
    """Path -> SHA-256 of every file the build wrote: the blobs, then the listed files."""

    def __init__(self, blobs: dict[str, str], listed: dict[str, FileEntry]) -> None:
        self._blobs, self._listed = blobs, listed

    def __getitem__(self, path: str) -> str:
        entry = self._listed.get(path)
        return entry.sha256 if entry is not None else self._blobs[path]

    def __iter__(self) -> Iterator[str]:
        if self._blobs.keys().isdisjoint(self._listed):  # as a build makes them: no Python
            return iter([*self._blobs, *self._listed])  # step per path (~2 ms at 26,000)
        return chain(self._blobs, (p for p in self._listed if p not in self._blobs))

    def __len__(self) -> int:
        return len(self._blobs.keys() | self._listed.keys())

    def digests_of(self, paths: list[str]) -> list[str]:
        """``[self[p] for p in paths]`` without a method call per path (intoto's bulk read)."""
        find, blobs = self._listed.get, self._blobs
        return [entry.sha256 if (entry := find(p)) is not None else blobs[p] for p in paths]


def _start_link(
    keys: KeySet, arts: list[Artifact], layout: bytes | None,
) -> tuple[bytes, intoto.LinkWriter] | None:
    """in-toto: the owner's layout and the builder's link for this build, its materials
    written (the products come once every file is known); None without in-toto keys."""
    if (layout is None or keys.owner_key is None or keys.builder_key is None
            or keys.builder_public is None):
        return None
    from repobuild.signing import intoto

    writer = intoto.LinkWriter(keys.builder_key, command=["repobuild", "build"])
    writer.materials({a.path: a.sha256 for a in arts})
    return layout, writer
