"""Walk SOURCE: every regular file, sorted, with symlinks checked so nothing escapes SOURCE."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from repobuild.errors import UsageError, ValidationError


@dataclass(frozen=True)
class SourceFile:
    path: str  # the file to read (a symlink's target inside SOURCE); a str: 100,000 Paths
    # are tens of megabytes
    rel: str  # SOURCE-relative name with '/' separators
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int = 0


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
    skip = exclude.resolve() if exclude is not None else None
    found: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            full = here / d
            if d.startswith(".") or (skip is not None and full == skip):
                continue
            if full.is_symlink():
                target = full.resolve()
                rel = full.relative_to(root).as_posix()
                if not _inside(target, root):
                    raise ValidationError(f"symlink leads out of SOURCE (to {target})", rel)
                continue  # a folder link inside SOURCE would list its files twice
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = here / name
            rel = full.relative_to(root).as_posix()
            if "\\" in rel or "\n" in rel or "\r" in rel:
                raise ValidationError("file name holds a backslash or line break", rel)
            target = full
            if full.is_symlink():
                target = full.resolve()
                if not _inside(target, root):
                    raise ValidationError(f"symlink leads out of SOURCE (to {target})", rel)
            try:
                st = target.stat()
            except OSError as exc:
                raise ValidationError(f"cannot read: {exc.strerror}", rel) from None
            if not target.is_file():
                continue
            found.append(
                SourceFile(str(target), rel, st.st_size, st.st_mtime_ns, st.st_ino,
                           st.st_ctime_ns)
            )
    found.sort(key=lambda f: f.rel)
    return found
