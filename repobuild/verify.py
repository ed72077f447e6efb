"""`repobuild verify`: a tree, from a folder or a URL, checked end to end against a trust root.

index.json's signatures under the policy, its expiry and version (against --state), every
listed file's size and SHA-256 (each byte read once), unlisted files, and the agreement of every
index with index.json: Release, InRelease, Release.gpg, Packages, by-hash, the simple pages and
their PEP 691 twins, and the in-toto layout and build link.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import selectors
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from repobuild import checks
from repobuild.checks import Failure
from repobuild.errors import UsageError, VerificationError
from repobuild.fdio import write_all
from repobuild.formats import manifest
from repobuild.formats.manifest import Manifest, ManifestError, rfc3339
from repobuild.model import FileEntry
from repobuild.sources import (
    FetchError,
    FolderSource,
    Hashed,
    HttpSource,
    Source,
    check_rel,
    hash_file,
    walk_files,
)
from repobuild.trust import (
    SIGNATURE_FILES,
    SignatureResult,
    TrustPolicy,
    check_signatures,
    gpg_clearsigned_text,
    gpgv_verify,
)

CLOCK_SKEW = timedelta(minutes=5)
RESERVED = ("index.json", "in-toto/")


@dataclass
class Report:
    target: str
    ok: bool = True
    version: int | None = None
    generated: str | None = None
    expires: str | None = None
    signatures: list[SignatureResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    unlisted: list[str] = field(default_factory=list)
    in_grace: list[str] = field(default_factory=list)
    checks_run: list[str] = field(default_factory=list)

    def fail(self, path: str, reason: str) -> None:
        self.ok = False
        self.failures.append((path, reason))

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "version": self.version,
            "generated": self.generated,
            "expires": self.expires,
            "signatures": [s.to_json() for s in self.signatures],
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "unlisted": self.unlisted,
            "grace": self.in_grace,
            "checks": self.checks_run,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
        }


def read_state(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    try:
        doc = json.loads(path.read_bytes())
        return int(doc.get("version", 0))
    except (ValueError, TypeError, AttributeError, OSError):
        raise UsageError("state file is not valid JSON with a 'version'", path) from None


def write_state(path: Path, index: Manifest) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(
        {"version": index.version, "generated": rfc3339(index.generated)}, sort_keys=True
    ) + "\n")
    os.replace(tmp, path)


def fetch_signatures(src: Source) -> dict[str, bytes | None]:
    return {name: src.read(name) for name in SIGNATURE_FILES}


def check_index(
    policy: TrustPolicy,
    data: bytes,
    signatures: dict[str, bytes | None],
    *,
    now: datetime,
    min_version: int = 0,
    report: Report,
) -> Manifest | None:
    """Signatures, syntax, expiry and version of index.json; None when it cannot be trusted.

    The signatures are checked (gpgv, a child process, does most of it) while this thread
    parses the document; nothing of the parse is used, or reported, unless the signatures
    are enough.
    """
    checked: list[tuple[bool, list[SignatureResult]]] = []
    raised: list[BaseException] = []

    def check() -> None:
        try:
            checked.append(check_signatures(policy, data, signatures))
        except BaseException as exc:  # re-raised below, in the caller's thread
            raised.append(exc)

    checker = threading.Thread(target=check, name="repobuild-signatures", daemon=True)
    checker.start()
    index: Manifest | None = None
    parse_error: Exception | None = None
    try:
        index = manifest.parse(data)
    except Exception as exc:  # reported (ManifestError) or raised only once trusted
        parse_error = exc
    finally:
        checker.join()
    if raised:
        raise raised[0]
    ok, report.signatures = checked[0]
    bad = [s for s in report.signatures if not s.ok and signatures_present(s, signatures)]
    if not ok:
        reasons = "; ".join(f"{s.kind}: {s.reason}" for s in report.signatures if not s.ok)
        report.fail("index.json", f"not signed by enough trusted keys ({reasons or 'none'})")
        return None
    for s in bad:
        report.fail("index.json", f"{s.kind} signature does not verify: {s.reason}")
    if isinstance(parse_error, ManifestError):
        report.fail("index.json", f"malformed: {parse_error}")
        return None
    if parse_error is not None:
        raise parse_error
    assert index is not None
    report.version = index.version
    report.generated = rfc3339(index.generated)
    report.expires = rfc3339(index.expires)
    if index.expires < now:
        report.fail("index.json", f"expired at {rfc3339(index.expires)}")
    if index.generated > now + CLOCK_SKEW:
        report.fail("index.json", f"not valid yet (generated {rfc3339(index.generated)})")
    if index.version < min_version:
        report.fail(
            "index.json",
            f"version {index.version} is older than version {min_version} seen before "
            "(rollback or replay)",
        )
    return index


def signatures_present(result: SignatureResult, signatures: dict[str, bytes | None]) -> bool:
    """A failing check counts as tampering only when its signature file is there."""
    return not result.reason.endswith("missing")


def verify(
    src: Source,
    policy: TrustPolicy,
    *,
    state: Path | None = None,
    now: datetime | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    now = now or datetime.now(UTC)
    report = Report(target=src.label)
    try:
        _verify(src, policy, report, state, now, workers, progress)
    except FetchError as exc:
        report.fail("(transport)", str(exc))
    if report.ok and state is not None and report.version is not None:
        write_state(state, manifest.Manifest(report.version, manifest.parse_time(
            report.generated or rfc3339(now)), now, [], {}))
    return report


def _verify(
    src: Source,
    policy: TrustPolicy,
    report: Report,
    state: Path | None,
    now: datetime,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    if isinstance(src, FolderSource) and FORK:
        # forked now, while this process is small: the in-toto check holds the whole build
        # link (100,000 products) and should not add that to a copy of the parsed index
        helper = _Helper(_load_intoto) if policy.intoto_owners else None
        try:
            index = _check_index(src, policy, report, state, now)
            if index is not None:
                _verify_folder(src, index, policy, report, workers, progress, helper)
        finally:
            if helper is not None:
                helper.close()
        return
    index = _check_index(src, policy, report, state, now)
    if index is None:
        return
    kept = _check_files(src, index, report, workers, progress)
    report.checks_run.append("files")
    listing = src.list_files()
    if listing is not None:
        allowed = set(index.listed()) | {"index.json", *SIGNATURE_FILES}
        if isinstance(src, FolderSource):
            from repobuild.mirror.sync import grace_files

            # a mirror keeps files the index stopped listing for a grace period
            report.in_grace = sorted(grace_files(src.root) & set(listing))
            allowed |= set(report.in_grace)
        report.unlisted = [p for p in listing if p not in allowed]
        for p in report.unlisted:
            report.fail(p, "not listed in index.json")
        report.checks_run.append("unlisted")
    _cross_check(index, kept, policy, report)


def _check_index(
    src: Source, policy: TrustPolicy, report: Report, state: Path | None, now: datetime
) -> Manifest | None:
    data = src.read("index.json")
    if data is None:
        report.fail("index.json", "missing")
        return None
    index = check_index(
        policy, data, fetch_signatures(src), now=now, min_version=read_state(state), report=report
    )
    if index is not None:
        report.checks_run.append("signatures")
    return index


def _file_problem(
    files: Mapping[str, FileEntry], path: str, size: int, digest: str, got: Hashed | None
) -> str | None:
    """What is wrong with one listed file, as hashed (None: nothing); ``files``: the
    index's ``files``, which say whether a file is retired."""
    if got is None:
        entry = files.get(path)
        if entry is not None and entry.retired:
            return None  # retired files may be collected (repobuild gc)
        return "missing"
    if got.size != size:
        return f"size {got.size}, index.json says {size}"
    if got.sha256 != digest:
        return "SHA-256 does not match index.json (content changed)"
    return None


def _check_files(
    src: Source,
    index: Manifest,
    report: Report,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, bytes]:
    """Every listed file hashed in threads (a URL; or a folder where there is no fork)."""
    listed = sorted(index.listed().items())
    kept: dict[str, bytes] = {}
    n_workers = workers or (8 if isinstance(src, HttpSource) else max(2, os.cpu_count() or 2))

    def one(item: tuple[str, tuple[int, str]]) -> tuple[str, str | None, int, bytes | None]:
        path, (size, digest) = item
        got = src.hash(path, keep=checks.is_kept(path))
        problem = _file_problem(index.files, path, size, digest, got)
        if got is None:
            return path, problem, 0, None
        return path, problem, got.size, None if problem else got.data

    done = 0
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for path, problem, size, data in _bounded_map(pool, one, listed, 4 * n_workers):
            done += 1
            report.bytes_checked += size
            if problem:
                report.fail(path, problem)
            elif data is not None:
                kept[path] = data
            if progress:
                progress(done, len(listed))
    report.files_checked = len(listed)
    return kept


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: list[Any], window: int
) -> Iterator[Any]:
    """``pool.map`` in order, with at most ``window`` calls pending (not one future per file
    at once: 100,000 files)."""
    pending: deque[Future[Any]] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()


# --- the cross-checks, one function per index kind (shared by both ways of hashing) -------------


def _suites(index: Manifest) -> list[str]:
    return sorted({p.rsplit("/", 1)[0] for p in index.files if p.endswith("/Release")})


def _projects(index: Manifest) -> list[str]:
    """The project list comes from index.json, so that one changed project page is blamed
    alone, not the root pages that (rightly) still list it."""
    return sorted(
        parts[1] for parts in (p.split("/") for p in index.files)
        if len(parts) == 3 and parts[0] == "simple" and parts[2] == "index.html"
    )


def _project_page(path: str) -> str | None:
    """The folder of a project page ``simple/<name>/index.html``, else None."""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "simple" and parts[2] == "index.html":
        return f"simple/{parts[1]}"
    return None


def _suite_failures(
    index: Manifest,
    suite: str,
    release: bytes,
    inrelease: bytes | None,
    detached: bytes | None,
    policy: TrustPolicy,
) -> list[Failure]:
    out = checks.check_release(index, suite, release)
    if not policy.gpg_public:
        return out
    if inrelease is not None:
        ok, _fpr, reason = gpgv_verify(policy.keyring(), inrelease, None)
        if not ok:
            out.append((f"{suite}/InRelease", reason))
        else:
            try:
                if gpg_clearsigned_text(inrelease) != release:
                    out.append((f"{suite}/InRelease", "signed text differs from Release"))
            except VerificationError as exc:
                out.append((f"{suite}/InRelease", str(exc)))
    if detached is not None:
        ok, _fpr, reason = gpgv_verify(policy.keyring(), detached, release)
        if not ok:
            out.append((f"{suite}/Release.gpg", reason))
    return out


def _intoto_failures(
    index: Manifest,
    layout: bytes | None,
    links: list[bytes],
    policy: TrustPolicy,
    listed: dict[str, tuple[int, str]] | None = None,
) -> tuple[list[Failure], bool]:
    """Failures of the in-toto check, and whether it ran (a build link verified)."""
    if layout is None or not policy.intoto_owners:
        return [], False
    return _intoto_outcome(index, _link_products(layout, links, policy.intoto_owners), listed)


def _link_products(
    layout: bytes, links: list[bytes], owners: list[bytes]
) -> dict[str, str] | list[str]:
    """The products of the first build link that verifies under the layout of some trusted
    owner, or (none does) why each did not."""
    from repobuild.signing.intoto import verify_link_products

    errors = []
    for owner in owners:
        for link in links:
            try:
                return verify_link_products(layout, link, owner, now=datetime.now(UTC))
            except VerificationError as exc:
                errors.append(str(exc))
    return errors


def _intoto_outcome(
    index: Manifest,
    products: dict[str, str] | list[str],
    listed: dict[str, tuple[int, str]] | None = None,
) -> tuple[list[Failure], bool]:
    if isinstance(products, dict):
        return checks.check_products(index, products, RESERVED, listed=listed), True
    return [("in-toto/root.layout", "; ".join(products) or "no build link found")], False


def _cross_check(
    index: Manifest, kept: dict[str, bytes], policy: TrustPolicy, report: Report
) -> None:
    for path, reason in checks.check_by_hash(index):
        report.fail(path, reason)
    for suite in _suites(index):
        release = kept.get(f"{suite}/Release")
        if release is None:
            continue
        for path, reason in _suite_failures(
            index, suite, release, kept.get(f"{suite}/InRelease"),
            kept.get(f"{suite}/Release.gpg"), policy,
        ):
            report.fail(path, reason)
        report.checks_run.append(f"apt:{suite}")
    for path, data in sorted(kept.items()):
        if path.startswith("dists/") and path.endswith("/Packages"):
            for p, reason in checks.check_packages(index, path, data):
                report.fail(p, reason)
    for path, html in sorted(kept.items()):
        folder = _project_page(path)
        if folder is not None:
            for p, reason in checks.check_simple_project(
                index, folder, html, kept.get(f"{folder}/index.json")
            ):
                report.fail(p, reason)
    if "simple/index.html" in kept:
        for p, reason in checks.check_simple_root(
            kept["simple/index.html"], kept.get("simple/index.json"), _projects(index)
        ):
            report.fail(p, reason)
        report.checks_run.append("simple")
    layout = kept.get("in-toto/root.layout")
    links = [data for p, data in kept.items() if p.startswith("in-toto/") and p.endswith(".link")]
    failures, ran = _intoto_failures(index, layout, links, policy)
    for p, reason in failures:
        report.fail(p, reason)
    if ran:
        report.checks_run.append("in-toto")


# --- a folder: worker processes hash shares of the files and return only what failed ------------
#
# Hashing threads would share the GIL with every line of Python that runs meanwhile (the
# walk, the cross-checks, the small files): a thread that finished hashing a chunk waits for
# the interpreter, so both cores are never busy. Forked workers each take the next task from
# a pipe (a batch of files, or the files of one index together with its cross-check, so that
# no file is read twice and no page is kept in memory longer than its check), and send back
# the failures only; the parent walks the folder for unlisted files meanwhile. The in-toto
# files and check go to a helper forked before index.json was parsed (see _verify). Failures
# are then reported in the order the threaded path (_check_files, _cross_check) reports them.

FORK = hasattr(os, "fork") and sys.platform.startswith("linux")
TASK_BYTES = 4 << 20  # a batch of plain files: about this many bytes...
TASK_FILES = 64  # ...or this many files
MAX_TASKS = 8192  # batches grow on huge trees, so that there are not too many tasks
FILE_COST = 16 << 10  # what opening a file costs, in bytes hashed (to order the tasks)

# a task is a tuple of groups; a group is (kind, key, paths)
_PLAIN, _SUITE, _PACKAGES, _PROJECT, _ROOT, _INTOTO = range(6)
Group = tuple[int, str, tuple[str, ...]]
# what a task returns: files hashed, bytes, file failures, and per checked group its
# (kind, key, failures, ran)
TaskResult = tuple[int, int, list[Failure], list[tuple[int, str, list[Failure], bool]]]


@dataclass
class _Plan:
    root: str  # the folder, ending in "/"
    index: Manifest
    listed: dict[str, tuple[int, str]]
    policy: TrustPolicy
    projects: list[str]
    tasks: list[tuple[Group, ...]]
    intoto: list[str]  # the in-toto files, when a _Helper checks them (not the tasks)


def _make_plan(
    root: str,
    index: Manifest,
    listed: dict[str, tuple[int, str]],
    policy: TrustPolicy,
    *,
    intoto_apart: bool = False,
) -> _Plan:
    suites = {s for s in _suites(index) if checks.is_kept(f"{s}/Release")}
    special: dict[tuple[int, str], list[str]] = {}
    plain: list[str] = []
    for path in sorted(listed):
        group = _group_of(path, suites) if checks.is_kept(path) else None
        if group is None:
            plain.append(path)
        else:
            special.setdefault(group, []).append(path)
    intoto = special.pop((_INTOTO, ""), []) if intoto_apart else []
    checked = [(kind, key, tuple(paths)) for (kind, key), paths in special.items()]
    # the slow cross-checks first, so that none is left for the end
    checked.sort(key=lambda g: (g[0] == _PROJECT, -g[0], g[1]))
    tasks: list[tuple[Group, ...]] = [(g,) for g in checked if g[0] != _PROJECT]
    projects = [g for g in checked if g[0] == _PROJECT]
    total = sum(listed[p][0] for p in plain)
    files_per = max(TASK_FILES, -(-(len(plain) + len(projects)) // MAX_TASKS))
    bytes_per = max(TASK_BYTES, total // MAX_TASKS)
    batches: list[tuple[int, tuple[Group, ...]]] = []
    # a task's cost, roughly, in bytes hashed: a file costs as much as 16 KB, and a page that
    # is read for links as much as eight times its size
    for i in range(0, len(projects), files_per // 2 or 1):
        chunk = tuple(projects[i:i + (files_per // 2 or 1)])
        paths = [p for g in chunk for p in g[2]]
        cost = sum(listed[p][0] for p in paths) * 8 + len(paths) * FILE_COST
        batches.append((cost, chunk))
    batch: list[str] = []
    size = 0
    for path in plain:
        batch.append(path)
        size += listed[path][0]
        if size >= bytes_per or len(batch) >= files_per:
            batches.append((size + len(batch) * FILE_COST, ((_PLAIN, "", tuple(batch)),)))
            batch, size = [], 0
    if batch:
        batches.append((size + len(batch) * FILE_COST, ((_PLAIN, "", tuple(batch)),)))
    batches.sort(key=lambda b: -b[0])  # the costliest first: the last ones are short
    tasks += [b for _size, b in batches]
    return _Plan(root, index, listed, policy, _projects(index), tasks, intoto)


def _group_of(path: str, suites: set[str]) -> tuple[int, str] | None:
    """Which cross-check needs the bytes of a kept file (None: none does)."""
    if path.startswith("in-toto/"):
        return _INTOTO, ""
    if path.startswith("dists/"):
        folder, name = path.rsplit("/", 1)
        if name == "Packages":
            return _PACKAGES, path
        if folder in suites and name in ("Release", "InRelease", "Release.gpg"):
            return _SUITE, folder
        return None
    if path in ("simple/index.html", "simple/index.json"):
        return _ROOT, ""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "simple" and parts[2] in ("index.html", "index.json"):
        return _PROJECT, f"simple/{parts[1]}"
    return None


def _run_task(plan: _Plan, task: tuple[Group, ...]) -> TaskResult:
    listed, files = plan.listed, plan.index.files
    n = nbytes = 0
    failed: list[Failure] = []
    checked: list[tuple[int, str, list[Failure], bool]] = []
    for kind, key, paths in task:
        keep = kind != _PLAIN
        size, good = _hash_files(
            plan.root, ((p, *listed[p]) for p in paths), files, keep, failed
        )
        n += len(paths)
        nbytes += size
        if keep:
            checked.append(_check_group(plan, kind, key, good))
    return n, nbytes, failed, checked


def _hash_files(
    root: str,
    expected: Iterable[tuple[str, int, str]],
    files: Mapping[str, FileEntry],
    keep: bool,
    failed: list[Failure],
) -> tuple[int, dict[str, bytes]]:
    """Hash each (path, size, SHA-256) below ``root`` and add what is wrong to ``failed``;
    return the number of bytes read and the bytes of the files that matched (when ``keep``)."""
    good: dict[str, bytes] = {}
    nbytes = 0
    for path, size, digest in expected:
        check_rel(path)
        got = hash_file(root + path, keep=keep)
        problem = _file_problem(files, path, size, digest, got)
        if got is not None:
            nbytes += got.size
        if problem:
            failed.append((path, problem))
        elif got is not None and got.data is not None:
            good[path] = got.data
    return nbytes, good


def _check_group(
    plan: _Plan, kind: int, key: str, good: dict[str, bytes]
) -> tuple[int, str, list[Failure], bool]:
    """The cross-check of one group, on the bytes of its files that matched index.json."""
    index = plan.index
    if kind == _SUITE:
        release = good.get(f"{key}/Release")
        if release is None:
            return kind, key, [], False
        return kind, key, _suite_failures(
            index, key, release, good.get(f"{key}/InRelease"), good.get(f"{key}/Release.gpg"),
            plan.policy,
        ), True
    if kind == _PACKAGES:
        data = good.get(key)
        if data is None:
            return kind, key, [], False
        return kind, key, checks.check_packages(index, key, data), True
    if kind == _PROJECT:
        html = good.get(f"{key}/index.html")
        if html is None:
            return kind, key, [], False
        return kind, key, checks.check_simple_project(
            index, key, html, good.get(f"{key}/index.json")
        ), True
    if kind == _ROOT:
        html = good.get("simple/index.html")
        if html is None:
            return kind, key, [], False
        return kind, key, checks.check_simple_root(
            html, good.get("simple/index.json"), plan.projects
        ), True
    # _INTOTO
    links = [data for p, data in good.items() if p.endswith(".link")]
    failures, ran = _intoto_failures(
        index, good.get("in-toto/root.layout"), links, plan.policy, plan.listed
    )
    return kind, key, failures, ran


IntotoAnswer = tuple[int, int, list[Failure], dict[str, str] | list[str] | None]


def _intoto_job(
    root: str,
    expected: list[tuple[str, int, str]],
    files: dict[str, FileEntry],
    owners: list[bytes],
) -> IntotoAnswer:
    """Hash the in-toto files and verify the build link: files and bytes hashed, failures,
    and the link's products (or why no link verified; None: no layout to check)."""
    failed: list[Failure] = []
    nbytes, good = _hash_files(root, expected, files, True, failed)
    layout = good.get("in-toto/root.layout")
    products = None
    if layout is not None and owners:
        links = [data for p, data in good.items() if p.endswith(".link")]
        products = _link_products(layout, links, owners)
    return len(expected), nbytes, failed, products


def _load_intoto() -> None:
    """What the in-toto check imports (a third of a second), loaded while index.json is
    being checked."""
    import importlib

    for name in ("repobuild.signing.intoto", "in_toto.models.metadata",
                 "securesystemslib.signer"):
        importlib.import_module(name)


class _Helper:
    """A process forked early (while this one is small) that imports what it will need
    (``prepare``) and then runs the one job it is given, answering its pickled result."""

    def __init__(self, prepare: Callable[[], None]) -> None:
        self.pid = -1
        self.job_w = self.result_r = -1
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no helper: the job is done in this process
            for fd in (job_r, job_w, result_r, result_w):
                os.close(fd)
            return
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.close(job_w)
                os.close(result_r)
                _serve(prepare, job_r, result_w)
                code = 0
            finally:
                os._exit(code)
        os.close(job_r)
        os.close(result_w)
        self.pid, self.job_w, self.result_r = pid, job_w, result_r

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.job_w < 0:
            return
        try:
            write_all(self.job_w, pickle.dumps((fn, args), -1))
        except BrokenPipeError:
            pass
        finally:
            os.close(self.job_w)
            self.job_w = -1

    def result(self) -> Any:
        """The job's result (its exception is raised); None when the helper is gone."""
        if self.result_r < 0:
            return None
        # read into one buffer of the announced size: the answer can hold 100,000 products
        size = int.from_bytes(_read_exactly(self.result_r, bytearray(8)), "little")
        payload = _read_exactly(self.result_r, bytearray(size))
        self.close()
        if not payload:
            return None
        ok, value = pickle.loads(payload)
        del payload
        if not ok:
            raise value
        return value

    def close(self) -> None:
        for fd in (self.job_w, self.result_r):
            if fd >= 0:
                os.close(fd)
        self.job_w = self.result_r = -1
        if self.pid > 0:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = -1


def _serve(prepare: Callable[[], None], job_r: int, result_w: int) -> None:
    with contextlib.suppress(Exception):
        prepare()  # a failing import fails again, and is reported, in the job
    chunks = []
    while data := os.read(job_r, 1 << 16):
        chunks.append(data)
    if not chunks:
        return  # no job
    fn, args = pickle.loads(b"".join(chunks))
    payload = _pickled_answer(fn, *args)
    write_all(result_w, len(payload).to_bytes(8, "little"))
    write_all(result_w, payload)


def _pickled_answer(fn: Callable[..., Any], *args: Any) -> bytes:
    """(True, result) or (False, the exception), pickled."""
    try:
        return pickle.dumps((True, fn(*args)), -1)
    except BaseException as exc:  # handed to the parent, which raises it
        try:
            return pickle.dumps((False, exc), -1)
        except Exception:
            return pickle.dumps((False, RuntimeError(repr(exc))), -1)


def _read_exactly(fd: int, buf: bytearray) -> bytearray:
    """Fill ``buf`` from ``fd``; empty when the writer went away before it was full."""
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        n = os.readv(fd, [view[done:]])
        if n == 0:
            return bytearray()
        done += n
    return buf


def _verify_folder(
    src: FolderSource,
    index: Manifest,
    policy: TrustPolicy,
    report: Report,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
    helper: _Helper | None = None,
) -> None:
    listed = index.listed()
    index.by_blob  # noqa: B018 - computed once, before the workers fork, and shared by them
    root = os.path.join(str(src.root), "")
    plan = _make_plan(root, index, listed, policy, intoto_apart=helper is not None)
    intoto_job = (
        root,
        [(p, *listed[p]) for p in plan.intoto],
        {p: index.files[p] for p in plan.intoto if p in index.files},
        policy.intoto_owners,
    )
    if helper is not None and plan.intoto:
        helper.submit(_intoto_job, *intoto_job)
    n_workers = workers or min(16, max(2, _cpus()))
    total = len(listed)
    done = 0
    nbytes = 0
    failed: list[Failure] = []
    checked: list[tuple[int, str, list[Failure], bool]] = []

    def collect(result: TaskResult) -> None:
        nonlocal done, nbytes
        files, size, fails, groups = result
        done += files
        nbytes += size
        failed.extend(fails)
        checked.extend(groups)
        if progress:
            progress(done, total)

    from repobuild.mirror.sync import grace_files

    # a mirror keeps files the index stopped listing for a grace period
    grace = grace_files(src.root)
    extra = {"index.json", *SIGNATURE_FILES}
    unlisted: list[str] = []
    in_grace: list[str] = []

    def visit(path: str) -> None:
        if path in grace:
            in_grace.append(path)
        elif path not in listed and path not in extra:
            unlisted.append(path)

    with _Workers(plan, n_workers, collect) as pool:
        walk_files(str(src.root), visit, pool.tick)
        pool.finish()
    if plan.intoto:
        answer = helper.result() if helper is not None else None
        if answer is None:  # the helper is gone: check here
            answer = _intoto_job(*intoto_job)
        files, size, fails, products = answer
        collect((files, size, fails, []))
        if products is not None:
            checked.append((_INTOTO, "", *_intoto_outcome(index, products, listed)))

    failed.sort(key=_first)
    for path, reason in failed:
        report.fail(path, reason)
    report.files_checked = total
    report.bytes_checked = nbytes
    report.checks_run.append("files")
    report.in_grace = sorted(in_grace)
    report.unlisted = sorted(unlisted)
    for p in report.unlisted:
        report.fail(p, "not listed in index.json")
    report.checks_run.append("unlisted")
    for path, reason in checks.check_by_hash(index):
        report.fail(path, reason)
    checked.sort(key=_report_order)
    for kind, key, failures, ran in checked:
        for p, reason in failures:
            report.fail(p, reason)
        if ran and kind in _CHECK_NAMES:
            report.checks_run.append(_CHECK_NAMES[kind].format(key))


_REPORT_ORDER = {_SUITE: 0, _PACKAGES: 1, _PROJECT: 2, _ROOT: 3, _INTOTO: 4}


def _report_order(checked: tuple[int, str, list[Failure], bool]) -> tuple[int, str]:
    """The order _cross_check reports in: suites by name, Packages by path, project pages by
    the path of their index.html."""
    kind, key = checked[0], checked[1]
    return _REPORT_ORDER[kind], f"{key}/index.html" if kind == _PROJECT else key


_CHECK_NAMES = {_SUITE: "apt:{}", _ROOT: "simple", _INTOTO: "in-toto"}


def _first(failure: Failure) -> str:
    return failure[0]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 2


class _Workers:
    """Forked worker processes that run ``plan.tasks``: each takes the next task number from
    a shared pipe and writes each result, pickled, to its own pipe. ``poll`` (never blocks)
    and ``finish`` feed the task pipe and read the results; tasks a worker took but never
    answered (it died) are run here at the end, so that no file goes unchecked."""

    def __init__(self, plan: _Plan, n: int, collect: Callable[[TaskResult], None]) -> None:
        self.plan = plan
        self.n = n
        self.collect = collect
        self.answered: set[int] = set()
        self.pids: list[int] = []
        self.error: BaseException | None = None
        count = len(plan.tasks)
        self.todo = b"".join(i.to_bytes(4, "little") for i in range(count))
        self.sent = 0
        self.buffers: dict[int, bytearray] = {}
        self.task_w = -1
        self.selector: selectors.BaseSelector | None = None
        self.ticks = 0

    def __enter__(self) -> _Workers:
        try:
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        task_r, self.task_w = os.pipe()
        results: list[tuple[int, int]] = []
        # the workers' garbage collector leaves the parsed index alone: it would touch (and
        # so copy) every page of it in each worker
        gc.freeze()
        try:
            for _ in range(self.n):
                r, w = os.pipe()
                try:
                    pid = os.fork()
                except OSError:  # no more processes: fewer workers (or none: finish() works)
                    os.close(r)
                    os.close(w)
                    break
                if pid == 0:  # the worker
                    code = 1
                    try:
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                        os.close(self.task_w)
                        os.close(r)
                        for r2, _w2 in results:  # the parent's ends of older workers' pipes
                            os.close(r2)
                        _work(self.plan, task_r, w)
                        code = 0
                    finally:
                        os._exit(code)
                self.pids.append(pid)
                os.close(w)
                results.append((r, w))
        finally:
            gc.unfreeze()
            os.close(task_r)
        self.selector = selectors.DefaultSelector()
        for r, _w in results:
            self.buffers[r] = bytearray()
            self.selector.register(r, selectors.EVENT_READ)
        os.set_blocking(self.task_w, False)
        if self.todo and self.pids:
            self.selector.register(self.task_w, selectors.EVENT_WRITE)
        else:
            self._close_tasks()

    def __exit__(self, *exc: object) -> None:
        if self.task_w >= 0:
            self._close_tasks()
        for fd in list(self.buffers):
            self._close_result(fd)
        if self.selector is not None:
            self.selector.close()
        if exc[0] is not None:  # interrupted: the workers' results are not wanted
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids = []

    def _close_tasks(self) -> None:
        if self.selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.task_w)
        os.close(self.task_w)
        self.task_w = -1

    def _close_result(self, fd: int) -> None:
        if self.selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        os.close(fd)
        del self.buffers[fd]

    def tick(self) -> None:
        """``poll`` now and then (a walk calls this for each folder)."""
        self.ticks += 1
        if self.ticks % 32 == 0:
            self.poll()

    def poll(self, timeout: float | None = 0) -> None:
        """Feed tasks and take results as far as that can be done now (``timeout`` 0)."""
        if self.selector is None or not (self.buffers or self.task_w >= 0):
            return
        for key, _events in self.selector.select(timeout):
            fd = key.fd
            if fd == self.task_w:
                self._feed()
            else:
                self._read(fd)

    def _feed(self) -> None:
        # writes of at most PIPE_BUF bytes are atomic: readers always see whole numbers
        try:
            while self.sent < len(self.todo):
                chunk = self.todo[self.sent:self.sent + 4096]
                self.sent += os.write(self.task_w, chunk)
        except BlockingIOError:
            return
        except BrokenPipeError:  # no worker left: what is not done is done in finish()
            pass
        self._close_tasks()

    def _read(self, fd: int) -> None:
        data = os.read(fd, 1 << 16)
        if not data:
            self._close_result(fd)
            return
        buf = self.buffers[fd]
        buf += data
        while len(buf) >= 8:
            n = int.from_bytes(buf[:8], "little")
            if len(buf) < 8 + n:
                break
            i = int.from_bytes(buf[8:12], "little")
            ok, value = pickle.loads(buf[12:8 + n])
            del buf[:8 + n]
            self.answered.add(i)
            if ok:
                self.collect(value)
            elif self.error is None:
                self.error = value

    def finish(self) -> None:
        """Wait for every task; run here any a worker could not answer."""
        while self.buffers or self.task_w >= 0:
            self.poll(None)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids = []
        if self.error is not None:
            raise self.error
        for i, task in enumerate(self.plan.tasks):
            if i not in self.answered:
                self.collect(_run_task(self.plan, task))


def _work(plan: _Plan, task_r: int, result_w: int) -> None:
    """A worker's loop: task numbers in, pickled results out, until the pipe is empty."""
    while True:
        rec = os.read(task_r, 4)
        while rec and len(rec) < 4:
            more = os.read(task_r, 4 - len(rec))
            if not more:
                break
            rec += more
        if len(rec) < 4:
            return
        i = int.from_bytes(rec, "little")
        payload = i.to_bytes(4, "little") + _pickled_answer(_run_task, plan, plan.tasks[i])
        write_all(result_w, len(payload).to_bytes(8, "little") + payload)


def open_target(target: str) -> Source:
    if target.startswith(("http://", "https://")):
        return HttpSource(target)
    path = Path(target)
    if not path.is_dir():
        raise UsageError("TARGET is neither a folder nor an http(s) URL", target)
    return FolderSource(path)
