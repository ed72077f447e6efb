"""Read each SOURCE file once: hash it, copy it to a temporary blob and inspect it, in one pass."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from repobuild.cache import Stamp
from repobuild.errors import ValidationError
from repobuild.formats.deb import DebError, DebInspector
from repobuild.formats.pydist import (
    DistError,
    DistInfo,
    NeedsFullFile,
    TailInspector,
    TarGzSdistInspector,
    is_wheel_name,
    wheel_info,
    zip_sdist_info,
)
from repobuild.model import Artifact

CHUNK = 1 << 20


class _Feeder(Protocol):
    def feed(self, chunk: bytes) -> None: ...


@dataclass
class Ingested:
    artifact: Artifact
    temp: str | None  # the copy made while reading, to be renamed into the blob store
    cached: bool = False  # known from the build cache: not read at all
    stamp: Stamp | None = None  # the file's size, mtime, ctime, inode after reading
    src: str | None = None  # the file that was read


def classify(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".deb"):
        return "deb"
    if is_wheel_name(lower):
        return "wheel"
    if lower.endswith(".tar.gz") or lower.endswith(".zip"):
        return "sdist?"
    return "file"


def ingest(src: str | Path, rel: str, temp: Path | None, *, sha512: bool = False) -> Ingested:
    """Read ``src`` once; write the same bytes to ``temp`` when given."""
    filename = rel.rsplit("/", 1)[-1]
    kind = classify(filename)
    inspector: _Feeder | None
    if kind == "deb":
        inspector = DebInspector()
    elif kind == "wheel" or (kind == "sdist?" and filename.lower().endswith(".zip")):
        inspector = TailInspector()
    elif kind == "sdist?":
        inspector = TarGzSdistInspector()
    else:
        inspector = None
    h256 = hashlib.sha256()
    h512 = hashlib.sha512() if sha512 else None
    try:
        before = os.stat(src)
        out = open(temp, "xb") if temp is not None else None
        try:
            with open(src, "rb", buffering=0) as fh:
                # reads sized to the file: a 1 MiB read of a 3 KB file allocates 1 MiB and
                # shrinks it, which fragments the heap at 100,000 files
                pos, hint = 0, before.st_size
                while chunk := fh.read(min(CHUNK, hint - pos) if pos < hint else CHUNK):
                    pos += len(chunk)
                    h256.update(chunk)
                    if h512 is not None:
                        h512.update(chunk)
                    if out is not None:
                        out.write(chunk)
                    if inspector is not None:
                        inspector.feed(chunk)
        finally:
            if out is not None:
                out.close()
        after = os.stat(src)
    except OSError as exc:
        raise ValidationError(f"cannot read: {exc.strerror or exc}", rel) from None
    except (DebError, DistError) as exc:  # an inspector can refuse the first bytes it is fed
        raise ValidationError(str(exc), rel) from None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise ValidationError("the file changed while it was being read", rel)
    art = Artifact(
        path=rel,
        filename=filename,
        kind="file",
        size=after.st_size,
        sha256=h256.hexdigest(),
        sha512=h512.hexdigest() if h512 is not None else None,
    )
    try:
        _inspect(art, kind, inspector, src)
    except (DebError, DistError) as exc:
        raise ValidationError(str(exc), rel) from None
    return Ingested(art, None if temp is None else str(temp), stamp=Stamp.of(after),
                    src=str(src))


def _inspect(art: Artifact, kind: str, inspector: _Feeder | None, src: str | Path) -> None:
    if isinstance(inspector, DebInspector):
        art.kind, art.deb = "deb", inspector.finish()
    elif isinstance(inspector, TailInspector):
        if kind == "wheel":
            art.kind, art.dist = "wheel", _with_fallback(inspector, src, art.filename, wheel=True)
        else:
            dist = _with_fallback(inspector, src, art.filename, wheel=False)
            if dist is not None:
                art.kind, art.dist = "sdist", dist
    elif isinstance(inspector, TarGzSdistInspector):
        dist = inspector.finish()
        if dist is not None:
            art.kind, art.dist = "sdist", dist


def _with_fallback(
    inspector: TailInspector, src: str | Path, name: str, *, wheel: bool
) -> DistInfo | None:
    try:
        return wheel_info(name, inspector.tail_file()) if wheel else zip_sdist_info(
            inspector.tail_file()
        )
    except NeedsFullFile:
        # METADATA far from the end of a large zip: read the archive itself once more.
        with open(src, "rb") as fh:
            return wheel_info(name, fh) if wheel else zip_sdist_info(fh)
