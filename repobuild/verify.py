"""`repobuild verify`: a tree, from a folder or a URL, checked end to end against a trust root.

index.json's signatures under the policy, its expiry and version (against --state), every
listed file's size and SHA-256 (each byte read once), unlisted files, and the agreement of every
index with index.json: Release, InRelease, Release.gpg, Packages, by-hash, the simple pages and
their PEP 691 twins, and the in-toto layout and build link.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from repobuild import checks
from repobuild.errors import UsageError, VerificationError
from repobuild.formats import manifest
from repobuild.formats.manifest import Manifest, ManifestError, rfc3339
from repobuild.sources import FetchError, FolderSource, HttpSource, Source
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
    """Signatures, syntax, expiry and version of index.json; None when it cannot be trusted."""
    ok, report.signatures = check_signatures(policy, data, signatures)
    bad = [s for s in report.signatures if not s.ok and signatures_present(s, signatures)]
    if not ok:
        reasons = "; ".join(f"{s.kind}: {s.reason}" for s in report.signatures if not s.ok)
        report.fail("index.json", f"not signed by enough trusted keys ({reasons or 'none'})")
        return None
    for s in bad:
        report.fail("index.json", f"{s.kind} signature does not verify: {s.reason}")
    try:
        index = manifest.parse(data)
    except ManifestError as exc:
        report.fail("index.json", f"malformed: {exc}")
        return None
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
    data = src.read("index.json")
    if data is None:
        report.fail("index.json", "missing")
        return
    index = check_index(
        policy, data, fetch_signatures(src), now=now, min_version=read_state(state), report=report
    )
    if index is None:
        return
    report.checks_run.append("signatures")
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


def _check_files(
    src: Source,
    index: Manifest,
    report: Report,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, bytes]:
    listed = sorted(index.listed().items())
    kept: dict[str, bytes] = {}
    n_workers = workers or (8 if isinstance(src, HttpSource) else max(2, os.cpu_count() or 2))

    def one(item: tuple[str, tuple[int, str]]) -> tuple[str, str | None, int, bytes | None]:
        path, (size, digest) = item
        got = src.hash(path, keep=checks.is_kept(path))
        if got is None:
            entry = index.files.get(path)
            if entry is not None and entry.retired:
                return path, None, 0, None  # retired files may be collected (repobuild gc)
            return path, "missing", 0, None
        if got.size != size:
            return path, f"size {got.size}, index.json says {size}", got.size, None
        if got.sha256 != digest:
            return path, "SHA-256 does not match index.json (content changed)", got.size, None
        return path, None, got.size, got.data

    done = 0
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for path, problem, size, data in pool.map(one, listed):
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


def _cross_check(
    index: Manifest, kept: dict[str, bytes], policy: TrustPolicy, report: Report
) -> None:
    for path, reason in checks.check_by_hash(index):
        report.fail(path, reason)
    suites = sorted({p.rsplit("/", 1)[0] for p in index.files if p.endswith("/Release")})
    for suite in suites:
        release = kept.get(f"{suite}/Release")
        if release is None:
            continue
        for path, reason in checks.check_release(index, suite, release):
            report.fail(path, reason)
        _check_apt_signatures(suite, release, kept, policy, report)
        report.checks_run.append(f"apt:{suite}")
    for path, data in sorted(kept.items()):
        if path.startswith("dists/") and path.endswith("/Packages"):
            for p, reason in checks.check_packages(index, path, data):
                report.fail(p, reason)
    # the project list comes from index.json, so that one changed project page is blamed
    # alone, not the root pages that (rightly) still list it
    projects = sorted(
        parts[1] for parts in (p.split("/") for p in index.files)
        if len(parts) == 3 and parts[0] == "simple" and parts[2] == "index.html"
    )
    for path, html in sorted(kept.items()):
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "simple" and parts[2] == "index.html":
            folder = f"simple/{parts[1]}"
            for p, reason in checks.check_simple_project(
                index, folder, html, kept.get(f"{folder}/index.json")
            ):
                report.fail(p, reason)
    if "simple/index.html" in kept:
        for p, reason in checks.check_simple_root(
            kept["simple/index.html"], kept.get("simple/index.json"), projects
        ):
            report.fail(p, reason)
        report.checks_run.append("simple")
    _check_intoto(index, kept, policy, report)


def _check_apt_signatures(
    suite: str, release: bytes, kept: dict[str, bytes], policy: TrustPolicy, report: Report
) -> None:
    if not policy.gpg_public:
        return
    inrelease = kept.get(f"{suite}/InRelease")
    if inrelease is not None:
        ok, _fpr, reason = gpgv_verify(policy.keyring(), inrelease, None)
        if not ok:
            report.fail(f"{suite}/InRelease", reason)
        else:
            try:
                if gpg_clearsigned_text(inrelease) != release:
                    report.fail(f"{suite}/InRelease", "signed text differs from Release")
            except VerificationError as exc:
                report.fail(f"{suite}/InRelease", str(exc))
    detached = kept.get(f"{suite}/Release.gpg")
    if detached is not None:
        ok, _fpr, reason = gpgv_verify(policy.keyring(), detached, release)
        if not ok:
            report.fail(f"{suite}/Release.gpg", reason)


def _check_intoto(
    index: Manifest, kept: dict[str, bytes], policy: TrustPolicy, report: Report
) -> None:
    layout = kept.get("in-toto/root.layout")
    links = [p for p in kept if p.startswith("in-toto/") and p.endswith(".link")]
    if layout is None or not policy.intoto_owners:
        return
    from repobuild.signing.intoto import verify_link_products

    errors = []
    for owner in policy.intoto_owners:
        for link in links:
            try:
                products = verify_link_products(layout, kept[link], owner, now=datetime.now(UTC))
            except VerificationError as exc:
                errors.append(str(exc))
                continue
            for p, reason in checks.check_products(index, products, RESERVED):
                report.fail(p, reason)
            report.checks_run.append("in-toto")
            return
    report.fail("in-toto/root.layout", "; ".join(errors) or "no build link found")


def open_target(target: str) -> Source:
    if target.startswith(("http://", "https://")):
        return HttpSource(target)
    path = Path(target)
    if not path.is_dir():
        raise UsageError("TARGET is neither a folder nor an http(s) URL", target)
    return FolderSource(path)
