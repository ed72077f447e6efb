"""Assemble ``dists/<suite>/``: Packages (+ .gz, .xz) per component and architecture, by-hash
copies, and Release signed as InRelease and Release.gpg."""

from __future__ import annotations

import zlib
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from repobuild import blockcache
from repobuild.blockcache import BlockCache
from repobuild.config import Config
from repobuild.formats import gz, xz
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
#: Packages files from this size on are xz-compressed in blocks cut by their content, two at
#: once, and the blocks of the last build are used again (repobuild.blockcache)
XZ_SPLIT_BYTES = 1 << 20


T = TypeVar("T")


def _done(value: T) -> Future[T]:
    done: Future[T] = Future()
    done.set_result(value)
    return done


class _Joined:
    """The blocks' xz stream, once they are all compressed (a Future's ``result``)."""

    def __init__(self, blocks: list[Future[xz.Block]]) -> None:
        self._blocks = blocks

    def result(self) -> bytes:
        return xz.join([job.result() for job in self._blocks])


class _JoinedGz:
    """The segments' gzip member, once they are all compressed (a Future's ``result``)."""

    def __init__(self, segments: list[Future[bytes]], crc: int, size: int) -> None:
        self._segments, self._crc, self._size = segments, crc, size

    def result(self) -> bytes:
        return gz.join([job.result() for job in self._segments], self._crc, self._size)


@dataclass
class AptOutput:
    #: by-hash copies: immutable, written first
    by_hash: dict[str, bytes] = field(default_factory=dict)
    #: Packages files, then Release, InRelease and Release.gpg, in that order
    mutable: dict[str, bytes] = field(default_factory=dict)
    #: the SHA-256 (hex) of the Packages files and their by-hash copies, taken for Release:
    #: the build need not hash them again (~3 MB, twice, at 10,000 artifacts)
    digests: dict[str, str] = field(default_factory=dict)
    architectures: tuple[str, ...] = ()
    components: tuple[str, ...] = ()


def architectures(debs: list[Artifact], config: Config) -> tuple[str, ...]:
    arches = {a.deb.architecture for a in debs if a.deb and a.deb.architecture != "all"}
    arches.update(config.architectures)
    return tuple(sorted(arches or {DEFAULT_ARCH}))


class AptJob:
    """Packages rendered and their compression under way (gzip and xz release the GIL): the
    build does other work meanwhile, then :meth:`finish` collects them and signs Release."""

    def __init__(self, debs: list[Artifact], config: Config,
                 blocks: BlockCache | None = None) -> None:
        self.config = config
        self._blocks = blocks
        self.arches = architectures(debs, config)
        self.components = sorted({a.component for a in debs} | {config.default_component})
        grouped: dict[tuple[str, str], list[Artifact]] = defaultdict(list)
        for art in debs:
            assert art.deb is not None
            targets = self.arches if art.deb.architecture == "all" else (art.deb.architecture,)
            for arch in targets:
                grouped[(art.component, arch)].append(art)
        # two compressors at once (~12 MB for an xz block, ~25 MB for a whole file): a third
        # thread added ~10 MB to a rebuild's peak at 100,000 artifacts and saved ~nothing, as
        # the gzip ends long before the xz
        self._pool = ThreadPoolExecutor(max_workers=2)
        self._jobs: list[tuple[str, str, Future[bytes] | _Joined | _JoinedGz]] = []
        try:
            for component in self.components:
                for arch in self.arches:
                    plain = render_packages(grouped.get((component, arch), []))
                    folder = f"{component}/binary-{arch}"
                    self._jobs.append((folder, "Packages", _done(plain)))
                    # a large file's parts, cut once for both compressions, and named once
                    parts = xz.cut(plain) if len(plain) >= XZ_SPLIT_BYTES else None
                    names = ([blockcache.digest(part) for part in parts]
                             if parts is not None and self._blocks is not None else None)
                    self._jobs.append((folder, "Packages.gz", self._gz(plain, parts, names)))
                    self._jobs.append((folder, "Packages.xz", self._xz(plain, parts, names)))
        finally:
            self._pool.shutdown(wait=False)

    def _gz(self, plain: bytes, parts: list[bytes] | None,
            names: list[bytes] | None) -> Future[bytes] | _JoinedGz:
        """Packages.gz under way: a large file (``parts``: see xz.cut) as deflate segments of
        the same parts as its xz blocks, each taken from the last build when it holds the same
        packages (looked up here: only new ones go to the threads)."""
        if parts is None:
            return self._pool.submit(gzip_bytes, plain)
        blocks = self._blocks
        if blocks is None or names is None:
            segments = [self._pool.submit(gz.segment, part) for part in parts]
        else:
            segments = [_done(kept) if (kept := blocks.kept_segment(part, name)) is not None
                        else self._pool.submit(blocks.make_segment, part, name)
                        for part, name in zip(parts, names, strict=True)]
        return _JoinedGz(segments, zlib.crc32(plain), len(plain))

    def _xz(self, plain: bytes, parts: list[bytes] | None,
            names: list[bytes] | None) -> Future[bytes] | _Joined:
        """Packages.xz under way: a large file (``parts``) in blocks, two compressed at once
        (its xz was the longest step of the apt indices, and the last to end), each taken from
        the last build when it holds the same packages, for ~2 % more bytes."""
        if parts is None:
            return self._pool.submit(xz_bytes, plain)
        blocks = self._blocks
        if blocks is None or names is None:
            return _Joined([self._pool.submit(xz.block, part) for part in parts])
        return _Joined([_done(kept) if (kept := blocks.kept_block(part, name)) is not None
                        else self._pool.submit(blocks.make_block, part, name)
                        for part, name in zip(parts, names, strict=True)])

    def finish(self, signer: GpgSigner, now: datetime) -> AptOutput:
        config = self.config
        out = AptOutput(architectures=self.arches, components=tuple(self.components))
        base = f"dists/{config.suite}"
        listed: list[IndexFile] = []
        for folder, name, job in self._jobs:
            data = job.result()
            entry = IndexFile.of(f"{folder}/{name}", data)
            listed.append(entry)
            for path, group in ((f"{base}/{folder}/by-hash/SHA256/{entry.sha256}", out.by_hash),
                                (f"{base}/{folder}/{name}", out.mutable)):
                group[path] = data
                out.digests[path] = entry.sha256
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

