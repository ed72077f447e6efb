"""Assemble ``simple/``: the PEP 503 root and project pages, each with its PEP 691 JSON twin."""

from __future__ import annotations

import hashlib

from repobuild.formats.simple import SimpleFile, render_project
from repobuild.store import write_aside

Project = tuple[str, list[SimpleFile]]
#: (path, size, sha256, where it was staged: see repobuild.store.write_aside)
Staged = tuple[str, int, str, str | None]


def stage_project_pages(root: str, projects: list[Project]) -> list[Staged]:
    """Render the pages of these projects and write them aside in OUT (run in a worker
    process, so that pages are rendered and written in parallel with the rest of a build)."""
    pages: list[tuple[str, bytes | bytearray]] = []
    for name, files in projects:
        html, data = render_project(name, files)
        pages.append((f"simple/{name}/index.html", html))
        pages.append((f"simple/{name}/index.json", data))
    where = dict(write_aside(root, pages))
    return [(rel, len(data), hashlib.sha256(data).hexdigest(), where[rel]) for rel, data in pages]
