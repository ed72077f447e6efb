"""The jinja2 environment over templates/ (shipped inside the wheel as repobuild/templates)."""

from __future__ import annotations

from functools import cache
from itertools import islice
from pathlib import Path

import jinja2


def _template_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("repobuild's templates folder is missing from the installation")


def template_path(name: str) -> Path:
    return _template_dir() / name


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # a stat() per page otherwise: 100,000 of them at scale
    )


def render(template: str, **context: object) -> bytes:
    return environment().get_template(template).render(**context).encode("utf-8")


def render_large(template: str, **context: object) -> bytes:
    """:func:`render` for pages of 100,000 rows: the pieces joined and encoded a few thousand at
    a time into one buffer, instead of joining a list of every piece (~50 MB of small strings
    at that size) into a string and then encoding that. A piece at a time took ~40 % longer
    for a 10,000-row table (0.030 s against 0.021 s, which is what ``render`` takes)."""
    out = bytearray()
    pieces = environment().get_template(template).generate(**context)
    while batch := list(islice(pieces, _BATCH)):  # (a piece can be "": the list decides)
        out += "".join(batch).encode("utf-8")
    return bytes(out)


_BATCH = 4096  # pieces joined at once
