"""A rebuild renders only the project pages that would change (repobuild.pyrepo).

Each project's pages are recorded in OUT/.repobuild/pages.bin with a key over what they are
rendered from; an unchanged project is not rendered again, but only when both its pages in OUT
still hash to what was recorded. A page edited in OUT (even keeping its size), a page removed
from OUT, a new file of the project or a record made by another renderer: each renders again,
and the tree comes out as a build from scratch makes it.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import repobuild.build as rb
import repobuild.pyrepo as pyrepo
from repobuild.config import Config
from tests.clients import DEMO_KEYS, FIXTURES, fixture_generator, repobuild, snapshot

mr = fixture_generator()


def simple_pages(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted((out / "simple").rglob("*")) if p.is_file()}


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The projects whose pages are rendered (the builds run in this process)."""
    monkeypatch.setenv("REPOBUILD_WORKERS", "0")
    # one clock for every build, so that a build from scratch gives the same upload times
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(time.time())))
    names: list[str] = []
    real = pyrepo.render_project

    def counting(name: str, files: list[pyrepo.SimpleFile]) -> tuple[bytes, bytes]:
        names.append(name)
        return real(name, files)

    monkeypatch.setattr(pyrepo, "render_project", counting)
    return names


def test_rebuild_renders_only_what_changed_and_never_trusts_a_page_in_out(
    tmp_path: Path, rendered: list[str]
) -> None:
    src = shutil.copytree(FIXTURES, tmp_path / "src")
    out = tmp_path / "out"
    rb.build(src, out, DEMO_KEYS, Config())
    projects = sorted(rendered)
    assert len(projects) >= 3
    recorded = pyrepo.load_known(out / ".repobuild", pyrepo.renderer_version())
    assert sorted(recorded) == projects
    good = simple_pages(out)

    rendered.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert rendered == [], "an unchanged rebuild rendered pages again"
    assert simple_pages(out) == good

    # edited in OUT with its size kept: the record is not trusted, the page is put right
    page = out / "simple" / projects[0] / "index.html"
    data = page.read_bytes()
    page.write_bytes(data.replace(b"<", b"(", 1))
    assert len(page.read_bytes()) == len(data)
    rendered.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert rendered == [projects[0]]
    assert simple_pages(out) == good

    # removed from OUT
    (out / "simple" / projects[1] / "index.json").unlink()
    rendered.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert rendered == [projects[1]]
    assert simple_pages(out) == good

    # a new file of one project: that project only (and a new project)
    mr.make_wheel(src / "python", projects[2], "9.9.9")
    mr.make_wheel(src / "python", "rbdemo-brand-new", "1.0.0")
    rendered.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert sorted(rendered) == sorted([projects[2], "rbdemo-brand-new"])
    assert b"9.9.9" in (out / "simple" / projects[2] / "index.json").read_bytes()

    # a record made by another renderer (a new template, a new repobuild): all rendered
    record = out / ".repobuild" / pyrepo.PAGES_FILE
    known = pyrepo.load_known(out / ".repobuild", pyrepo.renderer_version())
    assert len(known) == len(projects) + 1
    other = pyrepo.KnownWriter(tmp_path / "other.tmp", "0" * 64)
    other.add_entries(pyrepo.record_entries(known.items()))
    other.land(out / ".repobuild")
    after_new = simple_pages(out)
    rendered.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert sorted(rendered) == sorted([*projects, "rbdemo-brand-new"])
    assert simple_pages(out) == after_new

    # a broken record: all rendered, nothing lost
    record.write_text("{not json")
    rendered.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert len(rendered) == len(projects) + 1
    assert simple_pages(out) == after_new

    # the tree is the one a build from scratch makes, and verifies
    fresh = tmp_path / "fresh"
    rb.build(src, fresh, DEMO_KEYS, Config())
    assert simple_pages(fresh) == after_new
    proc = repobuild("verify", out, "--trust", DEMO_KEYS / "trust.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert snapshot(out)  # still a tree


def test_recorded_pages_cover_the_same_key_only(tmp_path: Path) -> None:
    files = [pyrepo.SimpleFile("a-1.0-py3-none-any.whl", "../../blobs/x", "0" * 64, 10,
                               "2026-01-01T00:00:00Z", None, None, None, "1.0")]
    r = pyrepo.renderer_version()
    key = pyrepo.project_key(r, "a", files)
    assert key == pyrepo.project_key(r, "a", list(files))
    changed = [pyrepo.SimpleFile(*(getattr(files[0], f) for f in (
        "filename", "url", "sha256", "size", "upload_time")), None, "", None, "1.0")]
    assert pyrepo.project_key(r, "a", changed) != key, "yanking must change the key"
    assert pyrepo.project_key(r, "b", files) != key
    assert pyrepo.project_key("1" * 64, "a", files) != key
    # the key of the files' plain tuples (as the workers get them) is the same, and is over
    # every field, in order, in marshal's format 2
    assert pyrepo.project_key(r, "a", [tuple(f) for f in files]) == key
    fields = [(f.filename, f.url, f.sha256, f.size, f.upload_time, f.requires_python,
               f.yanked, f.metadata_sha256, f.version) for f in files]
    assert key == hashlib.sha256(r.encode() + b"\0" + marshal.dumps(("a", fields), 2)).hexdigest()
    # whatever objects are shared: the same key for the same values, in another process too
    shared = "0" * 64
    twice = [pyrepo.SimpleFile("a-1.0-py3-none-any.whl", "../../blobs/x", shared, 10,
                               "2026-01-01T00:00:00Z", None, None, shared, "1.0")]
    apart = [pyrepo.SimpleFile("a-1.0-py3-none-any.whl", "../../blobs/x", "0" * 64, 10,
                               "2026-01-01T00:00:00Z", None, None, "".join(["0"] * 64), "1.0")]
    assert pyrepo.project_key(r, "a", twice) == pyrepo.project_key(r, "a", apart)
    there = subprocess.run(
        [sys.executable, "-c", "import sys; from repobuild import pyrepo; print(pyrepo."
         "project_key(sys.argv[1], 'a', [('a-1.0-py3-none-any.whl', '../../blobs/x', '0' * 64, "
         "10, '2026-01-01T00:00:00Z', None, None, None, '1.0')]))", r],
        capture_output=True, text=True, check=True).stdout.strip()
    assert there == key


def test_packed_projects_stage_the_same_pages(tmp_path: Path) -> None:
    """What the workers get (marshal of plain tuples) renders and records the same pages as
    the projects themselves, rendered or taken from the record."""
    files = [pyrepo.SimpleFile(f"a-{v}-py3-none-any.whl", f"../../blobs/{v}", f"{v}" * 64, 10,
                               "2026-01-01T00:00:00Z", ">=3.9" if v == 1 else None,
                               "bad" if v == 2 else None, "e" * 64 if v == 3 else None,
                               f"{v}.0") for v in (1, 2, 3)]
    projects = [("a", files), ("b", files[:1])]
    r = pyrepo.renderer_version()
    for out, stage in (
        (tmp_path / "plain", lambda root: pyrepo.stage_project_pages(root, projects, None, r)),
        (tmp_path / "packed", lambda root: pyrepo.stage_packed_pages(
            root, pyrepo.pack_projects(projects), None, r)),
    ):
        (out / ".repobuild" / "tmp").mkdir(parents=True)
        for shard in "0123456789abcdef":
            (out / ".repobuild" / "tmp" / shard).mkdir()
        record, rows = stage(str(out))
        assert [row[0] for row in rows] == ["a", "b"]
        writer = pyrepo.KnownWriter(out / "record.tmp", r)
        writer.add_entries(record)
        writer.land(out / ".repobuild")
    pages = simple_pages(tmp_path / "plain")
    assert sorted(pages) == ["simple/a/index.html", "simple/a/index.json",
                             "simple/b/index.html", "simple/b/index.json"]
    assert pages == simple_pages(tmp_path / "packed")
    assert (pyrepo.load_known(tmp_path / "plain" / ".repobuild", r)
            == pyrepo.load_known(tmp_path / "packed" / ".repobuild", r))


def test_a_page_is_read_once_then_known_by_its_stamp_and_any_write_shows(
    tmp_path: Path, rendered: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build after the one that wrote a page reads and hashes it, and records its stamp
    (size, mtime, ctime, inode); the builds after that read no page. A page edited with its
    size and mtime put back still changes its ctime: it is read again and put right."""
    reads: list[str] = []
    real = pyrepo.hash_file

    def counting(path: str, **kw: bool) -> object:
        reads.append(path)
        return real(path, **kw)

    monkeypatch.setattr(pyrepo, "hash_file", counting)
    src = shutil.copytree(FIXTURES, tmp_path / "src")
    out = tmp_path / "out"
    rb.build(src, out, DEMO_KEYS, Config())
    projects = sorted(rendered)
    good = simple_pages(out)
    rb.build(src, out, DEMO_KEYS, Config())
    assert len(reads) == 2 * len(projects)  # each page hashed once, then stamped
    reads.clear()
    rendered.clear()
    rb.build(src, out, DEMO_KEYS, Config())
    assert reads == [] and rendered == []

    page = out / "simple" / projects[0] / "index.json"
    st = page.stat()
    data = page.read_bytes()
    page.write_bytes(data.replace(b"{", b"[", 1))
    os.utime(page, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (page.stat().st_size, page.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    rb.build(src, out, DEMO_KEYS, Config())
    assert reads == [str(page)] and rendered == [projects[0]]
    assert simple_pages(out) == good


def test_the_record_reads_back_what_was_added(tmp_path: Path) -> None:
    """Batches of entries written as they come in are read back exactly; a record cut short,
    of another renderer or of no entries at all is no record. An entry of the wrong shape is
    never used (it is checked where it is used, by the worker whose batch holds it): its
    project is rendered again. A record of the earlier format (pages.json) is removed when the
    new one lands."""
    renderer = "r" * 64
    entries: dict[str, pyrepo.Known] = {
        "rbdemo-lib": ("a" * 64, 10, "b" * 64, 20, "c" * 64, [1, 2, 3, 4], [5, 6, 7, 8]),
        "new.project_2": ("d" * 64, 0, "e" * 64, 1, "f" * 64, None, None),
        'odd "Ünï"': ("1" * 64, 3, "2" * 64, 4, "3" * 64, None, [9, 10, 11, 12]),
    }
    (tmp_path / "pages.json").write_text("{}")
    writer = pyrepo.KnownWriter(tmp_path / "record.tmp", renderer)
    items = list(entries.items())
    writer.add_entries(pyrepo.record_entries(items[:1]))  # as the workers' batches come in
    writer.add_entries(pyrepo.record_entries([]))
    writer.add_entries(pyrepo.record_entries(items[1:]))
    writer.land(tmp_path)
    assert not (tmp_path / "pages.json").exists()
    assert pyrepo.load_known(tmp_path, renderer) == entries
    assert pyrepo.load_known(tmp_path, "x" * 64) == {}
    record = tmp_path / pyrepo.PAGES_FILE
    data = record.read_bytes()
    for cut in (len(data) - 1, len(data) - 30, 20, 0):
        record.write_bytes(data[:cut])
        assert pyrepo.load_known(tmp_path, renderer) == {}, cut
    odd: list[list[object]] = [
        [("p", "k", "10", "h", 1, "j", None, None)],  # a size as a string
        [("p", "k", 1, "h", 1, "j", [1, 2, 3], None)],  # a stamp of three numbers
        [("p", "k", 1, "h", 1, "j", None)],  # an entry cut short
        ["p"],
    ]
    for frame in odd:
        bad = pyrepo.KnownWriter(tmp_path / "bad.tmp", renderer)
        bad.add_entries(pyrepo.record_entries(items))
        bad.add_entries(marshal.dumps(frame))
        bad.land(tmp_path)
        known = pyrepo.load_known(tmp_path, renderer)
        assert {n: e for n, e in known.items() if pyrepo.usable(e)} == entries, frame
        assert "p" in known and not pyrepo.usable(known["p"]), frame
    for frame in ([5], 7, [None]):  # no entries at all
        bad = pyrepo.KnownWriter(tmp_path / "bad.tmp", renderer)
        bad.add_entries(pyrepo.record_entries(items))
        bad.add_entries(marshal.dumps(frame))
        bad.land(tmp_path)
        assert pyrepo.load_known(tmp_path, renderer) == {}, frame


def test_a_recorded_entry_of_the_wrong_shape_means_the_pages_are_rendered(
        tmp_path: Path, rendered: list[str]) -> None:
    """The record names the project under its very key, but a field has the wrong type: the
    worker does not take the entry, it renders the pages again."""
    files = [pyrepo.SimpleFile("a-1-py3-none-any.whl", "../../blobs/1", "1" * 64, 10,
                               "2026-01-01T00:00:00Z", None, None, None, "1.0")]
    r = pyrepo.renderer_version()
    out = tmp_path / "out"
    for shard in "0123456789abcdef":
        (out / ".repobuild" / "tmp" / shard).mkdir(parents=True)
    record, rows = pyrepo.stage_project_pages(str(out), [("a", files)], None, r)
    entry = marshal.loads(record)[0][1:]
    assert pyrepo.usable(entry) and rendered == ["a"]
    writer = pyrepo.KnownWriter(out / "record.tmp", r)
    writer.add_entries(record)
    writer.land(out / ".repobuild")
    pyrepo.stage_project_pages(str(out), [("a", files)], str(out / ".repobuild"), r)
    pyrepo.forget_known()
    assert rendered == ["a"], "taken as it is"
    for bad in (entry[:1] + ("10",) + entry[2:], entry[:5] + ([1, 2, 3],) + entry[6:]):
        writer = pyrepo.KnownWriter(out / "record.tmp", r)
        writer.add_entries(marshal.dumps([("a", *bad)]))
        writer.land(out / ".repobuild")
        pyrepo.forget_known()
        rendered.clear()
        pyrepo.stage_project_pages(str(out), [("a", files)], str(out / ".repobuild"), r)
        assert rendered == ["a"], bad
        pyrepo.forget_known()


def test_page_batches_no_worker_started_are_done_in_the_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build takes the page batches in order; one that no worker has started by then is
    done in the build's process (its future cancelled): the same records and rows, in order,
    as the workers give."""
    from repobuild.workers import Workers

    monkeypatch.setattr(rb, "PAGE_BATCH", 1)
    projects = [(f"p{n:02d}", [pyrepo.SimpleFile(
        f"p{n:02d}-1.0-py3-none-any.whl", f"../../blobs/{n}", f"{n % 10}" * 64, 10 + n,
        "2026-01-01T00:00:00Z", None, None, None, "1.0")]) for n in range(40)]
    r = pyrepo.renderer_version()
    got = {}
    for name in ("workers", "here"):
        out = tmp_path / name
        for shard in "0123456789abcdef":
            (out / ".repobuild" / "tmp" / shard).mkdir(parents=True)
        workers = Workers(2 if name == "workers" else 0)
        here: list[int] = []
        real = rb._PageJobs._here

        def counted(self: Any, batch: Any, real: Any = real, here: list[int] = here) -> Any:
            here.append(len(batch))
            return real(self, batch)

        monkeypatch.setattr(rb._PageJobs, "_here", counted)
        try:
            jobs = rb._PageJobs(str(out), workers, projects, r)
            first = jobs._jobs[0]
            deadline = time.monotonic() + 30
            while (isinstance(first, Future) and not (first.running() or first.done())
                   and time.monotonic() < deadline):
                time.sleep(0.001)  # a worker has the first batch: it is the workers' to do
            results = jobs.results()
        finally:
            workers.close()
        if name == "workers":
            assert here, "the batches no worker had started were done here"
            assert len(here) < len(projects), "and the workers did the others"
        got[name] = [(marshal.loads(record), [row[:3] + row[4:6] for row in rows])
                     for record, rows in results]
    assert got["workers"] == got["here"]
    assert [rows[0][0] for _record, rows in got["here"]] == [name for name, _ in projects]


def test_no_batch_is_done_in_the_build_beyond_steal_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More batches than STEAL_BATCHES (a large tree, whose page record would weigh on the
    build's peak memory): every one is the workers'."""
    from repobuild.workers import Workers

    monkeypatch.setattr(rb, "PAGE_BATCH", 1)
    monkeypatch.setattr(rb, "STEAL_BATCHES", 10)
    projects = [(f"p{n:02d}", [pyrepo.SimpleFile(
        f"p{n:02d}-1.0-py3-none-any.whl", f"../../blobs/{n}", f"{n % 10}" * 64, 10 + n,
        "2026-01-01T00:00:00Z", None, None, None, "1.0")]) for n in range(40)]
    out = tmp_path / "out"
    for shard in "0123456789abcdef":
        (out / ".repobuild" / "tmp" / shard).mkdir(parents=True)
    here: list[int] = []
    real = rb._PageJobs._here

    def counted(self: Any, batch: Any) -> Any:
        here.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(rb._PageJobs, "_here", counted)
    workers = Workers(2)
    try:
        results = rb._PageJobs(str(out), workers, projects, pyrepo.renderer_version()).results()
    finally:
        workers.close()
    assert here == [] and [rows[0][0] for _r, rows in results] == [n for n, _ in projects]


def test_quoted_is_urllib_quote() -> None:
    """The project pages' links skip quote() for a path it would leave as it is, and give
    what it gives for every other (a "+" of a local version, a space, non-ASCII)."""
    from urllib.parse import quote

    from repobuild.formats.simple import quoted

    for code in range(0x250):
        for path in (chr(code), f"blobs/sha256/ab/{chr(code)}x-1.0.whl", chr(code) * 2):
            assert quoted(path) == quote(path), repr(path)
    assert quoted("blobs/a/x-1.0+cpu-py3-none-any.whl").endswith("1.0%2Bcpu-py3-none-any.whl")
