"""Read each SOURCE file once: hash it, copy it (unless hard-linked) and inspect it, in one pass;
then put the blob (and a wheel's PEP 658 metadata) in place under its SHA-256.

Placing a new blob early is safe: no index names it until the build's index.json lands, a blob
path never holds anything but those bytes (renamed from a complete copy, or a hard link), and a
build that fails before landing removes the blobs it created (``undo``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from repobuild.cache import Stamp
from repobuild.errors import RepobuildError, ValidationError
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
from repobuild.store import temp_name, write_all

CHUNK = 1 << 20


class _Feeder(Protocol):
    def feed(self, chunk: bytes) -> None: ...


@dataclass(slots=True)
class Ingested:
    artifact: Artifact
    cached: bool = False  # known from the build cache: not read at all
    stamp: Stamp | None = None  # the file's size, mtime, ctime, inode after reading
    src: str | None = None  # the file that was read
    placed: bool | None = None  # its blob: created by this build (True), already there (False)
    meta_size: int | None = None  # a wheel's .metadata file beside the blob
    meta_created: bool = False


def classify(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".deb"):
        return "deb"
    if is_wheel_name(lower):
        return "wheel"
    if lower.endswith(".tar.gz") or lower.endswith(".zip"):
        return "sdist?"
    return "file"


def ingest(src: str | Path, rel: str, sink: int | None, *, sha512: bool = False) -> Ingested:
    """Read ``src`` once; write the same bytes to the file descriptor ``sink`` when given."""
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
        with open(src, "rb", buffering=0) as fh:
            # reads sized to the file: a 1 MiB read of a 3 KB file allocates 1 MiB and
            # shrinks it, which fragments the heap at 100,000 files
            pos, hint = 0, before.st_size
            while chunk := fh.read(min(CHUNK, hint - pos) if pos < hint else CHUNK):
                pos += len(chunk)
                h256.update(chunk)
                if h512 is not None:
                    h512.update(chunk)
                if sink is not None:
                    _copy_out(sink, chunk)
                if inspector is not None:
                    inspector.feed(chunk)
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
    return Ingested(art, stamp=Stamp.of(after), src=str(src))


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


# -- into the blob store ---------------------------------------------------------------------
Job = tuple[str, str]  # (the file to read, its SOURCE-relative name)


def ingest_into(root: str, job: Job, *, link: bool, sha512: bool) -> Ingested:
    """Read one file (:func:`ingest`), then place its blob and a wheel's .metadata in OUT."""
    src, rel = job
    if link:
        item = ingest(src, rel, None, sha512=sha512)
    else:
        sink = _Sink(root)  # the copy, written while the file is read
        try:
            item = ingest(src, rel, sink.fd, sha512=sha512)
        except BaseException:
            sink.discard()
            raise
    art = item.artifact
    dest = f"{root}/{art.blob}"
    try:
        item.placed = _link(src, dest, root) if link else sink.place(dest)
        if art.kind == "wheel" and art.dist is not None:
            meta = art.dist.metadata
            art.metadata_sha256 = hashlib.sha256(meta).hexdigest()
            item.meta_size = len(meta)
            item.meta_created = _write_once(dest + ".metadata", meta, root)
            art.dist = replace(art.dist, metadata=b"")  # on disk now; not carried further
    except OSError as exc:
        raise RepobuildError(f"cannot write to OUT: {exc.strerror or exc}", dest) from None
    if link:
        # hard-linking changed the file's ctime: take the stamp again for the build cache, if
        # size and mtime still match what was read
        try:
            st = os.stat(src)
        except OSError:
            return item
        if item.stamp is not None and (st.st_size, st.st_mtime_ns) == (
            item.stamp.size, item.stamp.mtime_ns
        ):
            item.stamp = Stamp.of(st)
    return item


def ingest_batch(
    root: str, jobs: list[Job], link: bool, sha512: bool
) -> tuple[list[Ingested], BaseException | None]:
    """:func:`ingest_into` for several files (in a worker process). Stops at the first failure
    and returns it with what was done before it, so that the build can undo that."""
    done: list[Ingested] = []
    for job in jobs:
        try:
            done.append(ingest_into(root, job, link=link, sha512=sha512))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent process
            return done, exc
    return done, None


def _makedirs(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)


class _Sink:
    """Where a blob's copy is written while its source is read: an unnamed file (``O_TMPFILE``)
    in OUT's filesystem, given its name only once complete, so a killed build leaves nothing
    half written anywhere; or, where that is not offered, a named file in OUT/.repobuild/tmp."""

    def __init__(self, root: str) -> None:
        self.name: str | None = None
        self.fd = -1
        if _TMPFILE:
            try:
                self.fd = os.open(f"{root}/.repobuild/tmp", os.O_TMPFILE | os.O_WRONLY, 0o644)
            except OSError:
                self.fd = -1
        if self.fd < 0:
            self.name = temp_name(root)
            self.fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def place(self, dest: str) -> bool:
        """Give the copy its blob name; False (and the copy dropped) if the blob exists."""
        try:
            os.fchmod(self.fd, 0o644)
            if self.name is not None:
                os.close(self.fd)
                self.fd = -1
                return _rename(self.name, dest)
            try:
                _link_fd(self.fd, dest)
            except FileNotFoundError:
                _makedirs(dest)
                _link_fd(self.fd, dest)
            except FileExistsError:  # the same bytes under the same name: never rewritten
                return False
            return True
        finally:
            self.discard()

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.name is not None and os.path.exists(self.name):
            os.unlink(self.name)


_ROOT_FD: list[int] = []


def _link_fd(fd: int, dest: str) -> None:
    """linkat(/proc/self/fd/FD, dest, AT_SYMLINK_FOLLOW): names an O_TMPFILE file. A dir fd is
    passed because os.link calls plain link(2), which does not follow /proc's fd links, unless
    it has one."""
    if not _ROOT_FD:
        _ROOT_FD.append(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
    os.link(f"/proc/self/fd/{fd}", dest, src_dir_fd=_ROOT_FD[0], follow_symlinks=True)


def _copy_out(sink: int, chunk: bytes) -> None:
    try:
        write_all(sink, chunk)
    except OSError as exc:  # not the source's fault: a full or failing OUT
        raise RepobuildError(f"cannot write to OUT: {exc.strerror or exc}") from None


_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _rename(temp: str, dest: str) -> bool:
    if os.path.exists(dest):  # the same bytes under the same name: a blob is never rewritten
        os.unlink(temp)
        return False
    os.chmod(temp, 0o644)
    try:
        os.rename(temp, dest)
    except FileNotFoundError:
        _makedirs(dest)
        os.rename(temp, dest)
    return True


def _link(src: str, dest: str, root: str) -> bool:
    try:
        os.link(src, dest)  # atomic: the whole file appears, or nothing
    except FileNotFoundError:
        _makedirs(dest)
        return _link(src, dest, root)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        tmp = temp_name(root)  # another filesystem: copy aside, then rename
        shutil.copyfile(src, tmp)
        return _rename(tmp, dest)
    return True


def _write_once(path: str, data: bytes, root: str) -> bool:
    """Create ``path`` with ``data``; True when this call created it. A file already there
    with other bytes (cut short by a killed build) is replaced atomically."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:
        _makedirs(path)
        return _write_once(path, data, root)
    except FileExistsError:
        with open(path, "rb") as fh:
            if fh.read() == data:
                return False
        tmp = temp_name(root)
        with open(tmp, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return False
    try:
        os.fchmod(fd, 0o644)
        write_all(fd, data)
    finally:
        os.close(fd)
    return True
