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
from typing import Any, Protocol

from repobuild.cache import Stamp
from repobuild.errors import RepobuildError, ValidationError
from repobuild.fdio import write_all
from repobuild.formats.deb import DebError, DebInfo, DebInspector
from repobuild.formats.pydist import (
    TAIL_BYTES,
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
from repobuild.sources import hash_file
from repobuild.store import temp_name

# 256 KiB: small enough to stay in a core's L2 cache between the read and the hashing, large
# enough that a 500 KB file takes two reads
CHUNK = 256 << 10
_BUFFER: list[tuple[bytearray, memoryview]] = []


def _buffer() -> tuple[bytearray, memoryview]:
    """This process's read buffer (and a view of it), made on first use."""
    if not _BUFFER:
        buf = bytearray(CHUNK)
        _BUFFER.append((buf, memoryview(buf)))
    return _BUFFER[0]


class _Feeder(Protocol):
    def feed(self, chunk: bytes | memoryview) -> None: ...


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
    lower_zip = filename.lower().endswith(".zip")
    h256 = hashlib.sha256()
    h512 = hashlib.sha512() if sha512 else None
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValidationError(f"cannot read: {exc.strerror or exc}", rel) from None
    try:
        before = os.fstat(fd)
        size = before.st_size
        # a zip's inspector keeps the file's last TAIL_BYTES: those are read into new memory
        # and kept as they are; every other read goes into one buffer reused for every file
        # (no fresh memory to fill per file: the read calls took ~25 % less time in a profile
        # of the workers, though whole builds did not get measurably faster)
        keep_from = 1 << 62  # no tail kept
        inspector: _Feeder | None = None
        if kind == "deb":
            inspector = DebInspector()
        elif kind == "wheel" or (kind == "sdist?" and lower_zip):
            inspector = TailInspector(size)
            keep_from = size - TAIL_BYTES
        elif kind == "sdist?":
            inspector = TarGzSdistInspector()
        buf, view = _buffer()
        pos = 0
        while True:
            chunk: bytes | memoryview
            if pos + CHUNK > keep_from:
                # sized to the file: a 256 KiB read of a 3 KB file would allocate 256 KiB and
                # shrink it, which fragments the heap at 100,000 files
                chunk = os.read(fd, min(CHUNK, size - pos) if pos < size else CHUNK)
                n = len(chunk)
            else:
                n = os.readv(fd, (buf,))
                chunk = view[:n] if n < CHUNK else view
            if not n:
                break
            pos += n
            h256.update(chunk)
            if h512 is not None:
                h512.update(chunk)
            if sink is not None:
                _copy_out(sink, chunk)
            if inspector is not None:
                inspector.feed(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise ValidationError(f"cannot read: {exc.strerror or exc}", rel) from None
    except (DebError, DistError) as exc:  # an inspector can refuse the first bytes it is fed
        raise ValidationError(str(exc), rel) from None
    finally:
        os.close(fd)
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
        item.placed = _link(src, dest, root, art.sha256) if link else sink.place(dest)
        if art.kind == "wheel" and art.dist is not None:
            meta = art.dist.metadata
            art.metadata_sha256 = hashlib.sha256(meta).hexdigest()
            item.meta_size = len(meta)
            item.meta_created = _write_once(dest + ".metadata", meta, root)
            art.dist = replace(art.dist, metadata=b"")  # on disk now; not carried further
    except OSError as exc:
        raise RepobuildError(f"cannot write to OUT: {exc.strerror or exc}", dest) from None
    except _Changed:
        raise ValidationError("the file changed while it was being read", rel) from None
    if link and item.placed:
        # the blob must be the file that was read, not one renamed over its name since; and
        # hard-linking changed the file's ctime: take the stamp again for the build cache
        try:
            st = os.stat(dest)
        except OSError as exc:
            raise RepobuildError(f"cannot write to OUT: {exc.strerror or exc}", dest) from None
        stamp = item.stamp
        if stamp is not None and (st.st_ino, st.st_size, st.st_mtime_ns) != (
            stamp.inode, stamp.size, stamp.mtime_ns
        ):
            if st.st_nlink > 1:  # a hard link, not a copy made across file systems (checked)
                os.unlink(dest)
                if item.meta_created:
                    os.unlink(dest + ".metadata")
                raise ValidationError("the file changed while it was being read", rel)
        elif stamp is not None:
            item.stamp = Stamp.of(st)
    return item


def ingest_batch(
    root: str, jobs: list[Job], link: bool, sha512: bool
) -> tuple[list[Packed], BaseException | None]:
    """:func:`ingest_into` for several files (in a worker process). Stops at the first failure
    and returns it with what was done before it, so that the build can undo that. The results
    are :func:`pack`ed: plain tuples cross the process boundary ~4 × faster than dataclasses."""
    done: list[Packed] = []
    for job in jobs:
        try:
            done.append(pack(ingest_into(root, job, link=link, sha512=sha512)))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent process
            return done, exc
    return done, None


Packed = tuple[Any, ...]


def pack(item: Ingested) -> Packed:
    """An :class:`Ingested` as a tuple of plain values (see :func:`unpack`)."""
    a, st = item.artifact, item.stamp
    deb, dist = a.deb, a.dist
    return (
        a.path, a.filename, a.kind, a.size, a.sha256, a.sha512,
        (deb.package, deb.version, deb.architecture, deb.control) if deb is not None else None,
        (dist.name, dist.version, dist.requires_python, dist.summary, dist.metadata)
        if dist is not None else None,
        a.metadata_sha256,
        (st.size, st.mtime_ns, st.ctime_ns, st.inode) if st is not None else None,
        item.src, item.placed, item.meta_size, item.meta_created,
    )


def unpack(t: Packed) -> Ingested:
    """The :class:`Ingested` that :func:`pack` made ``t`` of (a fresh artifact of the kinds
    ingest makes: component, upload time and yanking are set later by the build)."""
    art = Artifact(
        t[0], t[1], t[2], t[3], t[4], t[5],
        DebInfo(*t[6]) if t[6] is not None else None,
        DistInfo(*t[7]) if t[7] is not None else None,
        metadata_sha256=t[8],
    )
    return Ingested(art, stamp=Stamp(*t[9]) if t[9] is not None else None, src=t[10],
                    placed=t[11], meta_size=t[12], meta_created=t[13])


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
            _blob_dir(dest)
            try:
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


def _copy_out(sink: int, chunk: bytes | memoryview) -> None:
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


def _blob_dir(dest: str) -> None:
    """Make the blob's own folder (and its ``<hh>`` parent when missing) before the blob: a new
    blob's folder never exists, so trying the link first only failed and looked the path up
    once more."""
    folder = dest.rpartition("/")[0]
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass
    except FileNotFoundError:
        _makedirs(dest)


class _Changed(Exception):
    """The source's bytes are no longer the ones that were read and hashed."""


def _link(src: str, dest: str, root: str, sha256: str) -> bool:
    _blob_dir(dest)
    try:
        os.link(src, dest)  # atomic: the whole file appears, or nothing
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        # another file system (or no right to link): copy aside, check that the copy is what
        # was hashed (it is made from the path, read once more), then rename
        tmp = temp_name(root)
        shutil.copyfile(src, tmp)
        copied = hash_file(tmp)
        if copied is None or copied.sha256 != sha256:
            os.unlink(tmp)
            raise _Changed from None
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
