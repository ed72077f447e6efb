"""render_large gives exactly what jinja's own render gives, whatever the pieces."""

from __future__ import annotations

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
