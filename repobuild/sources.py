"""Where a tree is read from: a folder or an http(s) URL, behind one small interface."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from repobuild.errors import UsageError

CHUNK = 1 << 20


class FetchError(Exception):
    """A transport failure (refused, timed out, server error): not evidence of tampering."""


@dataclass
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


def _check_rel(rel: str) -> None:
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


class FolderSource:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise UsageError("not a folder", root)
        self.root = root
        self.label = str(root)

    def _path(self, rel: str) -> Path:
        _check_rel(rel)
        return self.root / rel

    def read(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def hash(self, rel: str, *, keep: bool = False) -> Hashed | None:
        try:
            with open(self._path(rel), "rb", buffering=0) as fh:
                return _digest(fh, keep)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list_files(self) -> list[str] | None:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d != ".repobuild"]
            for name in filenames:
                out.append((here / name).relative_to(self.root).as_posix())
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
        _check_rel(rel)
        return self.base + urllib.parse.quote(rel)

    def _open(self, rel: str) -> object | None:
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
