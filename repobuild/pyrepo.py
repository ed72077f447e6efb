"""Assemble ``simple/``: the PEP 503 root and project pages, each with its PEP 691 JSON twin.

A rebuild renders only the projects whose pages would change: each page pair is recorded in
``OUT/.repobuild/pages.json`` with a key over everything it is rendered from (the project's
files, the templates and the rendering code) and the SHA-256 of both pages. A project whose key
is unchanged and whose two pages in OUT still hash to what was recorded is not rendered again;
anything else (a new file, a changed template, a page edited or removed in OUT) renders it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jinja2

from repobuild import __version__
from repobuild.formats import simple
from repobuild.formats.simple import SimpleFile, render_project
from repobuild.store import write_aside
from repobuild.templating import template_path

Project = tuple[str, list[SimpleFile]]
#: (path, size, sha256, where it was staged: see repobuild.store.write_aside)
Staged = tuple[str, int, str, str | None]
#: a project's pages as rendered: (key, html size, html sha256, json size, json sha256)
Known = tuple[str, int, str, int, str]
PAGES_FILE = "pages.json"
_FORMAT = 1


def renderer_version() -> str:
    """What else than a project's files a page depends on: the template, the code rendering it,
    jinja2's version and repobuild's."""
    h = hashlib.sha256(f"{__version__}\0{jinja2.__version__}\0".encode())
    for path in (template_path("simple_project.html.j2"), Path(simple.__file__),
                 Path(simple.canonical.__code__.co_filename)):
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def project_key(renderer: str, name: str, files: list[SimpleFile]) -> str:
    h = hashlib.sha256(f"{renderer}\x1e{name}".encode())
    for f in files:
        h.update("\x1e".join((
            f.filename, f.url, f.sha256, str(f.size), f.upload_time,
            _opt(f.requires_python), _opt(f.yanked), _opt(f.metadata_sha256), f.version,
        )).encode())
        h.update(b"\x1d")
    return h.hexdigest()


def _opt(value: str | None) -> str:
    return "\x00" if value is None else "\x01" + value


def stage_project_pages(
    root: str, projects: list[Project], known: dict[str, Known] | None = None,
    renderer: str = "",
) -> tuple[list[Staged], list[tuple[str, Known]]]:
    """Render the pages of these projects and write them aside in OUT (run in a worker
    process, so that pages are rendered and written in parallel with the rest of a build).
    A project in ``known`` under the same key, whose pages in OUT are the ones recorded, is
    taken as it is. Returns the staged pages and what to record for each project."""
    pages: list[tuple[str, bytes | bytearray]] = []
    staged: list[Staged] = []
    rows: list[tuple[str, Known]] = []
    for name, files in projects:
        key = project_key(renderer, name, files) if renderer else ""
        html_rel, json_rel = f"simple/{name}/index.html", f"simple/{name}/index.json"
        hit = known.get(name) if known else None
        if hit is not None and hit[0] == key and key and (
            _holds(f"{root}/{html_rel}", hit[1], hit[2])
            and _holds(f"{root}/{json_rel}", hit[3], hit[4])
        ):
            staged.append((html_rel, hit[1], hit[2], None))
            staged.append((json_rel, hit[3], hit[4], None))
            rows.append((name, hit))
            continue
        html, data = render_project(name, files)
        pages.append((html_rel, html))
        pages.append((json_rel, data))
        html_sha, json_sha = hashlib.sha256(html).hexdigest(), hashlib.sha256(data).hexdigest()
        staged.append((html_rel, len(html), html_sha, ""))
        staged.append((json_rel, len(data), json_sha, ""))
        rows.append((name, (key, len(html), html_sha, len(data), json_sha)))
    where = dict(write_aside(root, pages))
    return [(rel, size, digest, where[rel] if spot == "" else spot)
            for rel, size, digest, spot in staged], rows


def _holds(path: str, size: int, sha256: str) -> bool:
    """Whether ``path`` holds ``size`` bytes with this SHA-256 (read, not trusted by stat)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != size:
            return False
        data = os.read(fd, size + 1)
    except OSError:
        return False
    finally:
        os.close(fd)
    return len(data) == size and hashlib.sha256(data).hexdigest() == sha256


def load_known(state: Path, renderer: str) -> dict[str, Known]:
    """The last build's record of its pages; empty when missing, unreadable or made by another
    renderer (then every page is rendered, as on a first build)."""
    try:
        doc = json.loads((state / PAGES_FILE).read_bytes())
        if doc.get("format") != _FORMAT or doc.get("renderer") != renderer:
            return {}
        known: dict[str, Known] = {}
        for name, (key, hs, hh, js, jh) in doc["projects"].items():
            if not (isinstance(key, str) and isinstance(hs, int) and isinstance(hh, str)
                    and isinstance(js, int) and isinstance(jh, str)):
                return {}
            known[name] = (key, hs, hh, js, jh)
        return known
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def save_known(state: Path, tmp: Path, renderer: str, rows: list[tuple[str, Known]]) -> None:
    """Record this build's pages (written aside, then renamed over the last record)."""
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f'{{"format":{_FORMAT},"renderer":{dumps(renderer)},"projects":{{')
        for n, (name, row) in enumerate(sorted(rows)):
            fh.write(f'{"," if n else ""}{dumps(name)}:{dumps(list(row))}')
        fh.write("}}")
    os.replace(tmp, state / PAGES_FILE)
