"""SOURCE walked in a forked child (``ScanAhead``) gives what the walk in this process gives,
errors included, and leaves no child behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from repobuild.errors import UsageError, ValidationError
from repobuild.scan import ScanAhead, SourceFile, scan_source
from repobuild.store import SURVEY_FILE, survey


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


# --- OUT's survey, walked by the same child ---------------------------------------------------

def out_tree(root: Path) -> Path:
    """An OUT as a build leaves it, in small: blobs, pages, a stray file, the state folder."""
    out = root / "out"
    for rel in ("blobs/sha256/aa/aaaa/a.deb", "blobs/sha256/bb/bbbb/b.whl",
                "blobs/sha256/bb/bbbb/b.whl.metadata", "simple/x/index.html", "stray.txt",
                ".repobuild/cache.bin"):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for shard in "0123456789abcdef":  # as OutTree.open makes them
        (out / ".repobuild" / "tmp" / shard).mkdir(parents=True)
    return out


EXPECTED = ["blobs/sha256/aa/aaaa/a.deb", "blobs/sha256/bb/bbbb/b.whl",
            "blobs/sha256/bb/bbbb/b.whl.metadata", "blobs/sha256/cc/cccc/gone.deb"]


def test_the_childs_survey_of_out_is_the_survey_here(tmp_path: Path) -> None:
    src, out = tree(tmp_path), out_tree(tmp_path)
    ahead = ScanAhead(src, exclude=src / "out", out=out)
    pid = ahead._pid
    assert ahead.result() == scan_source(src, exclude=src / "out")
    assert not no_child_left(pid), "the child goes on to walk OUT"
    got = ahead.survey(EXPECTED)()
    assert no_child_left(pid)
    assert got is not None
    others, missing = got
    assert sorted(others) == ["simple/x/index.html", "stray.txt"]
    assert missing == {"blobs/sha256/cc/cccc/gone.deb"}
    here_others, here_missing = survey(str(out), EXPECTED)
    assert (sorted(others), missing) == (sorted(here_others), here_missing)
    assert (out / ".repobuild" / SURVEY_FILE).is_file(), "the listings are kept"
    ahead.close()


def test_the_child_keeps_no_listings_unless_asked(tmp_path: Path) -> None:
    """The child walks OUT before the build holds OUT's lock: it writes the listings it
    recorded only once the build asks for the survey (then it holds the lock)."""
    out = out_tree(tmp_path)
    ahead = ScanAhead(tree(tmp_path), out=out)
    ahead.result()
    time.sleep(0.3)  # ample for the walk of a few folders
    pid = ahead._pid
    ahead.close()
    assert no_child_left(pid)
    assert not (out / ".repobuild" / SURVEY_FILE).exists()


def test_no_state_folder_means_no_walk_and_a_walk_here(tmp_path: Path) -> None:
    """An OUT without a build's state: the child walks nothing, and says so (None)."""
    out = tmp_path / "new-out"
    out.mkdir()
    ahead = ScanAhead(tree(tmp_path), out=out)
    ahead.result()
    assert ahead.survey(EXPECTED)() is None
    ahead.close()


def test_a_killed_child_means_no_survey_from_it(tmp_path: Path) -> None:
    src, out = tree(tmp_path), out_tree(tmp_path)
    ahead = ScanAhead(src, out=out)
    assert ahead.result() == scan_source(src)
    os.kill(ahead._pid, signal.SIGKILL)
    assert ahead.survey(EXPECTED)() is None
    ahead.close()


def test_a_large_request_does_not_block_on_the_pipe(tmp_path: Path) -> None:
    """A request of megabytes (100,000 blobs) is read by the child while it walks."""
    src, out = tree(tmp_path), out_tree(tmp_path)
    ahead = ScanAhead(src, out=out)
    ahead.result()
    many = [f"blobs/sha256/{i % 256:02x}/{i:064x}/file-{i}.whl" for i in range(60_000)]
    others, missing = ahead.survey(EXPECTED + many)() or ([], set())
    assert len(missing) == 60_001 and sorted(others) == ["simple/x/index.html", "stray.txt"]
    ahead.close()
