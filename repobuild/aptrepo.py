"""Assemble ``dists/<suite>/``: Packages (+ .gz, .xz) per component and architecture, by-hash
copies, and Release signed as InRelease and Release.gpg."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from repobuild.config import Config
from repobuild.formats.apt import (
    IndexFile,
    ReleaseInfo,
    gzip_bytes,
    render_packages,
    render_release,
    xz_bytes,
)
from repobuild.model import Artifact
from repobuild.signing.gpg import GpgSigner

DEFAULT_ARCH = "amd64"


@dataclass
class AptOutput:
    #: by-hash copies: immutable, written first
    by_hash: dict[str, bytes] = field(default_factory=dict)
    #: Packages files, then Release, InRelease and Release.gpg, in that order
    mutable: dict[str, bytes] = field(default_factory=dict)
    architectures: tuple[str, ...] = ()
    components: tuple[str, ...] = ()


def architectures(debs: list[Artifact], config: Config) -> tuple[str, ...]:
    arches = {a.deb.architecture for a in debs if a.deb and a.deb.architecture != "all"}
    arches.update(config.architectures)
    return tuple(sorted(arches or {DEFAULT_ARCH}))


class AptJob:
    """Packages rendered and their compression under way (gzip and xz release the GIL): the
    build does other work meanwhile, then :meth:`finish` collects them and signs Release."""

    def __init__(self, debs: list[Artifact], config: Config) -> None:
        self.config = config
        self.arches = architectures(debs, config)
        self.components = sorted({a.component for a in debs} | {config.default_component})
        grouped: dict[tuple[str, str], list[Artifact]] = defaultdict(list)
        for art in debs:
            assert art.deb is not None
            targets = self.arches if art.deb.architecture == "all" else (art.deb.architecture,)
            for arch in targets:
                grouped[(art.component, arch)].append(art)
        self._pool = ThreadPoolExecutor(max_workers=2)  # ~25 MB per xz compressor
        self._jobs: list[tuple[str, str, Future[bytes]]] = []
        try:
            for component in self.components:
                for arch in self.arches:
                    plain = render_packages(grouped.get((component, arch), []))
                    folder = f"{component}/binary-{arch}"
                    done: Future[bytes] = Future()
                    done.set_result(plain)
                    self._jobs.append((folder, "Packages", done))
                    self._jobs.append((folder, "Packages.gz",
                                       self._pool.submit(gzip_bytes, plain)))
                    self._jobs.append((folder, "Packages.xz", self._pool.submit(xz_bytes, plain)))
        finally:
            self._pool.shutdown(wait=False)

    def finish(self, signer: GpgSigner, now: datetime) -> AptOutput:
        config = self.config
        out = AptOutput(architectures=self.arches, components=tuple(self.components))
        base = f"dists/{config.suite}"
        listed: list[IndexFile] = []
        for folder, name, job in self._jobs:
            data = job.result()
            entry = IndexFile.of(f"{folder}/{name}", data)
            listed.append(entry)
            out.by_hash[f"{base}/{folder}/by-hash/SHA256/{entry.sha256}"] = data
            out.mutable[f"{base}/{folder}/{name}"] = data
        self._jobs = []
        info = ReleaseInfo(
            origin=config.origin,
            label=config.label,
            suite=config.suite,
            codename=config.codename,
            description=config.description,
            date=now,
            valid_until=now + timedelta(days=config.validity_days),
            architectures=self.arches,
            components=tuple(self.components),
        )
        release = render_release(info, listed)
        out.mutable[f"{base}/Release"] = release
        out.mutable[f"{base}/InRelease"] = signer.clearsign(release)
        out.mutable[f"{base}/Release.gpg"] = signer.sign(release)
        return out

