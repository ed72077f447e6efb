"""SOURCE walked in a forked child (``ScanAhead``) gives what the walk in this process gives,
errors included, and leaves no child behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from repobuild.errors import UsageError, ValidationError
from repobuild.scan import ScanAhead, SourceFile, scan_source


def tree(root: Path) -> Path:
    src = root / "src"
    for rel in ("a/b/c.deb", "a/z.whl", "top.txt", "x/tab\tname", "x/ünï.tar.gz", ".hidden/h"):
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode() * 3)
    (src / "link.txt").symlink_to("top.txt")
    (src / "out").mkdir()
    (src / "out" / "built").write_bytes(b"x")
    return src


def no_child_left(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_same_records_as_the_walk_here(tmp_path: Path) -> None:
    src = tree(tmp_path)
    ahead = ScanAhead(src, exclude=src / "out")
    pid = ahead._pid
    assert pid, "forked"
    got = ahead.result()
    assert got == scan_source(src, exclude=src / "out")
    assert all(type(f) is SourceFile for f in got)
    assert {f.rel for f in got} == {"a/b/c.deb", "a/z.whl", "top.txt", "x/tab\tname",
                                    "x/ünï.tar.gz", "link.txt"}
    assert no_child_left(pid)
    ahead.close()  # nothing left to do


def test_errors_are_raised_as_the_walk_here_raises_them(tmp_path: Path) -> None:
    src = tree(tmp_path)
    outside = tmp_path / "secret"
    outside.write_text("s")
    (src / "leak").symlink_to(outside)
    with pytest.raises(ValidationError, match="symlink leads out of SOURCE") as ahead_exc:
        ScanAhead(src).result()
    with pytest.raises(ValidationError) as here_exc:
        scan_source(src)
    assert str(ahead_exc.value) == str(here_exc.value)
    with pytest.raises(UsageError, match="SOURCE is not a folder"):
        ScanAhead(tmp_path / "missing").result()


def test_a_killed_child_means_a_walk_here(tmp_path: Path) -> None:
    src = tree(tmp_path)
    ahead = ScanAhead(src)
    os.kill(ahead._pid, signal.SIGKILL)
    assert ahead.result() == scan_source(src)


def test_close_without_result_reaps_the_child(tmp_path: Path) -> None:
    ahead = ScanAhead(tree(tmp_path))
    pid = ahead._pid
    ahead.close()
    assert no_child_left(pid)
    assert ahead.result() == scan_source(tmp_path / "src")  # walked here, as a fallback


def test_a_tree_of_thousands_fills_the_pipe(tmp_path: Path) -> None:
    """More than a pipe's buffer (64 KiB) of records: the child writes as this process reads."""
    src = tmp_path / "big"
    for i in range(3000):
        folder = src / f"d{i % 30:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file-with-a-long-name-{i:05d}.whl").write_bytes(b"")
    got = ScanAhead(src).result()
    assert len(got) == 3000 and got == scan_source(src)
