"""Where a tree is read from: a folder or an http(s) URL, behind one small interface."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from repobuild.errors import UsageError
from repobuild.store import iter_tree

CHUNK = 1 << 20
BUFFER = 1 << 18  # the read buffer of hash_file: fits the L2 cache, reused for every file


class FetchError(Exception):
    """A transport failure (refused, timed out, server error): not evidence of tampering."""


@dataclass(slots=True)
class Hashed:
    size: int
    sha256: str
    data: bytes | None  # kept when asked for


class Source(Protocol):
    label: str

    def read(self, rel: str) -> bytes | None:
        """The whole file, or None when it is not there."""
        ...

    def hash(self, rel: str, *, keep: bool = False) -> Hashed | None:
        """Size and SHA-256 in one streaming pass (and the bytes when ``keep``)."""
        ...

    def list_files(self) -> list[str] | None:
        """Every file (folders only; None for URLs, which cannot be listed)."""
        ...


def check_rel(rel: str) -> None:
    """Refuse a path that could leave the tree (absolute, ``..``, empty parts, backslashes)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise FetchError(f"unsafe path {rel!r}")


def _digest(stream: object, keep: bool) -> Hashed:
    h = hashlib.sha256()
    size = 0
    kept = bytearray() if keep else None
    read = stream.read  # type: ignore[attr-defined]
    while chunk := read(CHUNK):
        h.update(chunk)
        size += len(chunk)
        if kept is not None:
            kept += chunk
    return Hashed(size, h.hexdigest(), bytes(kept) if kept is not None else None)


_local = threading.local()


def hash_file(path: str, *, keep: bool = False) -> Hashed | None:
    """Size and SHA-256 of a local file in one pass (and its bytes when ``keep``); None when
    it is not there. The read buffer is reused (one per thread), so that hashing many small
    files allocates nothing per file; hashlib releases the GIL while it hashes."""
    try:
        if keep:
            with open(path, "rb", buffering=0) as fh:
                data = fh.readall()
            return Hashed(len(data), hashlib.sha256(data).hexdigest(), data)
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        raw = getattr(_local, "buf", None)
        if raw is None:
            raw = _local.buf = bytearray(BUFFER)
        view = memoryview(raw)
        h = hashlib.sha256()
        size = 0
        while n := os.readv(fd, [raw]):
            h.update(view[:n])
            size += n
    except IsADirectoryError:  # os.open opens a folder; reading it fails
        return None
    finally:
        os.close(fd)
    return Hashed(size, h.hexdigest(), None)


def walk_files(
    root: str, visit: Callable[[str], object], tick: Callable[[], object] | None = None
) -> None:
    """Call ``visit`` with the relative POSIX path of every file below ``root`` (what
    ``os.walk`` lists: symbolic links to folders are not followed, unreadable folders are
    skipped), leaving out the top-level ``.repobuild`` folder; ``tick`` after each folder."""
    for _folder, files, folders in iter_tree(root):
        if folders is None:
            continue  # as os.walk: a folder that cannot be read is left out, with its files
        for path in files:
            visit(path)
        if tick is not None:
            tick()


class FolderSource:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise UsageError("not a folder", root)
        self.root = root
        self.label = str(root)

    def _path(self, rel: str) -> Path:
        check_rel(rel)
        return self.root / rel

    def read(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def hash(self, rel: str, *, keep: bool = False) -> Hashed | None:
        return hash_file(str(self._path(rel)), keep=keep)

    def list_files(self) -> list[str] | None:
        out: list[str] = []
        walk_files(str(self.root), out.append)
        return sorted(out)


class HttpSource:
    def __init__(self, url: str, *, timeout: float = 20.0, retries: int = 2) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"not an http(s) URL: {url}")
        self.base = url if url.endswith("/") else url + "/"
        self.label = self.base
        self.timeout = timeout
        self.retries = retries

    def url(self, rel: str) -> str:
        check_rel(rel)
        return self.base + urllib.parse.quote(rel)

    def _open(self, rel: str) -> object | None:
        import urllib.error
        import urllib.request

        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url(rel), headers={"User-Agent": "repobuild"})
                return urllib.request.urlopen(req, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code in (404, 410):
                    return None
                last = exc
                if exc.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = exc
            if attempt < self.retries:
                time.sleep(0.2 * 2**attempt)
        reason = getattr(last, "reason", None) or last
        raise FetchError(f"{self.url(rel)}: {reason}")

    def read(self, rel: str) -> bytes | None:
        resp = self._open(rel)
        if resp is None:
            return None
        with resp:  # type: ignore[attr-defined]
            return resp.read()  # type: ignore[attr-defined, no-any-return]

    def hash(self, rel: str, *, keep: bool = False) -> Hashed | None:
        resp = self._open(rel)
        if resp is None:
            return None
        try:
            with resp:  # type: ignore[attr-defined]
                return _digest(resp, keep)
        except (OSError, TimeoutError) as exc:
            raise FetchError(f"{self.url(rel)}: {exc}") from None

    def list_files(self) -> list[str] | None:
        return None


def open_source(target: str, **kwargs: float) -> FolderSource | HttpSource:
    if target.startswith(("http://", "https://")):
        return HttpSource(target, **kwargs)  # type: ignore[arg-type]
    return FolderSource(Path(target))
