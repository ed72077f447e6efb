"""Walk SOURCE: every regular file, sorted, with symlinks checked so nothing escapes SOURCE."""

from __future__ import annotations

import os
import stat
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from repobuild.errors import UsageError, ValidationError


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
