"""Walk SOURCE: every regular file, sorted, with symlinks checked so nothing escapes SOURCE."""

from __future__ import annotations

import marshal
import os
import signal
import stat
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from repobuild.errors import UsageError, ValidationError
from repobuild.fdio import widen_pipe, write_all


class SourceFile(NamedTuple):  # a tuple: a frozen dataclass cost ~1.5 µs more per file
    path: str  # the file to read (a symlink's target inside SOURCE); a str: 100,000 Paths
    # are tens of megabytes
    rel: str  # SOURCE-relative name with '/' separators
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int = 0


_by_rel = itemgetter(1)  # SourceFile.rel


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def scan_source(source: Path, *, exclude: Path | None = None) -> list[SourceFile]:
    """All files below ``source``; hidden files and folders (names starting with '.') are skipped.

    A symlink that leads out of SOURCE is refused; one that stays inside is read as its target.
    ``exclude`` (the output folder, when it lies inside SOURCE) is left out.
    """
    if not source.is_dir():
        raise UsageError("SOURCE is not a folder", source)
    root = source.resolve()
    top = str(root)
    skip = str(exclude.resolve()) if exclude is not None else None
    found: list[SourceFile] = []
    # os.scandir: the entry's type comes with the listing, so a plain file costs one stat
    # (lstat), and nothing else: 10,000 files are ~50 ms, not the ~200 ms of os.walk + Path
    pending = [(top, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            where = prefix.rstrip("/") or "."
            raise ValidationError(f"cannot read: {exc.strerror}", where) from None
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            rel = prefix + name
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not _inside(target, root):
                    raise ValidationError(f"symlink leads out of SOURCE (to {target})", rel)
                if target.is_dir():
                    continue  # a folder link inside SOURCE would list its files twice
                path = str(target)
                try:
                    st = os.stat(path)
                except OSError as exc:
                    raise ValidationError(f"cannot read: {exc.strerror}", rel) from None
            elif entry.is_dir(follow_symlinks=False):
                if entry.path != skip:
                    pending.append((entry.path, rel + "/"))
                continue
            else:
                path = entry.path
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    raise ValidationError(f"cannot read: {exc.strerror}", rel) from None
            if not stat.S_ISREG(st.st_mode):
                continue
            if "\\" in rel or "\n" in rel or "\r" in rel:
                raise ValidationError("file name holds a backslash or line break", rel)
            found.append(
                SourceFile(path, rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            )
    found.sort(key=_by_rel)
    return found


class ScanAhead:
    """:func:`scan_source` run in a forked child while this process goes on; and, given
    ``out``, OUT's survey (:func:`repobuild.store.survey`, listings kept) walked by the same
    child next.

    ``repobuild build`` starts it before it imports the build (~0.1 s of imports): on a
    machine with a second core the walk (~45 ms at 10,000 files) costs no wall time. The child
    is forked before any thread exists, walks, sends the records (marshal) through a pipe and
    exits. Anything else (no ``fork``, a child that failed or was killed) and :meth:`result`
    walks in this process, so an error is raised here, as :func:`scan_source` raises it.

    Then, if OUT holds a build's state, the child walks OUT (~0.1 s of CPU at 10,000
    artifacts) while the build reads its state and the cache: a core that is idle then,
    where a worker's walk came at the end, when both cores were busy and the build waited for
    it. The build hands it what it expects to find (:meth:`survey`) once it holds OUT's lock;
    only then does the child write the listings it recorded.
    """

    def __init__(self, source: Path, *, exclude: Path | None = None, out: Path | None = None,
                 recorded: bool = True) -> None:
        self.source, self.exclude, self.out = source, exclude, out
        self._pid = 0
        self._read_fd = -1
        self._ask_fd = -1  # to the child: what the build expects in OUT
        self._answer_fd = -1  # from the child: what OUT holds besides, and what it lacks
        self._status: int | None = None
        if not hasattr(os, "fork"):
            return
        read_fd, write_fd = os.pipe()
        ask = answer = (-1, -1)
        if out is not None:
            ask, answer = os.pipe(), os.pipe()
        for fd in (write_fd, ask[1], answer[1]):
            if fd >= 0:
                widen_pipe(fd)  # the records of 10,000 files are ~1 MB
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (coverage does not follow it)
            for fd in (read_fd, ask[1], answer[0]):
                if fd >= 0:
                    os.close(fd)
            _scan_child(write_fd, source, exclude, out, ask[0], answer[1], recorded)
        for fd in (write_fd, ask[0], answer[1]):
            if fd >= 0:
                os.close(fd)
        self._pid, self._read_fd = pid, read_fd
        self._ask_fd, self._answer_fd = ask[1], answer[0]

    def result(self) -> list[SourceFile]:
        data = _read_message(self._read_fd) if self._read_fd >= 0 else None
        self._read_fd = -1
        if self._ask_fd < 0:
            self._reap()
        if data is not None:
            try:
                records = marshal.loads(data)
                return list(map(SourceFile._make, records))
            except (EOFError, ValueError, TypeError):
                pass
        return scan_source(self.source, exclude=self.exclude)

    def survey(self, expected: list[str]) -> Callable[[], tuple[list[str], set[str]] | None]:
        """Hand the child the files the build expects in OUT; the function returned waits for
        what :func:`repobuild.store.survey` would give (with the listings kept), or None if
        the child walked no OUT or failed: then the caller walks it."""
        fd, self._ask_fd = self._ask_fd, -1
        if fd < 0:
            return lambda: None
        # handed over by a thread: the request (~1 MB at 10,000 artifacts) fills the pipe
        # many times over, and the child, walking OUT at the lowest priority, drains it at its
        # pace; written here, it held the build 5-60 ms
        sender = threading.Thread(target=_send_and_close, args=(fd, marshal.dumps(expected)),
                                  daemon=True)
        sender.start()

        def answer() -> tuple[list[str], set[str]] | None:
            fd, self._answer_fd = self._answer_fd, -1
            data = _read_message(fd) if fd >= 0 else None
            sender.join()  # done: the child read the request before it answered, or is gone
            if self._reap() != 0 or not data:
                return None
            from repobuild.store import unpack_paths  # imported by the build already

            try:
                packed, missing = marshal.loads(data)
                return unpack_paths(packed), set(missing)
            except (EOFError, ValueError, TypeError, UnicodeDecodeError):
                return None

        return answer

    def close(self) -> None:
        """Stop the child (a build that failed before it asked for the files, or for OUT's
        survey)."""
        if self._pid:
            with suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        for name in ("_read_fd", "_ask_fd", "_answer_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self._reap()

    def _reap(self) -> int:
        """Wait for the child; its exit code (-1 when it did not exit by itself)."""
        if self._pid:
            pid, self._pid = self._pid, 0
            _, status = os.waitpid(pid, 0)
            self._status = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        return self._status if self._status is not None else -1


_LENGTH = struct.Struct("<Q")  # before the data the child sends: a cut message is no message


def _read_message(fd: int) -> bytes | None:
    """One message of :func:`_send` (then ``fd`` is closed), or None if the pipe ends
    before it does: not read to its end, as the workers forked since hold the other end of a
    pipe to the child as well, which then never ends."""
    try:
        head = _read_exactly(fd, _LENGTH.size)
        if head is None:
            return None
        return _read_exactly(fd, _LENGTH.unpack(head)[0])
    finally:
        os.close(fd)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, data: bytes) -> None:
    write_all(fd, _LENGTH.pack(len(data)))
    write_all(fd, data)


def _send_and_close(fd: int, data: bytes) -> None:
    try:
        _send(fd, data)
    except OSError:
        pass  # the child is gone: its answer will be missing
    finally:
        os.close(fd)


def _scan_child(write_fd: int, source: Path, exclude: Path | None, out: Path | None,
                ask_fd: int, answer_fd: int,
                recorded: bool) -> None:  # pragma: no cover - runs in the child
    code = 1
    try:
        from repobuild.process import background

        background()
        files = scan_source(source, exclude=exclude)
        _send(write_fd, marshal.dumps([tuple(f) for f in files]))
        os.close(write_fd)
        del files
        code = 0
        if out is not None:
            code = _survey_child(out, ask_fd, answer_fd, recorded)
    except BaseException:  # noqa: BLE001 - the parent walks again and reports it
        code = 1
    finally:
        os._exit(code)


def _survey_child(out: Path, ask_fd: int, answer_fd: int,
                  recorded: bool) -> int:  # pragma: no cover - runs in the child
    from repobuild.process import background
    from repobuild.store import STATE_DIR, pack_paths, walk_out

    if not (out / STATE_DIR).is_dir():
        return 0  # no build's OUT to walk (a first build needs no walk; else the build walks)
    # the build needs the survey last: its other helpers (the key unlocking, a worker reading
    # new files) go first when they compete for a core
    background(19)
    # the build's request read as it comes (it would block the build on a full pipe)
    asked: list[bytes | None] = []
    reader = threading.Thread(target=lambda: asked.append(_read_message(ask_fd)))
    reader.start()
    walk = walk_out(str(out), record=True, recorded=recorded)
    reader.join()
    if not asked or not asked[0]:
        return 0  # the build wants no walk after all (it failed, or OUT was new)
    others, missing = walk.split(marshal.loads(asked[0]))
    walk.keep()  # the build holds OUT's lock: it has asked
    _send(answer_fd, marshal.dumps((pack_paths(others), sorted(missing))))
    return 0
