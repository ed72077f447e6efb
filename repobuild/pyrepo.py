"""Assemble ``simple/``: the PEP 503 root and project pages, each with its PEP 691 JSON twin."""

from __future__ import annotations

from repobuild.formats.simple import project_files, render_project, render_root
from repobuild.model import Artifact


def build_simple(dists: list[Artifact]) -> dict[str, bytes]:
    projects = project_files(dists)
    pages: dict[str, bytes] = {}
    root_html, root_json = render_root(list(projects))
    pages["simple/index.html"] = root_html
    pages["simple/index.json"] = root_json
    for name, files in projects.items():
        html, data = render_project(name, files)
        pages[f"simple/{name}/index.html"] = html
        pages[f"simple/{name}/index.json"] = data
    return pages
