"""templating: render_large gives what jinja's own render gives, the rows filter what a loop gives,
and kept compiled templates the same pages."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from repobuild import templating

TABLE = "<p>{{ title }}</p>{% for row in rows %}<td>{{ row }}</td>{{ gap }}{% endfor %}end\n"
BARE = "{% for row in rows %}{{ row }}{% endfor %}end\n"  # a piece per row and nothing else


@pytest.mark.parametrize(
    ("template", "rows", "gap"),
    [
        (TABLE, range(0), ""),
        (TABLE, range(3), ""),
        (TABLE, [f"r<{i}>é" for i in range(2 * templating._BATCH + 7)], "\n"),
        # more empty pieces in a row than render_large joins at once: not taken for the end
        (BARE, [""] * (3 * templating._BATCH), ""),
    ],
)
def test_render_large_equals_render(monkeypatch: pytest.MonkeyPatch, template: str,
                                    rows: list[str], gap: str) -> None:
    env = jinja2.Environment(loader=jinja2.DictLoader({"page.html": template}),
                             autoescape=True, keep_trailing_newline=True)
    monkeypatch.setattr(templating, "environment", lambda: env)
    want = env.get_template("page.html").render(title="T&C", rows=rows, gap=gap).encode()
    assert templating.render_large("page.html", title="T&C", rows=rows, gap=gap) == want
    assert want.endswith(b"end\n")


class _Row:
    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


ROW = '    <tr><td><a href="simple/{name}/">{name}</a></td><td>{version} {{x}}</td></tr>'
ODD = ["plain", "<b>&'\"", "tab\there", "nul\0inside", "ünï ☃", "", "None"]


@pytest.mark.parametrize("count", [0, 1, 3, templating._ROWS_AT_ONCE + 5])
@pytest.mark.parametrize("markup", [False, True])
def test_rows_filter_gives_what_the_loop_gives(monkeypatch: pytest.MonkeyPatch, count: int,
                                               markup: bool) -> None:
    """``{{ items|rows(row) }}`` is exactly the ``{% for %}`` loop over the same row, the same
    values escaped (quotes, NUL, non-ASCII, ints, None, a Markup value left as it is), over
    several batches of rows."""
    from markupsafe import Markup

    items = [
        _Row(name=ODD[i % len(ODD)] + str(i),
             version=(Markup("<i>ok</i>") if markup and i == count - 1
                      else None if i % 5 == 1 else i if i % 5 == 2 else ODD[(i + 3) % len(ODD)]))
        for i in range(count)
    ]
    loop = ROW.replace("{{x}}", "{{ '{x}' }}").replace("{name}", "{{ r.name }}").replace(
        "{version}", "{{ r.version }}")
    templates = {
        "loop.html": "<table>\n{% for r in items %}\n" + loop + "\n{% endfor %}\n</table>\n",
        "rows.html": "<table>\n{{ items|rows(row) }}\n</table>\n",
    }
    env = jinja2.Environment(loader=jinja2.DictLoader(templates), autoescape=True,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["rows"] = templating.rows
    want = env.get_template("loop.html").render(items=items)
    got = env.get_template("rows.html").render(items=items, row=ROW)
    if count:
        assert got == want
    else:  # the page puts an empty table's rows under {% if %}: here one empty line
        assert got == "<table>\n\n</table>\n"
    assert "{x}" in want or not count


def test_rows_filter_refuses_what_it_cannot_fill() -> None:
    for row in ("<td>{0}</td>", "<td>{name!r}</td>", "<td>{size:>5}</td>", "<td></td>",
                "<td>{a[0]}</td>", "<td>{a.}</td>"):
        with pytest.raises(ValueError, match="rows:"):
            templating.rows([_Row(name="n", size=1)], row)


def test_rows_filter_reads_an_attribute_through_another() -> None:
    """``{deb.package}`` is the item's ``deb``'s ``package`` (the landing page's .deb rows),
    escaped as any value is; with one field or several."""
    items = [_Row(deb=_Row(package=f"p<{i}>", version=i), component="main") for i in range(3)]
    assert str(templating.rows(items, "<td>{deb.package}</td>")) == (
        "<td>p&lt;0&gt;</td>\n<td>p&lt;1&gt;</td>\n<td>p&lt;2&gt;</td>")
    assert str(templating.rows(items[:1], "{deb.package} {deb.version} {component}")) == (
        "p&lt;0&gt; 0 main")


def test_compiled_templates_are_kept_and_a_bad_folder_is_no_error(tmp_path: Path) -> None:
    """Kept compiled templates give the same page; a folder that cannot be made (a file in the
    way) only means nothing is kept."""
    want = templating.render("simple_root.html.j2", api_version="1.1", projects=["a<b"])
    folder = tmp_path / "compiled"
    try:
        templating.environment().cache.clear()  # compiled again, so that it is kept
        templating.keep_compiled(str(folder))
        assert templating.render("simple_root.html.j2", api_version="1.1",
                                 projects=["a<b"]) == want
        assert list(folder.iterdir())
        templating.environment().cache.clear()
        assert templating.render("simple_root.html.j2", api_version="1.1",
                                 projects=["a<b"]) == want  # from the kept code
        blocked = tmp_path / "file"
        blocked.write_text("in the way")
        templating.keep_compiled(str(blocked / "compiled"))
        assert templating.environment().bytecode_cache is None
    finally:
        templating.keep_compiled(None)


ROOT_LOOP = """<!DOCTYPE html>
<html>
  <head>
    <meta name="pypi:repository-version" content="{{ api_version }}">
    <title>Simple index</title>
  </head>
  <body>
{% for name in projects %}
    <a href="{{ name }}/">{{ name }}</a>
{% endfor %}
  </body>
</html>
"""


@pytest.mark.parametrize("names", [[], ["a"], ["a", "b-c", "x1"] * 2000, ["ünï", "b"],
                                   ['q"uote', "back\\slash", "ünï", "tab\tx", "del\x7f", "<&>"]])
def test_root_page_is_the_loops_and_its_json_the_encoders(names: list[str]) -> None:
    """The simple root lists its projects through the rows filter (``{}``: the item itself)
    and writes its JSON at once for plain names: the page the template's earlier loop gave,
    the document json.dumps gives, whatever the names hold."""
    from repobuild.formats import simple
    from repobuild.formats.manifest import canonical

    html, data = simple.render_root(names)
    env = templating.environment()
    want = env.from_string(ROOT_LOOP).render(api_version=simple.API_VERSION, projects=names)
    assert html == want.encode()
    assert data == canonical(
        {"meta": {"api-version": simple.API_VERSION}, "projects": [{"name": n} for n in names]})


def test_rows_filter_item_itself_only_alone() -> None:
    assert str(templating.rows(["a<", "b"], "<i>{}</i>{}")) == "<i>a&lt;</i>a&lt;\n<i>b</i>b"
    with pytest.raises(ValueError, match="only field"):
        templating.rows(["a"], "{}{name}")
