"""OUT's walk (store.survey) with the folders' listings kept between builds gives exactly what a
full walk gives, whatever changed in between; a folder changed too recently is listed again."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from repobuild import store
from repobuild.store import STATE_DIR, SURVEY_FILE, survey

TICK = 0.03  # longer than the file system's clock tick: a change gets a new ctime


def make_out(root: Path) -> list[str]:
    for rel in ("blobs/sha256/ab/cd/abcd", "blobs/sha256/ab/ef/abef", "simple/a/index.html",
                "simple/b/index.html", "dists/stable/Release", "index.json"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    for shard in "0123456789abcdef":  # as OutTree.open makes them
        (root / STATE_DIR / "tmp" / shard).mkdir(parents=True)
    (root / STATE_DIR / "tmp" / "0" / "x").write_text("not surveyed")
    return ["blobs/sha256/ab/cd/abcd", "blobs/sha256/ab/ef/abef", "blobs/sha256/12/34/1234"]


def both(root: Path, expected: list[str]) -> tuple[list[str], set[str]]:
    kept = survey(str(root), expected, keep_listings=True)
    full = survey(str(root), expected)
    assert sorted(kept[0]) == sorted(full[0]) and kept[1] == full[1]
    return sorted(kept[0]), kept[1]


def listed_folders(root: Path) -> set[str]:
    return set(store._read_listings(str(root / STATE_DIR)))


@pytest.fixture
def settled_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders count as settled at once (the tests wait a tick between changes instead)."""
    monkeypatch.setattr(store, "SETTLED_NS", 0)


def test_kept_listings_follow_every_change(tmp_path: Path, settled_now: None) -> None:
    root = tmp_path / "out"
    expected = make_out(root)
    others, missing = both(root, expected)
    assert others == ["dists/stable/Release", "index.json", "simple/a/index.html",
                      "simple/b/index.html"]
    assert missing == {"blobs/sha256/12/34/1234"}
    assert "" in listed_folders(root) and "blobs/sha256/ab/cd" in listed_folders(root)
    assert not any(f.startswith(STATE_DIR) for f in listed_folders(root))

    changes = [
        lambda: (root / "simple/a/stray.tmp").write_text("x"),  # a file added
        lambda: (root / "simple/b/index.html").unlink(),  # a file removed
        lambda: (root / "blobs/sha256/12/34").mkdir(parents=True),  # folders added
        lambda: (root / "blobs/sha256/12/34/1234").write_text("back"),  # the missing blob
        lambda: shutil.rmtree(root / "simple/a"),  # a folder removed, files and all
        lambda: os.replace(root / "index.json", root / "dists/index.json"),  # moved
        lambda: (root / "dists/stable/Release").unlink()
        or (root / "dists/stable/Release").mkdir(),  # a file became a folder
        lambda: (root / "dists/link").symlink_to(root / "blobs"),  # a link to a folder
    ]
    for change in changes:
        time.sleep(TICK)
        change()
        time.sleep(TICK)
        both(root, expected)
    others, missing = both(root, expected)
    assert others == ["dists/index.json"]  # a link to a folder is neither (as os.walk)
    assert missing == set()


def test_unchanged_folders_are_not_listed_again(tmp_path: Path, settled_now: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "out"
    expected = make_out(root)
    survey(str(root), expected, keep_listings=True)
    time.sleep(TICK)
    (root / "simple/a/new").write_text("x")
    listed: list[str] = []
    real = store._list_folder

    def counting(root_: str, folder: str, skip: str) -> tuple[list[str], list[str]] | None:
        listed.append(folder)
        return real(root_, folder, skip)

    monkeypatch.setattr(store, "_list_folder", counting)
    others, _ = survey(str(root), expected, keep_listings=True)
    assert listed == ["simple/a"]
    assert "simple/a/new" in others


def test_a_folder_changed_just_now_is_not_recorded(tmp_path: Path) -> None:
    root = tmp_path / "out"
    expected = make_out(root)  # every folder was just made: none has settled
    survey(str(root), expected, keep_listings=True)
    assert listed_folders(root) == set()
    # settled since: then recorded
    future = time.time_ns() + 5 * store.SETTLED_NS
    real_ns = time.time_ns
    try:
        time.time_ns = lambda: future  # type: ignore[assignment]
        survey(str(root), expected, keep_listings=True)
    finally:
        time.time_ns = real_ns  # type: ignore[assignment]
    assert "blobs/sha256/ab/cd" in listed_folders(root)


@pytest.mark.parametrize("damage", [b"", b"junk", b"\x00" * 40, "odd-entries", "escaping"])
def test_a_damaged_record_means_a_full_walk(tmp_path: Path, settled_now: None,
                                            damage: bytes | str) -> None:
    import marshal

    root = tmp_path / "out"
    expected = make_out(root)
    full = survey(str(root), expected)
    record = root / STATE_DIR / SURVEY_FILE
    if damage == "escaping":  # the right stamps, but names that reach out of OUT
        for folder, names in (("", "../outside\0index.json"), ("dists", "a/../../x"),
                              ("simple", "ok\0\0"), ("blobs", "..")):
            st = os.stat(root / folder)
            record.write_bytes(marshal.dumps((store._SURVEY_FORMAT, {
                folder: (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, names, "")})))
            got = survey(str(root), expected, keep_listings=True)
            assert sorted(got[0]) == sorted(full[0]) and got[1] == full[1], names
        return
    if damage == "odd-entries":  # the right format, entries of the wrong shapes
        st = os.stat(root)
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        record.write_bytes(marshal.dumps((store._SURVEY_FORMAT, {
            "": (*stamp, ["index.json"], ""), "dists": (1, 2), "simple": None,
            "blobs": (*stamp, "", None)})))
    else:
        assert isinstance(damage, bytes)
        record.write_bytes(damage)
    got = survey(str(root), expected, keep_listings=True)
    assert sorted(got[0]) == sorted(full[0]) and got[1] == full[1]


def test_random_changes_between_walks(tmp_path: Path, settled_now: None) -> None:
    rng = random.Random(7)
    root = tmp_path / "out"
    expected = make_out(root)
    paths = [f"d{i}/e{j}/f{k}" for i in range(4) for j in range(3) for k in range(3)]
    for _round in range(12):
        for _ in range(4):
            rel = rng.choice(paths)
            target = root / rel
            if target.exists():
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(rel)
        if rng.random() < 0.3:
            victim = root / f"d{rng.randrange(4)}"
            shutil.rmtree(victim, ignore_errors=True)
        time.sleep(TICK)
        both(root, expected + paths[:5])


@pytest.mark.parametrize("workers", ["0", "2", "ahead"],
                         ids=["in-process", "worker-processes", "scan-child"])
def test_builds_with_kept_listings_still_restore_and_prune(
        tmp_path: Path, settled_now: None, monkeypatch: pytest.MonkeyPatch,
        workers: str) -> None:
    """Through whole builds whose walk of OUT uses the kept listings: a blob deleted by hand
    is put back and files dropped into OUT (a blob's folder among them) are pruned, exactly
    as with a full walk. "ahead": OUT walked by the child that walked SOURCE, as the command
    line has it (repobuild.scan.ScanAhead)."""
    import repobuild.build as rb
    from repobuild.config import Config
    from repobuild.scan import ScanAhead
    from tests.clients import DEMO_KEYS, FIXTURES

    monkeypatch.setenv("REPOBUILD_WORKERS", "2" if workers == "ahead" else workers)
    if workers == "ahead":  # the child's walk is the one used: none in this process
        def no_walk_here(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("OUT walked in the build's process, not by the child")
        monkeypatch.setattr(rb, "survey", no_walk_here)
    src = shutil.copytree(FIXTURES, tmp_path / "release")
    out = tmp_path / "out"

    def build() -> rb.BuildResult:
        ahead = ScanAhead(src, exclude=out, out=out) if workers == "ahead" else None
        try:
            return rb.build(src, out, DEMO_KEYS, Config(), scanned=ahead)
        finally:
            if ahead is not None:
                ahead.close()

    build()
    time.sleep(TICK)
    build()  # the first walk: every folder recorded
    assert any(f.startswith("blobs/sha256/") for f in listed_folders(out))
    index = json.loads((out / "index.json").read_bytes())
    blob = next(a["blob"] for a in index["artifacts"] if a["kind"] == "deb")
    data = (out / blob).read_bytes()
    time.sleep(TICK)
    (out / blob).unlink()
    strays = [f"{blob}.stray", "stray.txt", "simple/stray.html"]
    for rel in strays:
        (out / rel).write_text("stray")
    time.sleep(TICK)
    result = build()
    assert (out / blob).read_bytes() == data
    assert not any((out / rel).exists() for rel in strays)
    assert result.removed == len(strays)
    time.sleep(TICK)
    again = build()
    assert again.removed == 0 and again.new_blobs == 0
