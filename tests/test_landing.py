"""The landing page's tables: the .deb packages in (name, architecture, version) order, the
Python projects with their versions in PEP 440 order, the files linking their blobs; each value
escaped, and the page the same whichever way its rows are made."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace

from repobuild.build import _landing
from repobuild.config import Config
from repobuild.formats.deb import DebInfo
from repobuild.formats.simple import SimpleFile
from repobuild.model import Artifact


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _deb(name: str, version: str, arch: str, component: str = "main") -> Artifact:
    filename = f"{name}_{version}_{arch}.deb"
    return Artifact(f"debs/{filename}", filename, "deb", 1, _sha(filename),
                    deb=DebInfo(name, version, arch, f"Package: {name}"), component=component)


def _dist(version: str) -> SimpleFile:
    return SimpleFile(f"p-{version}.tar.gz", "u", _sha(version), 1, "t", None, None, None,
                      version)


def test_landing_tables() -> None:
    arts = [
        _deb("zz", "1.0", "amd64"),
        _deb("aa", "2.0", "arm64", "contrib"),
        _deb("aa", "10.0", "amd64"),  # text order: "10.0" before "2.0" for one architecture
        _deb("aa", "2.0", "amd64"),
        _deb("x<y", "1&2", "all"),
        Artifact("files/notes & more.txt", "notes & more.txt", "file", 12, _sha("n")),
    ]
    projects = [
        ("multi", [_dist("1.10"), _dist("1.9"), _dist("1.9"), _dist("2.0rc1")]),
        ("one", [_dist("0.1")]),
        ("<odd>", [_dist("1")]),
    ]
    keys = SimpleNamespace(gpg=SimpleNamespace(key_id="ABCD"), cosign_public=None,
                           owner_public=None)
    when = datetime(2026, 11, 27, tzinfo=UTC)
    page = _landing(config=Config(), keys=keys, version=3, now=when,  # type: ignore[arg-type]
                    expires=when, arts=arts, projects=projects, components=("main",)).decode()
    debs = [
        "<td>aa</td><td>10.0</td><td>amd64</td><td>main</td>",
        "<td>aa</td><td>2.0</td><td>amd64</td><td>main</td>",
        "<td>aa</td><td>2.0</td><td>arm64</td><td>contrib</td>",
        "<td>x&lt;y</td><td>1&amp;2</td><td>all</td><td>main</td>",
        "<td>zz</td><td>1.0</td><td>amd64</td><td>main</td>",
    ]
    at = [page.index(row) for row in debs]
    assert at == sorted(at)
    assert '<td><a href="simple/multi/">multi</a></td><td>1.9, 1.10, 2.0rc1</td>' in page
    assert '<td><a href="simple/one/">one</a></td><td>0.1</td>' in page
    assert '<td><a href="simple/&lt;odd&gt;/">&lt;odd&gt;</a></td><td>1</td>' in page
    blob = arts[-1].blob.replace("&", "&amp;")  # escaped in the link as well
    assert (f'<td><a href="{blob}">files/notes &amp; more.txt</a></td><td>12 bytes</td>'
            f"<td><code>{_sha('n')}</code></td>") in page
