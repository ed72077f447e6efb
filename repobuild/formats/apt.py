"""apt repository indices: Packages stanzas and Release files, rendered as bytes."""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

from debian.debian_support import Version

from repobuild.formats import xz
from repobuild.model import Artifact

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc2822(when: datetime) -> str:
    """The date form apt expects, independent of the locale."""
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} UTC"
    )


def deb_sort_key(art: Artifact) -> tuple[str, Version, str, str]:
    assert art.deb is not None
    return (art.deb.package, Version(art.deb.version), art.deb.architecture, art.sha256)


def packages_stanza(art: Artifact) -> str:
    """One Packages stanza: the control fields, then Filename, Size and the hashes."""
    assert art.deb is not None
    if art.deb.control and not art.sha512:  # the usual stanza, in one f-string
        return (f"{art.deb.control}\nFilename: {art.blob}\nSize: {art.size}\n"
                f"SHA256: {art.sha256}\n")
    out = [art.deb.control] if art.deb.control else []
    out.append(f"Filename: {art.blob}")
    out.append(f"Size: {art.size}")
    if art.sha512:
        out.append(f"SHA512: {art.sha512}")
    out.append(f"SHA256: {art.sha256}")
    return "\n".join(out) + "\n"


def sorted_debs(arts: Iterable[Artifact]) -> list[Artifact]:
    """``sorted(arts, key=deb_sort_key)``, with the Debian versions parsed only where two
    packages share a name (parsing all of them was most of rendering a Packages file)."""
    out: list[Artifact] = []
    for _name, group in groupby(sorted(arts, key=_package), key=_package):
        same = list(group)
        out.extend(same if len(same) == 1 else sorted(same, key=deb_sort_key))
    return out


def _package(art: Artifact) -> str:
    assert art.deb is not None
    return art.deb.package


def render_packages(arts: Iterable[Artifact]) -> bytes:
    stanzas = [packages_stanza(a) for a in sorted_debs(arts)]
    return "\n".join(stanzas).encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no name and no time stamp: the same input always gives the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def xz_bytes(data: bytes) -> bytes:
    """``data`` xz-compressed (preset 6, a 2 MiB dictionary, CRC64): the same bytes every time.
    For large files, :mod:`repobuild.formats.xz` makes one stream of several blocks instead,
    compressed at once."""
    return xz.compress(data)


@dataclass(frozen=True)
class IndexFile:
    """A file listed in Release: its path below dists/<suite>/ and its bytes' digest."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: str, data: bytes) -> IndexFile:
        return cls(path, len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class ReleaseInfo:
    origin: str
    label: str
    suite: str
    codename: str
    description: str
    date: datetime
    valid_until: datetime
    architectures: tuple[str, ...]
    components: tuple[str, ...]


def render_release(info: ReleaseInfo, index_files: Iterable[IndexFile]) -> bytes:
    files = list(index_files)
    lines = [
        f"Origin: {info.origin}",
        f"Label: {info.label}",
        f"Suite: {info.suite}",
        f"Codename: {info.codename}",
        f"Date: {rfc2822(info.date)}",
        f"Valid-Until: {rfc2822(info.valid_until)}",
        f"Architectures: {' '.join(info.architectures)}",
        f"Components: {' '.join(info.components)}",
        f"Description: {info.description}",
        "Acquire-By-Hash: yes",
        "No-Support-for-Architecture-all: Packages",
        "SHA256:",
    ]
    width = max([len(str(f.size)) for f in files] or [1])
    for f in sorted(files, key=lambda f: f.path):
        lines.append(f" {f.sha256} {f.size:>{width}} {f.path}")
    return ("\n".join(lines) + "\n").encode("utf-8")
