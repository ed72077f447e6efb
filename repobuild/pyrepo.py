"""Assemble ``simple/``: the PEP 503 root and project pages, each with its PEP 691 JSON twin."""

from __future__ import annotations

from collections.abc import Iterator

from repobuild.formats.simple import project_files, render_project, render_root
from repobuild.model import Artifact


def build_simple(dists: list[Artifact]) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every page, one at a time, so that pages need not all be held."""
    projects = project_files(dists)
    root_html, root_json = render_root(list(projects))
    yield "simple/index.html", root_html
    yield "simple/index.json", root_json
    for name, files in projects.items():
        html, data = render_project(name, files)
        yield f"simple/{name}/index.html", html
        yield f"simple/{name}/index.json", data
