"""repobuild.toml is honoured, and a bad one is refused with exit 2 and one line naming it.

One build of the fixture release with a configuration that sets every visible setting: suite,
codename, origin, label, validity_days, a component rule that puts one .deb in ``contrib``, and
two yanked files (one with a reason, one without). Each setting is looked for where apt, pip
and verifiers read it: Release, Packages, index.json, the simple pages (PEP 503 HTML and PEP 691
JSON) and the landing page.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.clients import DEMO_KEYS, FIXTURES, repobuild

EPOCH = 1_700_000_000
REASON = 'broken "entry point" <1.0 & co'

CONFIG = f"""
[repository]
origin = "Example Org"
label = "Example releases"
suite = "testing"
codename = "trixie"
validity_days = 3
description = "Example packages"

[[components]]
glob = "debs/rbdemo-tools_*"
component = "contrib"

[yanked]
"rbdemo_cli-0.1.0-py3-none-any.whl" = {json.dumps(REASON)}
"python/rbdemo_tool-0.3.0.tar.gz" = ""
"""


def build(source: Path, out: Path, config: Path):  # type: ignore[no-untyped-def]
    return repobuild("build", source, "--out", out, "--keys", DEMO_KEYS, "--config", config,
                     env={"SOURCE_DATE_EPOCH": str(EPOCH)})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("config")
    source = shutil.copytree(FIXTURES, root / "release")
    config = root / "repobuild.toml"
    config.write_text(CONFIG)
    out = root / "out"
    proc = build(source, out, config)
    assert proc.returncode == 0, proc.stderr
    return out


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if line[:1] != " " and ": " in line:
            key, value = line.split(": ", 1)
            out[key] = value
    return out


def test_release_fields_and_validity(built: Path) -> None:
    assert not (built / "dists/stable").exists()
    release = (built / "dists/testing/Release").read_text()
    f = _fields(release)
    assert (f["Origin"], f["Label"], f["Suite"], f["Codename"]) == (
        "Example Org", "Example releases", "testing", "trixie")
    assert f["Description"] == "Example packages"
    assert f["Date"] == "Tue, 14 Nov 2023 22:13:20 UTC"
    assert f["Valid-Until"] == "Fri, 17 Nov 2023 22:13:20 UTC"  # 3 days
    assert f["Components"].split() == ["contrib", "main"]
    assert _fields((built / "dists/testing/InRelease").read_text().split("\n\n", 1)[1]) == f
    index = json.loads((built / "index.json").read_bytes())
    assert (index["origin"], index["label"], index["suite"], index["codename"]) == (
        "Example Org", "Example releases", "testing", "trixie")
    generated = datetime.fromisoformat(index["generated"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(index["expires"].replace("Z", "+00:00"))
    assert generated == datetime.fromtimestamp(EPOCH, UTC)
    assert expires - generated == timedelta(days=3)
    landing = (built / "index.html").read_text()
    assert "<h1>Example releases</h1>" in landing
    assert " testing contrib main" in landing  # the sources.list line
    sources = (built / "keys/repo.sources").read_text()
    assert "Suites: testing\n" in sources and "Components: contrib main\n" in sources


def test_component_rule_puts_a_deb_in_contrib(built: Path) -> None:
    contrib = (built / "dists/testing/contrib/binary-arm64/Packages").read_text()
    main = (built / "dists/testing/main/binary-arm64/Packages").read_text()
    assert "Package: rbdemo-tools\n" in contrib
    assert "Package: rbdemo-tools\n" not in main
    assert "Package: rbdemo-data\n" in main  # Architecture: all, no rule: main
    assert "Package: rbdemo-hello\n" not in contrib
    index = json.loads((built / "index.json").read_bytes())
    comps = {a["name"]: a["component"] for a in index["artifacts"] if a["kind"] == "deb"}
    assert comps == {"rbdemo-tools": "contrib", "rbdemo-hello": "main", "rbdemo-data": "main"}
    # Release lists and hashes the contrib indices
    release = (built / "dists/testing/Release").read_text()
    digest = hashlib.sha256(contrib.encode()).hexdigest()
    assert re.search(rf"^ {digest} +{len(contrib.encode())} contrib/binary-arm64/Packages$",
                     release, re.M), release
    landing = (built / "index.html").read_text()
    assert "<td>rbdemo-tools</td><td>1:2.0-1</td><td>arm64</td><td>contrib</td>" in landing


def test_yanked_files_on_simple_pages(built: Path) -> None:
    escaped = 'broken &#34;entry point&#34; &lt;1.0 &amp; co'
    html = (built / "simple/rbdemo-cli/index.html").read_text()
    assert f'data-yanked="{escaped}"' in html, html
    page = json.loads((built / "simple/rbdemo-cli/index.json").read_bytes())
    assert [f["yanked"] for f in page["files"]] == [REASON]
    # yanked without a reason: data-yanked="" and "yanked": true
    html = (built / "simple/rbdemo-tool/index.html").read_text()
    assert 'data-yanked=""' in html, html
    page = json.loads((built / "simple/rbdemo-tool/index.json").read_bytes())
    assert [f["yanked"] for f in page["files"]] == [True]
    # files not named stay unyanked
    html = (built / "simple/rbdemo-lib/index.html").read_text()
    assert "data-yanked" not in html
    page = json.loads((built / "simple/rbdemo-lib/index.json").read_bytes())
    assert [f["yanked"] for f in page["files"]] == [False]
    index = json.loads((built / "index.json").read_bytes())
    yanked = {a["path"]: a["yanked"] for a in index["artifacts"] if "yanked" in a}
    assert yanked == {"python/rbdemo_cli-0.1.0-py3-none-any.whl": REASON,
                      "python/rbdemo_tool-0.3.0.tar.gz": ""}


BAD = {
    "unknown section": '[repository]\nsuite = "stable"\n[signing]\nkey = "x"\n',
    "unknown key (a misspelt validity_days)": "[repository]\nvalidity_day = 3\n",
    "invalid TOML": "[repository\nsuite = 'stable'\n",
    "repository not a table": 'repository = "stable"\n',
    "validity_days zero": "[repository]\nvalidity_days = 0\n",
    "validity_days negative": "[repository]\nvalidity_days = -1\n",
    "validity_days a string": '[repository]\nvalidity_days = "7"\n',
    "validity_days a boolean": "[repository]\nvalidity_days = true\n",
    "by_hash_keep_days negative": "[repository]\nby_hash_keep_days = -2\n",
    "suite with a space": '[repository]\nsuite = "my suite"\n',
    "empty suite": '[repository]\nsuite = ""\n',
    "codename with a slash": '[repository]\ncodename = "a/b"\n',
    "origin with a line break": '[repository]\norigin = "a\\nb"\n',
    "label not a string": "[repository]\nlabel = 5\n",
    "component rule without glob": '[[components]]\ncomponent = "contrib"\n',
    "component with a slash": '[[components]]\nglob = "*"\ncomponent = "con/trib"\n',
    "yanked reason not a string": '[yanked]\n"x.whl" = 3\n',
    "sha512 not a boolean": '[hashes]\nsha512 = "yes"\n',
    "unknown key in [hashes]": "[hashes]\nsha384 = true\n",
    "hashes not a table": "hashes = true\n",
    "architectures not a list": '[repository]\narchitectures = "amd64"\n',
    "not UTF-8": b"[repository]\nlabel = \"\xff\"\n",
}


@pytest.mark.parametrize("what", list(BAD))
def test_bad_configuration_exits_2_naming_the_file(what: str, tmp_path: Path) -> None:
    config = tmp_path / "my-repobuild.toml"
    text = BAD[what]
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    out = tmp_path / "out"
    proc = build(FIXTURES, out, config)
    assert proc.returncode == 2, (what, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(config) in lines[0], lines[0]
    assert not out.exists()
