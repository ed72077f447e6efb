"""The records that flow through a build: one per SOURCE file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing the parsers costs ~75 ms at start-up
    from repobuild.formats.deb import DebInfo
    from repobuild.formats.pydist import DistInfo

KINDS = ("deb", "wheel", "sdist", "file")


@dataclass(slots=True)
class Artifact:
    path: str  # relative to SOURCE, with '/' separators
    filename: str
    kind: str
    size: int
    sha256: str
    sha512: str | None = None
    deb: DebInfo | None = None
    dist: DistInfo | None = None
    component: str = "main"
    uploaded: str = ""  # RFC 3339, when this content first entered the repository
    yanked: str | None = None
    metadata_sha256: str | None = None  # the PEP 658 .metadata file beside a wheel
    # the blob path, made once: a build asks for it ~9 times per artifact
    _blob: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._blob = blob_path(self.sha256, self.filename)

    @property
    def blob(self) -> str:
        return self._blob

    @property
    def name(self) -> str | None:
        if self.deb:
            return self.deb.package
        if self.dist:
            return self.dist.name
        return None

    @property
    def version(self) -> str | None:
        if self.deb:
            return self.deb.version
        if self.dist:
            return self.dist.version
        return None

    @property
    def architecture(self) -> str | None:
        return self.deb.architecture if self.deb else None


def blob_path(sha256: str, filename: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}/{filename}"


@dataclass(slots=True)
class FileEntry:
    size: int
    sha256: str
    retired: str | None = None  # when a kept older file stopped being current
