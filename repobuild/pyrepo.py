"""Assemble ``simple/``: the PEP 503 root and project pages, each with its PEP 691 JSON twin.

A rebuild renders only the projects whose pages would change: each page pair is recorded in
``OUT/.repobuild/pages.bin`` with a key over everything it is rendered from (the project's
files, the templates and the rendering code) and the SHA-256 of both pages. A project whose key
is unchanged and whose two pages in OUT still hold what was recorded is not rendered again;
anything else (a new file, a changed template, a page edited or removed in OUT) renders it.

Whether a page still holds what was recorded is known from its bytes, read and hashed, or, once
a build has done that, from its stamp as it was then: size, mtime, ctime and inode, as the
build cache knows a SOURCE file. Any write to the page changes its ctime (which no one can set
back), and replacing it changes its inode, so a page whose stamp is the recorded one is the page
that was hashed.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jinja2

from repobuild import __version__
from repobuild.formats import simple
from repobuild.formats.simple import SimpleFile, render_project
from repobuild.sources import hash_file
from repobuild.store import write_aside
from repobuild.templating import template_path

Project = tuple[str, list[SimpleFile]]
#: a page's stamp when it was last hashed: [size, mtime_ns, ctime_ns, inode], or None
PageStamp = list[int] | None
#: a project's pages as rendered: (key, html size, html sha256, json size, json sha256, html
#: stamp, json stamp)
Known = tuple[str, int, str, int, str, PageStamp, PageStamp]
#: a project's pages as staged: (name, html size, html sha256, where the html page was staged
#: (see repobuild.store.write_aside; None: OUT holds it already), json size, json sha256, where
#: the json was staged)
PageRow = tuple[str, int, str, str | None, int, str, str | None]
PAGES_FILE = "pages.bin"
OLD_PAGES_FILES = ("pages.json",)  # earlier formats' record, removed when a record lands
#: 4: marshal frames, keys of marshal (3: keys of JSON; 2 was JSON: parsing its 1.6 MB at 5,000
#: projects took each worker ~20 ms)
_FORMAT = 4
_MAGIC = b"repobuild-pages\n%d %d\n" % (_FORMAT, marshal.version)
_FRAME = struct.Struct("<I")  # the length of the marshal data that follows


def renderer_version() -> str:
    """What else than a project's files a page depends on: the template, the code rendering it,
    jinja2's version and repobuild's."""
    h = hashlib.sha256(f"{__version__}\0{jinja2.__version__}\0".encode())
    for path in (template_path("simple_project.html.j2"), Path(simple.__file__),
                 Path(simple.canonical.__code__.co_filename)):
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def project_key(renderer: str, name: str, files: Sequence[tuple[Any, ...]]) -> str:
    """SHA-256 over the renderer and every field of the project's files (SimpleFile, or its
    plain tuple: the same fields in order), in marshal's format 2: one encoding per value and
    type, and none shared between objects (format 3 on marks objects referenced twice, which
    depends on the process), so no two different inputs encode alike. A third of the time of
    the JSON that was used before (~3 µs a project, in the workers that check the pages)."""
    return _key_maker(renderer)(name, files)


def _key_maker(renderer: str) -> Callable[[str, Sequence[tuple[Any, ...]]], str]:
    """:func:`project_key` for one renderer, the renderer's part hashed once."""
    base = hashlib.sha256(renderer.encode() + b"\0")
    dumps = marshal.dumps

    def key(name: str, files: Sequence[tuple[Any, ...]]) -> str:
        h = base.copy()
        # files as plain tuples (as marshal hands them to the workers) are dumped as they are
        # (marshal refuses anything else: a named tuple among them is no silent difference)
        plain: Any = files if type(files) is list and files and type(files[0]) is tuple else [
            tuple(f) for f in files]
        h.update(dumps((name, plain), 2))
        return h.hexdigest()

    return key


def pack_projects(projects: list[Project]) -> bytes:
    """Projects as the workers take them (:func:`stage_packed_pages`): marshal of plain
    tuples. Pickling 5,000 projects' SimpleFiles took ~15 ms of the build's process (a named
    tuple pickles through a Python method per file), and unpickling as long in the workers."""
    return marshal.dumps([(name, [tuple(f) for f in files]) for name, files in projects], 4)


def stage_packed_pages(
    root: str, packed: bytes, known_in: str | None = None, renderer: str = "",
) -> tuple[bytes, list[PageRow]]:
    """:func:`stage_project_pages` of :func:`pack_projects`'s bytes (in a worker)."""
    return stage_project_pages(root, marshal.loads(packed), known_in, renderer)


def stage_project_pages(
    root: str, projects: Sequence[tuple[str, Sequence[tuple[Any, ...]]]],
    known_in: str | None = None, renderer: str = "",
) -> tuple[bytes, list[PageRow]]:
    """Render the pages of these projects and write them aside in OUT (run in a worker
    process, so that pages are rendered and written in parallel with the rest of a build).
    A project recorded in the state folder ``known_in`` (:func:`load_known`) under the same
    key, whose pages in OUT are the ones recorded, is taken as it is. Returns these projects'
    entries for the next record (:func:`record_entries`) and one :data:`PageRow` per project:
    one tuple, since the rows of every batch can wait at once for the build to take them."""
    known = _known(known_in, renderer) if known_in and renderer else None
    find = known.get if known else None
    key_of = _key_maker(renderer) if renderer else None
    stat = os.stat
    pages: list[tuple[str, bytes | bytearray]] = []
    # the next record's entries (name, *Known) and, for each, where its pages were staged
    rows: list[tuple[str, str, int, str, int, str, PageStamp, PageStamp]] = []
    for name, files in projects:
        key = key_of(name, files) if key_of is not None else ""
        hit = find(name) if find is not None else None
        if hit is not None and usable(hit) and hit[0] == key and key:
            # a page is known from its stamp when it still has the recorded one (the usual
            # case, compared here: ~10,000 pages at every rebuild); else it is hashed
            html_rel, json_rel = page_paths(name)
            stamps: list[list[int]] = []
            for rel, size, sha256, recorded in ((html_rel, hit[1], hit[2], hit[5]),
                                                (json_rel, hit[3], hit[4], hit[6])):
                path = f"{root}/{rel}"
                try:
                    st = stat(path)
                except OSError:
                    break
                stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
                if (stamp != recorded or st.st_size != size) and _hashed(
                        path, size, sha256, stamp) is None:
                    break
                stamps.append(stamp)
            else:
                rows.append((name, key, hit[1], hit[2], hit[3], hit[4], stamps[0], stamps[1]))
                continue
        html_rel, json_rel = page_paths(name)
        html, data = render_project(name, [SimpleFile._make(f) for f in files])
        pages.append((html_rel, html))
        pages.append((json_rel, data))
        # stamped when the next build hashes them: renamed into place, they change
        rows.append((name, key, len(html), hashlib.sha256(html).hexdigest(),
                     len(data), hashlib.sha256(data).hexdigest(), None, None))
    # where each written page was staged; a page taken as it is was not written, and its
    # None says the same as write_aside's: OUT holds these bytes already
    where = dict(write_aside(root, pages)) if pages else None
    if where:
        out: list[PageRow] = []
        for name, _key, hs, hh, js, jh, _html_stamp, _json_stamp in rows:
            html_rel, json_rel = page_paths(name)
            out.append((name, hs, hh, where.get(html_rel), js, jh, where.get(json_rel)))
    else:
        out = [(name, hs, hh, None, js, jh, None)
               for name, _key, hs, hh, js, jh, _html_stamp, _json_stamp in rows]
    return marshal.dumps(rows, 4), out  # as record_entries writes them


def page_paths(name: str) -> tuple[str, str]:
    """A project's two pages in OUT."""
    return f"simple/{name}/index.html", f"simple/{name}/index.json"


def _hashed(path: str, size: int, sha256: str, before: list[int]) -> list[int] | None:
    """``before``, the page's stamp taken before this read, if ``path`` holds ``size`` bytes
    with this SHA-256 and still has that stamp after the read; None if not (a page written
    meanwhile is hashed again at the next build)."""
    found = hash_file(path)
    try:
        after = os.stat(path)
    except OSError:
        return None
    if found is None or (found.size, found.sha256) != (size, sha256):
        return None
    return before if before == [after.st_size, after.st_mtime_ns, after.st_ctime_ns,
                                after.st_ino] else None


_LOADED: dict[tuple[str, str], tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _known(state: str, renderer: str) -> dict[str, Any]:
    """:func:`load_known`, once per process for the same file (a worker is handed batch after
    batch: the record is read in the workers, never held by the build's own process, where
    50,000 projects cost ~30 MB at its peak)."""
    try:
        st = os.stat(f"{state}/{PAGES_FILE}")
    except OSError:
        return {}
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _LOADED.get((state, renderer))
    if cached is None or cached[0] != stamp:
        _LOADED.clear()
        cached = (stamp, load_known(Path(state), renderer))
        _LOADED[(state, renderer)] = cached
    return cached[1]


def forget_known() -> None:
    """Let go of the record :func:`_known` holds (a build in its own process is done with it)."""
    _LOADED.clear()


def load_known(state: Path, renderer: str) -> dict[str, Any]:
    """The last build's record of its pages; empty when missing, unreadable or made by another
    renderer (then every page is rendered, as on a first build)."""
    try:
        data = (state / PAGES_FILE).read_bytes()
    except OSError:
        return {}
    if not data.startswith(_MAGIC):
        return {}
    view = memoryview(data)
    at = len(_MAGIC)
    known: dict[str, Any] = {}
    head = True
    try:
        while at < len(data):
            (length,) = _FRAME.unpack_from(data, at)
            at += _FRAME.size
            if at + length > len(data):
                return {}
            frame = marshal.loads(view[at:at + length])
            at += length
            if head:
                if frame != renderer:
                    return {}
                head = False
                continue
            if type(frame) is not list:
                return {}
            # each entry is checked where it is used (usable): a worker uses half of them
            known.update((item[0], item[1:]) for item in frame)
    except (ValueError, EOFError, TypeError, IndexError, struct.error):
        return {}
    return {} if head else known


def usable(entry: object) -> bool:
    """Whether a recorded entry (see :func:`load_known`) has the shape of :data:`Known`."""
    if not (type(entry) is tuple and len(entry) == 7):
        return False
    key, hs, hh, js, jh, h_stamp, j_stamp = entry
    return (type(key) is str and type(hs) is int and type(hh) is str and type(js) is int
            and type(jh) is str and _is_stamp(h_stamp) and _is_stamp(j_stamp))


def _is_stamp(value: object) -> bool:
    return value is None or (type(value) is list and len(value) == 4 and type(value[0]) is int
                             and type(value[1]) is int and type(value[2]) is int
                             and type(value[3]) is int)


def record_entries(known: Iterable[tuple[str, Known]]) -> bytes:
    """Projects' entries in the record, as one frame's data: written by the workers, which
    have them at hand, not by the build's own process."""
    return marshal.dumps([(name, *entry) for name, entry in known], 4)


class KnownWriter:
    """This build's record of its pages, written to a temporary file as the page batches come
    in (50,000 projects held until the end cost ~30 MB at the build's peak), and put in place
    by :meth:`land` once the build has landed."""

    def __init__(self, tmp: Path, renderer: str) -> None:
        self._tmp = tmp
        self._fh = open(tmp, "wb")  # noqa: SIM115 - closed by land/discard
        self._fh.write(_MAGIC)
        self.add_entries(marshal.dumps(renderer, 4))

    def add_entries(self, entries: bytes) -> None:
        """A frame of entries, as :func:`record_entries` writes them."""
        self._fh.write(_FRAME.pack(len(entries)))
        self._fh.write(entries)

    def land(self, state: Path) -> None:
        self._fh.close()
        os.replace(self._tmp, state / PAGES_FILE)
        for name in OLD_PAGES_FILES:
            (state / name).unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop the record unless it has landed (then there is nothing left to drop)."""
        self._fh.close()
        self._tmp.unlink(missing_ok=True)
