"""The output tree on disk: atomic writes, blobs placed once, a lock, and local state.

Everything visible is written through a temporary file in ``OUT/.repobuild/tmp`` and a rename,
so a reader sees either the old or the new bytes of a file, never a part.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import marshal
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repobuild.errors import UsageError
from repobuild.fdio import write_all

if TYPE_CHECKING:
    from repobuild.workers import Workers

STATE_DIR = ".repobuild"
LANDED = "/"  # a staged file that was written in place already
IN_FOLDER = "//"  # a staged file inside a folder that lands whole (OutTree.stage_folder)
STAGE_BATCH_BYTES = 1 << 20
STAGE_BATCH_FILES = 256


class OutTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / STATE_DIR
        self.tmp = self.state / "tmp"
        self._lock_fd: int | None = None
        self.created_root = False
        self._created_top: Path | None = None
        # rel -> the file written aside (None: OUT holds these bytes already; LANDED: written
        # in place). No future is kept per file: at 100,000 files they cost ~60 MB.
        self._staged: dict[str, str | None] = {}
        self._workers: Workers | None = None
        self._batch: list[tuple[str, bytes | bytearray]] = []
        self._batch_bytes = 0
        self._pending: deque[Future[list[tuple[str, str | None]]]] = deque()
        self._folders: dict[str, str] = {}  # top-level folder -> where it is being written

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
        for job in self._pending:  # written aside, into tmp (removed below)
            job.exception()
        self._pending.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed and self.created_root:
            # OUT and any parent folder this build had to create: nothing is left behind
            shutil.rmtree(self._created_top or self.root, ignore_errors=True)

    def temp_path(self) -> Path:
        return Path(temp_name(str(self.root)))

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

    # -- reading ---------------------------------------------------------------------------
    def walk(self) -> list[str]:
        """Every file below OUT except local state, as relative paths."""
        out: list[str] = []
        for _folder, files, _folders in iter_tree(str(self.root)):
            out += files
        return sorted(out)

    # -- staging: render now, land later -----------------------------------------------------
    # Creating small files costs more than rendering them, and in a thread it fights the
    # rendering for the GIL; so staged files go in batches to the build's worker processes
    # (when it has them) while the next pages are rendered.
    def use_workers(self, workers: Workers) -> None:
        self._workers = workers if workers.count else None

    def stage_folder(self, top: str) -> str | None:
        """When OUT has no top-level folder ``top``: a private root (in OUT/.repobuild/tmp) in
        which it is written, at any time during the build; the first :meth:`commit_many` of a
        file in it renames the whole folder into place. None when ``top`` exists."""
        if top in self._folders:
            return self._folders[top]
        if os.path.lexists(self.path(top)):
            return None
        root = self.tmp / f"folder-{top}"
        (root / top).mkdir(parents=True)
        self._folders[top] = str(root)
        return str(root)

    def has_stage_folder(self, top: str) -> bool:
        """Whether ``top`` is written in a folder of its own (:meth:`stage_folder`)."""
        return top in self._folders

    def _folder_of(self, rel: str) -> str | None:
        top, sep, _rest = rel.partition("/")
        return self._folders.get(top) if sep else None

    def stage(self, rel: str, data: bytes | bytearray,
              sha256: str | None = None) -> tuple[int, str]:
        """Write ``data`` aside (unless OUT already holds exactly these bytes) and return
        (size, sha256) at once; :meth:`commit_many` puts it in place later, by a rename.
        ``sha256``: the bytes' digest (hex), when the caller took it already."""
        size, digest = len(data), sha256 or hashlib.sha256(data).hexdigest()
        folder = self._folder_of(rel)
        if folder is not None:
            write_aside(folder, [(rel, data)])
            self._staged[rel] = IN_FOLDER
            return size, digest
        if self._workers is None or size > STAGE_BATCH_BYTES:
            # a large file (the in-toto link, Packages at 100,000 packages) is written here:
            # sending it to a worker would hold a pickled copy as well
            self._staged.update(write_aside(str(self.root), [(rel, data)]))
            return size, digest
        self._batch.append((rel, data))
        self._batch_bytes += size
        if self._batch_bytes >= STAGE_BATCH_BYTES or len(self._batch) >= STAGE_BATCH_FILES:
            self._send()
        return size, digest

    def adopt(self, rel: str, where: str | None) -> None:
        """Record a file that a worker rendered and wrote aside itself (see write_aside)."""
        self._staged[rel] = IN_FOLDER if self._folder_of(rel) is not None else where

    def _send(self) -> None:
        if not self._batch:
            return
        assert self._workers is not None
        self._pending.append(self._workers.submit(write_aside, str(self.root), self._batch))
        self._batch, self._batch_bytes = [], 0
        while len(self._pending) > 4 * self._workers.count:  # bounded memory in flight
            self._staged.update(self._pending.popleft().result())

    def _flush(self) -> None:
        """Wait until every staged file is written aside."""
        if self._workers is not None:
            self._send()
        while self._pending:
            self._staged.update(self._pending.popleft().result())

    def _commit(self, rel: str) -> bool:
        tmp = self._staged.pop(rel, None)
        if tmp is None:
            return False
        if tmp == LANDED:
            return True
        if tmp == IN_FOLDER:
            top = rel.partition("/")[0]
            folder = self._folders.pop(top, None)
            if folder is not None:  # the first of its files: the whole folder lands
                os.rename(f"{folder}/{top}", self.path(top))
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
        return sum(self._commit(rel) for rel in rels)

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


def survey(root: str, expected: list[str],
           keep_listings: bool = False) -> tuple[list[str], set[str]]:
    """Walk OUT: the files that are not among ``expected`` (a build's blobs and .metadata
    files: candidates for pruning), and those of ``expected`` that are not there (to put
    back). The expected files found are not returned: at 100,000 artifacts they are most of
    the tree. :func:`walk_out`, then :meth:`OutWalk.split` (and :meth:`OutWalk.keep` with
    ``keep_listings``)."""
    walk = walk_out(root, record=keep_listings, recorded=keep_listings)
    found = walk.split(expected)
    if keep_listings:
        walk.keep()
    return found


def pack_paths(paths: list[str]) -> bytes:
    """Paths as one NUL-separated string (no file name holds a NUL), to hand from one process
    to another: not 150,000 string objects pickled one by one (see :func:`unpack_paths`)."""
    return "\0".join(paths).encode("utf-8", "surrogateescape")


def unpack_paths(packed: bytes) -> list[str]:
    return packed.decode("utf-8", "surrogateescape").split("\0") if packed else []


class OutWalk:
    """Every file below OUT as one walk found it (OUT/.repobuild left out), and the folders'
    listings to keep for the next walk (see :func:`walk_out`)."""

    def __init__(self, root: str, files: list[str], record: dict[str, _Listing] | None,
                 changed: bool) -> None:
        self.root, self.files = root, files
        self._record, self._changed = record, changed

    def split(self, expected: list[str]) -> tuple[list[str], set[str]]:
        """The files found that are not among ``expected``, and those of ``expected`` not
        found."""
        wanted = set(expected)
        missing = wanted.difference(self.files)
        return [file for file in self.files if file not in wanted], missing

    def keep(self) -> None:
        """Record the listings for the next walk (when any differs from the recorded ones)."""
        if self._record is not None and self._changed:
            _write_listings(self.root, self._record)


def walk_out(root: str, *, record: bool = False, recorded: bool = True) -> OutWalk:
    """Walk OUT. With ``record``, the walk keeps the listing of each folder (for
    :meth:`OutWalk.keep` to write in :data:`SURVEY_FILE`) with the folder's stamp (mtime,
    ctime, inode); with ``recorded`` as well, a folder whose stamp is still the recorded one is
    not listed again: creating, removing or renaming an entry sets its folder's ctime, which no
    one can set back. The stamp recorded is the one taken before the listing, so a change made
    since has a later ctime; but a folder changed less than :data:`SETTLED_NS` before the walk
    began is not recorded, as a change made right after its stamp was taken could leave it the
    same (the file system's clock ticks coarsely). At 10,000 artifacts OUT has ~15,000
    folders: listing them all cost ~0.15 s of CPU at every build, their stamps a fraction of
    it."""
    known = _read_listings(f"{root}/{STATE_DIR}") if record and recorded else {}
    listings: dict[str, _Listing] = {}
    changed = False
    settled = time.time_ns() - SETTLED_NS
    found: list[str] = []
    stack = [""]
    while stack:
        folder = stack.pop()
        path = f"{root}/{folder}" if folder else root
        try:
            st = os.stat(path)
        except OSError:
            changed = True
            continue
        hit = known.get(folder)
        folders: list[str]
        if (type(hit) is tuple and len(hit) == 5 and hit[0] == st.st_mtime_ns
                and hit[1] == st.st_ctime_ns and hit[2] == st.st_ino
                and _plain_names(hit[3]) and _plain_names(hit[4])):
            prefix = folder + "/" if folder else ""
            if hit[3]:
                found += [prefix + name for name in hit[3].split("\0")]
            folders = [prefix + name for name in hit[4].split("\0")] if hit[4] else []
            listings[folder] = hit
        else:
            changed = True
            listing = _list_folder(root, folder, STATE_DIR)
            if listing is None:
                continue
            files, folders = listing
            found += files
            # the stamp taken before the listing: a change made since has a later ctime
            if record and st.st_ctime_ns < settled:
                cut = len(folder) + 1 if folder else 0  # names kept without their folder
                listings[folder] = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                    "\0".join([f[cut:] for f in files]),
                                    "\0".join([f[cut:] for f in folders]))
        stack += folders
    return OutWalk(root, found, listings if record else None,
                   changed or len(listings) != len(known))


#: a folder's stamp (mtime, ctime, inode) and the names of its files and subfolders, each
#: NUL-separated (no name holds a NUL): one string per folder loads in a fraction of the time
#: of a list
_Listing = tuple[int, int, int, str, str]
SURVEY_FILE = "survey.bin"
#: how long ago a folder must have changed for its listing to be recorded (see survey)
SETTLED_NS = 1_000_000_000
_SURVEY_FORMAT = ("repobuild-survey", 3)


def _plain_names(joined: object) -> bool:
    """Whether a recorded listing's names could be a folder's: no "/", none empty, "." or
    ".." (the build removes what the walk finds and does not expect: a record edited to
    name "../x" must not reach outside OUT)."""
    if type(joined) is not str:
        return False
    if not joined:
        return True
    wrapped = f"\0{joined}\0"
    return ("/" not in joined and "\0\0" not in wrapped and "\0.\0" not in wrapped
            and "\0..\0" not in wrapped)


def _read_listings(state: str) -> dict[str, Any]:
    """The recorded listings; none when the file is missing or not one this code wrote (each
    entry is checked where it is used)."""
    try:
        with open(f"{state}/{SURVEY_FILE}", "rb") as fh:
            # loads of the whole file: marshal.load from a file object reads object by
            # object through it, ~6 × slower (66 ms against 10 ms at 15,000 folders)
            doc = marshal.loads(fh.read())
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    if (type(doc) is not tuple or len(doc) != 2 or doc[0] != _SURVEY_FORMAT
            or type(doc[1]) is not dict):
        return {}
    return doc[1]


def _write_listings(root: str, listings: dict[str, _Listing]) -> None:
    """Replace the recorded listings (a cache: a failure to write only means none is kept)."""
    tmp = temp_name(root)
    try:
        with open(tmp, "wb") as fh:
            marshal.dump((_SURVEY_FORMAT, listings), fh)
        os.replace(tmp, f"{root}/{STATE_DIR}/{SURVEY_FILE}")
    except OSError:
        with suppress(OSError):
            os.unlink(tmp)


def iter_tree(
    root: str, skip: str = STATE_DIR
) -> Iterator[tuple[str, list[str], list[str] | None]]:
    """Folder by folder below ``root``, as ``os.walk`` sees the tree (a symbolic link to a
    folder is neither followed nor a file), leaving out the top-level folder ``skip``: yields
    (folder, its files, its subfolders), all relative with ``/`` ("" is ``root``); a folder
    that cannot be read yields (folder, [], None) and is not entered."""
    stack = [""]
    while stack:
        folder = stack.pop()
        listing = _list_folder(root, folder, skip)
        if listing is None:
            yield folder, [], None
            continue
        files, folders = listing
        yield folder, files, folders
        stack += folders


def _list_folder(root: str, folder: str, skip: str) -> tuple[list[str], list[str]] | None:
    """A folder's files and subfolders (not links to folders), relative to ``root``; the
    top-level ``skip`` left out; None if the folder cannot be read."""
    prefix = folder + "/" if folder else ""
    files: list[str] = []
    folders: list[str] = []
    try:
        with os.scandir(f"{root}/{folder}" if folder else root) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if not is_dir:
                    files.append(prefix + entry.name)
                    continue
                if not folder and entry.name == skip:
                    continue
                try:
                    link = entry.is_symlink()
                except OSError:
                    link = False
                if not link:
                    folders.append(prefix + entry.name)
    except OSError:
        return None
    return files, folders


# -- run in a worker process (or in the build's own) ---------------------------------------------
def write_aside(
    root: str, items: list[tuple[str, bytes | bytearray]]
) -> list[tuple[str, str | None]]:
    """For each (rel, data): None when OUT holds these bytes already; LANDED when ``rel`` did
    not exist and was written in place (no visible index names a path that does not exist yet,
    so no reader can see it half written: a build killed now leaves it unlisted, and the next
    build replaces or prunes it); else a temporary file with the bytes, to be renamed later."""
    out: list[tuple[str, str | None]] = []
    for rel, data in items:
        dest = f"{root}/{rel}"
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd = -1
        except FileExistsError:
            fd = -2
        if fd == -1:
            try:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                fd = -2
        if fd >= 0:
            try:
                os.fchmod(fd, 0o644)
                write_all(fd, data)
            finally:
                os.close(fd)
            out.append((rel, LANDED))
            continue
        try:
            if os.stat(dest).st_size == len(data) and _same_bytes(dest, data):
                out.append((rel, None))
                continue
        except OSError:
            pass
        tmp = temp_name(root)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.fchmod(fd, 0o644)
            write_all(fd, data)
        finally:
            os.close(fd)
        out.append((rel, tmp))
    return out


def temp_name(root: str) -> str:
    """A new name in OUT/.repobuild/tmp, spread over 16 folders: creating files in one folder
    serialises on its lock, and a build may create one per new blob and per rendered page."""
    name = uuid.uuid4().hex
    return f"{root}/{STATE_DIR}/tmp/{name[0]}/{name}"


def _same_bytes(path: str, data: bytes | bytearray) -> bool:
    """Whether ``path`` holds ``data``, read a piece at a time (the in-toto link is ~50 MB at
    100,000 artifacts: reading it whole to compare held it twice)."""
    view = memoryview(data)
    pos = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(1 << 20):
            if view[pos:pos + len(chunk)] != chunk:
                return False
            pos += len(chunk)
    return pos == len(data)
