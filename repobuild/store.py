"""The output tree on disk: atomic writes, blobs placed once, a lock, and local state.

Everything visible is written through a temporary file in ``OUT/.repobuild/tmp`` and a rename,
so a reader sees either the old or the new bytes of a file, never a part.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repobuild.errors import UsageError

STATE_DIR = ".repobuild"
_LANDED = Path("/")  # a staged file that was written in place already


class OutTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / STATE_DIR
        self.tmp = self.state / "tmp"
        self._lock_fd: int | None = None
        self.created_root = False
        self._created_top: Path | None = None
        # rel -> the file written aside (None: OUT holds these bytes already). No future is
        # kept per file: at 100,000 files their locks and conditions alone cost ~60 MB.
        self._staged: dict[str, str | None] = {}
        self._stage_errors: list[BaseException] = []
        self._pool: ThreadPoolExecutor | None = None
        self._queue_size = 256
        self._queue_room = threading.BoundedSemaphore(self._queue_size)

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UsageError("OUT exists and is not a folder", self.root)
        if not self.root.exists():
            top = self.root.absolute()
            while not top.parent.exists():  # the first folder this build creates
                top = top.parent
            self.root.mkdir(parents=True)
            self.created_root = True
            self._created_top = top
        self.state.mkdir(exist_ok=True)
        fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise UsageError(
                    "another repobuild process is writing this folder", self.root
                ) from None
            raise
        self._lock_fd = fd
        shutil.rmtree(self.tmp, ignore_errors=True)  # left over from a killed run
        self.tmp.mkdir()
        for shard in "0123456789abcdef":
            (self.tmp / shard).mkdir()

    def close(self, *, failed: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed and self.created_root:
            # OUT and any parent folder this build had to create: nothing is left behind
            shutil.rmtree(self._created_top or self.root, ignore_errors=True)

    def temp_path(self) -> Path:
        # spread over 16 folders: creating files in one folder serialises on its lock, and a
        # build creates one temporary file per new blob and per rendered page
        name = uuid.uuid4().hex
        return self.tmp / name[0] / name

    # -- writing ---------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` atomically with ``data`` (skipped when the bytes are already there)."""
        dest = self.path(rel)
        try:
            if dest.stat().st_size == len(data) and dest.read_bytes() == data:
                return
        except OSError:
            pass
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.temp_path()
        with open(tmp, "wb") as fh:
            fh.write(data)
        tmp.chmod(0o644)
        os.replace(tmp, dest)

    def place_blob(self, temp: Path, rel: str) -> bool:
        """Move a fully written temporary copy into the blob store; never replace a blob."""
        dest = self.path(rel)
        if dest.exists():
            temp.unlink(missing_ok=True)
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp.chmod(0o644)
        os.rename(temp, dest)
        return True

    def link_blob(self, src: Path, rel: str) -> bool:
        """Hard-link a source file into the blob store (``--link``)."""
        dest = self.path(rel)
        if dest.exists():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)  # atomic: the whole file appears, or nothing
            return True
        except FileExistsError:
            return False
        except OSError:  # another filesystem: copy aside, then rename
            tmp = self.temp_path()
            shutil.copyfile(src, tmp)
            os.rename(tmp, dest)
            return True

    # -- reading ---------------------------------------------------------------------------
    def walk(self) -> list[str]:
        """Every file below OUT except local state, as relative paths."""
        out: list[str] = []
        root = str(self.root)
        cut = len(root) + 1
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath == root:
                dirnames[:] = [d for d in dirnames if d != STATE_DIR]
                out.extend(filenames)
                continue
            prefix = dirpath[cut:] + "/"
            out.extend(prefix + name for name in filenames)
        return sorted(out)

    # -- staging: render now, land later -----------------------------------------------------
    # Creating a small file costs far more than hashing it on ordinary disks, so staged writes
    # and the renames that land them run in a small thread pool.
    def _io_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8)
        return self._pool

    def stage(self, rel: str, data: bytes) -> tuple[int, str]:
        """Write ``data`` aside (unless OUT already holds exactly these bytes) and return
        (size, sha256) at once; :meth:`commit_many` puts it in place later, by a rename."""
        size, digest = len(data), hashlib.sha256(data).hexdigest()
        self._queue_room.acquire()  # at most so many rendered files wait in memory
        self._io_pool().submit(self._write_aside, rel, data)
        return size, digest

    def _write_aside(self, rel: str, data: bytes) -> None:
        try:
            tmp = self._write_aside_now(rel, data)
            self._staged[rel] = str(tmp) if tmp is not None else None
        except BaseException as exc:  # reported by _flush, in the build's thread
            self._stage_errors.append(exc)
        finally:
            self._queue_room.release()

    def _flush(self) -> None:
        """Wait until every staged file is written aside."""
        for _ in range(self._queue_size):
            self._queue_room.acquire()
        for _ in range(self._queue_size):
            self._queue_room.release()
        if self._stage_errors:
            raise self._stage_errors[0]

    def _write_aside_now(self, rel: str, data: bytes) -> Path | None:
        dest = self.path(rel)
        try:
            st: os.stat_result | None = dest.stat()
        except FileNotFoundError:
            # A path no visible index names yet (a new page, a new blob's metadata): written in
            # place at once, which saves a temporary file and a rename per file. A build killed
            # now leaves it unlisted, and the next build replaces or prunes it.
            if self._write_new(dest, data):
                return _LANDED
            st = None
        except OSError:
            st = None
        if st is not None and st.st_size == len(data) and dest.read_bytes() == data:
            return None
        tmp = self.temp_path()
        with open(tmp, "wb") as fh:
            fh.write(data)
        tmp.chmod(0o644)
        return tmp

    @staticmethod
    def _write_new(dest: Path, data: bytes) -> bool:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            dest.parent.mkdir(parents=True, exist_ok=True)
            return OutTree._write_new(dest, data)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, 0o644)
            fh.write(data)
        return True

    def _commit(self, rel: str) -> bool:
        tmp = self._staged.pop(rel, None)
        if tmp is None:
            return False
        if tmp == str(_LANDED):
            return True
        dest = self.path(rel)
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        return True

    def commit_many(self, rels: list[str]) -> int:
        """Land staged files (in any order among themselves); returns how many changed."""
        self._flush()
        return sum(self._io_pool().map(self._commit, rels))

    def place_many(self, moves: list[tuple[Path, str]]) -> list[bool]:
        """place_blob for many blobs at once."""
        return list(self._io_pool().map(lambda m: self.place_blob(*m), moves))

    def link_many(self, links: list[tuple[Path, str]]) -> list[bool]:
        return list(self._io_pool().map(lambda m: self.link_blob(*m), links))

    def remove(self, rel: str) -> None:
        path = self.path(rel)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
