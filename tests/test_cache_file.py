"""The build cache's file (OUT/.repobuild/cache.bin): a build that changed a few entries
appends them, and a dropped entry is appended as None; what is read back is always what the
last build vouched for, whether the file was appended to, cut short by a killed append, of the
earlier format, or written anew."""

from __future__ import annotations

import marshal
from pathlib import Path

from repobuild import cache as cache_mod
from repobuild.cache import CACHE_FILE, BuildCache, Stamp, read_entries
from repobuild.model import Artifact
from repobuild.scan import SourceFile


def art(i: int) -> Artifact:
    return Artifact(f"files/f{i:05d}.txt", f"f{i:05d}.txt", "file", 100 + i, f"{i:064x}")


def stamp(i: int, generation: int = 0) -> Stamp:
    return Stamp(100 + i, 1_000 + i + generation, 2_000 + i + generation, 3_000 + i)


def first(state: Path, count: int) -> None:
    c = BuildCache(state)
    for i in range(count):
        c.record(art(i), stamp(i), None)
    c.save(state / "tmp")


def rebuild(state: Path, present: range, changed: set[int], generation: int) -> BuildCache:
    """A build that looks up ``present`` and finds ``changed`` (and any not cached) new."""
    c = BuildCache(state)
    arts = {i: (art(i), stamp(i, generation if i in changed else 0)) for i in present}
    files = [SourceFile(a.path, a.path, st.size, st.mtime_ns, st.inode, st.ctime_ns)
             for a, st in arts.values()]
    for (a, st), found in zip(arts.values(), c.lookup_all(files, sha512=False), strict=True):
        if found is None:
            c.record(a, st, None)
    c.save(state / "tmp")
    return c


def vouched(state: Path) -> dict[str, list[int]]:
    entries = read_entries((state / CACHE_FILE).read_bytes())
    return {rel: entry[:4] for rel, entry in entries.items()}


def expected(present: range, changed: dict[int, int]) -> dict[str, list[int]]:
    out = {}
    for i in present:
        st = stamp(i, changed.get(i, 0))
        out[art(i).path] = [st.size, st.mtime_ns, st.ctime_ns, st.inode]
    return out


def test_a_few_changes_are_appended_and_read_back(tmp_path: Path) -> None:
    first(tmp_path, 3000)
    before = (tmp_path / CACHE_FILE).read_bytes()
    # file 7 changed, 3000 and 3001 are new, 2999 is gone
    rebuild(tmp_path, range(0, 2999), {7}, 1)
    rebuild(tmp_path, range(0, 3002), {7}, 1)
    after = (tmp_path / CACHE_FILE).read_bytes()
    assert after.startswith(before) and len(after) < len(before) + 2000, "appended, not rewritten"
    assert vouched(tmp_path) == expected(range(0, 3002), {7: 1})
    # and the appended file is used as such: an unchanged rebuild reads no file
    c = rebuild(tmp_path, range(0, 3002), {7}, 1)
    assert c.loaded_unchanged()
    assert (tmp_path / CACHE_FILE).read_bytes() == after


def test_an_append_cut_short_is_left_out_and_the_file_written_anew(tmp_path: Path) -> None:
    first(tmp_path, 2000)
    whole = (tmp_path / CACHE_FILE).read_bytes()
    rebuild(tmp_path, range(0, 2000), {5, 6}, 1)
    appended = (tmp_path / CACHE_FILE).read_bytes()
    (tmp_path / CACHE_FILE).write_bytes(appended[:len(whole) + 7])  # killed mid-append
    assert vouched(tmp_path) == expected(range(0, 2000), {})  # what came before it stands
    c = rebuild(tmp_path, range(0, 2000), {5, 6}, 1)  # 5 and 6 are read again
    assert c.fresh.keys() == {art(i).path for i in range(2000)}
    data = (tmp_path / CACHE_FILE).read_bytes()
    assert not data.startswith(appended[:len(whole) + 7]), "written anew"
    assert vouched(tmp_path) == expected(range(0, 2000), {5: 1, 6: 1})
    assert cache_mod._read(data)[2], "whole"


def test_many_changes_write_the_file_anew(tmp_path: Path) -> None:
    first(tmp_path, 2000)
    sizes: list[int] = []
    for generation in range(1, 8):  # a fifth of the files changes at each build, and the
        # fifth before changes back
        changed = set(range(generation * 100, generation * 100 + 400))
        rebuild(tmp_path, range(0, 2000), changed, generation)
        entries, written, whole = cache_mod._read((tmp_path / CACHE_FILE).read_bytes())
        assert whole and written <= 2 * 2000 + cache_mod._SLACK
        sizes.append(written)
    assert any(b < a for a, b in zip(sizes, sizes[1:], strict=False)), f"never anew: {sizes}"
    # each build finds its own changed files new and the others back as they first were
    assert vouched(tmp_path) == expected(range(2000), dict.fromkeys(range(700, 1100), 7))


def test_the_earlier_format_is_read_and_written_anew(tmp_path: Path) -> None:
    first(tmp_path, 50)
    data = (tmp_path / CACHE_FILE).read_bytes()
    old = data.replace(b"repobuild-cache\n6 ", b"repobuild-cache\n5 ", 1)
    assert old != data
    (tmp_path / CACHE_FILE).write_bytes(old)
    assert vouched(tmp_path) == expected(range(50), {})
    rebuild(tmp_path, range(0, 51), set(), 0)
    data = (tmp_path / CACHE_FILE).read_bytes()
    assert data.startswith(b"repobuild-cache\n6 ")
    assert vouched(tmp_path) == expected(range(51), {})


def test_an_entry_of_none_drops_it(tmp_path: Path) -> None:
    first(tmp_path, 10)
    with open(tmp_path / CACHE_FILE, "ab") as fh:
        frame = marshal.dumps([(art(3).path, None)], 4)
        fh.write(cache_mod._FRAME.pack(len(frame)) + frame)
    assert art(3).path not in vouched(tmp_path) and len(vouched(tmp_path)) == 9
