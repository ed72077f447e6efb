"""`repobuild probe`: health and freshness of several mirrors of one repository.

Per mirror: reachable, latency, index.json's version and generation time, signatures under the
trust root, expiry, lag behind the newest version any mirror serves, and a few blobs fetched
and hash-checked. A mirror is healthy when all of these hold and it has no lag.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from repobuild.formats.manifest import rfc3339
from repobuild.sources import FetchError, HttpSource
from repobuild.trust import SIGNATURE_FILES, TrustPolicy
from repobuild.verify import Report, check_index


@dataclass
class MirrorHealth:
    url: str
    reachable: bool = False
    latency_ms: float | None = None
    version: int | None = None
    generated: str | None = None
    expires: str | None = None
    signature_ok: bool = False
    expired: bool | None = None
    lag: int | None = None
    sampled: int = 0
    sample_ok: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return (self.reachable and self.signature_ok and self.expired is False
                and self.lag == 0 and self.sample_ok and not self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url, "healthy": self.healthy, "reachable": self.reachable,
            "latency_ms": self.latency_ms, "version": self.version,
            "generated": self.generated, "expires": self.expires,
            "signature_ok": self.signature_ok, "expired": self.expired, "lag": self.lag,
            "sampled": self.sampled, "sample_ok": self.sample_ok, "problems": self.problems,
        }


def _sample(blobs: list[tuple[str, int, str]], n: int) -> list[tuple[str, int, str]]:
    """N blobs spread evenly over the hash order: the same choice on every mirror."""
    ordered = sorted(blobs, key=lambda b: b[2])
    if n <= 0 or not ordered:
        return []
    if len(ordered) <= n:
        return ordered
    step = len(ordered) / n
    return [ordered[int(i * step)] for i in range(n)]


def probe_one(url: str, policy: TrustPolicy, *, sample: int, timeout: float,
              now: datetime) -> MirrorHealth:
    health = MirrorHealth(url)  # named as the user wrote it
    src = HttpSource(url, timeout=timeout, retries=0)
    try:
        t0 = time.monotonic()
        data = src.read("index.json")
        health.latency_ms = round((time.monotonic() - t0) * 1000, 1)
        health.reachable = True
        if data is None:
            health.problems.append("index.json: missing")
            return health
        sigs = {name: src.read(name) for name in SIGNATURE_FILES}
    except FetchError as exc:
        health.problems.append(str(exc))
        return health
    report = Report(target=url)
    index = check_index(policy, data, sigs, now=now, report=report)
    # enough trusted keys agree, and no signature file that is there fails to verify
    health.signature_ok = index is not None and all(
        s.ok or s.reason.endswith("missing") for s in report.signatures)
    health.problems += [f"{p}: {r}" for p, r in report.failures]  # expired, bad signature…
    if index is None:
        return health
    health.version = index.version
    health.generated = rfc3339(index.generated)
    health.expires = rfc3339(index.expires)
    health.expired = index.expires < now
    blobs = [(a["blob"], int(a["size"]), str(a["sha256"])) for a in index.artifacts]
    picked = _sample(blobs, sample)
    bad = []
    for path, size, digest in picked:
        try:
            got = src.hash(path)
        except FetchError as exc:
            bad.append(f"{path}: {exc}")
            continue
        if got is None:
            bad.append(f"{path}: missing")
        elif (got.size, got.sha256) != (size, digest):
            bad.append(f"{path}: content does not match the signed index")
    health.sampled = len(picked)
    health.sample_ok = not bad
    health.problems += bad
    return health


def probe(urls: list[str], policy: TrustPolicy, *, sample: int = 3, timeout: float = 10.0,
          now: datetime | None = None) -> list[MirrorHealth]:
    now = now or datetime.now(UTC)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(urls)))) as pool:
        results = list(pool.map(
            lambda u: probe_one(u, policy, sample=sample, timeout=timeout, now=now), urls))
    newest = max((r.version for r in results if r.version is not None and r.signature_ok),
                 default=None)
    for r in results:
        if r.version is not None and newest is not None:
            r.lag = newest - r.version
            if r.lag > 0:
                r.problems.append(f"{r.lag} version(s) behind the newest mirror ({newest})")
    return results
