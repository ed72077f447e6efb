"""The jinja2 environment over templates/ (shipped inside the wheel as repobuild/templates)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import cache
from itertools import chain, islice
from operator import attrgetter
from pathlib import Path
from string import Formatter
from typing import Any

import jinja2
from markupsafe import Markup, escape


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
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # a stat() per page otherwise: 100,000 of them at scale
    )
    env.filters["rows"] = rows
    return env


_ROWS_AT_ONCE = 4096
_PLAIN = {str, int}  # values escaped together; anything else (Markup, say) one by one


def rows(items: Iterable[Any], row: str) -> Markup:
    """A table's rows, one per line: ``row`` is a ``str.format`` string naming attributes of
    an item (``<tr><td>{name}</td></tr>``, or ``{deb.package}`` through an attribute, or
    ``{}``, the item itself, as the row's only field), and each value is escaped as
    autoescaping escapes it, so ``{{ items|rows(row) }}`` gives what a ``{% for %}`` loop over
    ``row`` gives. A loop escapes each value on its own and passes each
    piece through the template's generator: ~10 x as slow for the landing page's 10,000 rows.
    Here the values of a few thousand rows are taken (attrgetter), checked, escaped (joined by
    NUL, which escaping leaves as it is) and put in their rows without a Python call per
    value."""
    names: list[str] = []
    parts: list[str] = []
    for literal, name, spec, conversion in Formatter().parse(row):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if spec or conversion or not (name == "" or all(
                part.isidentifier() for part in name.split("."))):
            raise ValueError(f"rows: only plain {{attribute}} fields, not {{{name}}}")
        if name not in names:
            names.append(name)
        parts.append(f"{{{names.index(name)}}}")
    line = "".join(parts)
    width = len(names)
    if not width:
        raise ValueError("rows: the row names no attribute")
    get: Callable[[Any], tuple[Any, ...]] | None = None  # None: {}, the item itself
    if names != [""]:
        if "" in names:
            raise ValueError("rows: {} (the item itself) is the row's only field")
        one = attrgetter(names[0])
        get = attrgetter(*names) if width > 1 else (lambda item: (one(item),))
    out: list[str] = []
    it = iter(items)
    while batch := list(islice(it, _ROWS_AT_ONCE)):
        values = batch if get is None else list(chain.from_iterable(map(get, batch)))
        if set(map(type, values)) <= _PLAIN:
            texts = list(map(str, values))
            escaped = str(escape("\0".join(texts))).split("\0")
            if len(escaped) != len(texts):  # a NUL of its own
                escaped = [str(escape(text)) for text in texts]
        else:
            escaped = [str(escape(value)) for value in values]
        out.extend(map(line.format, *(escaped[column::width] for column in range(width))))
    return Markup("\n".join(out))


def keep_compiled(folder: str | None) -> None:
    """Keep compiled templates in ``folder`` (a build's local state) from now on, or no longer
    (None): compiling the landing page's template took ~7 ms at every build. jinja checks a kept
    template against its source and its own and Python's versions before using it."""
    env = environment()
    env.bytecode_cache = None
    if folder is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # only a cache: templates are compiled as they are needed
    env.bytecode_cache = jinja2.FileSystemBytecodeCache(folder)


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
