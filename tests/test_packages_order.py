"""Packages stanzas come in (package, Debian version, architecture, SHA-256) order; the
versions are parsed only where names tie (repobuild.formats.apt.sorted_debs)."""

from __future__ import annotations

import random

from debian.debian_support import Version

from repobuild.formats.apt import deb_sort_key, sorted_debs
from repobuild.formats.deb import DebInfo
from repobuild.model import Artifact

VERSIONS = ["1.0", "1.0-1", "1.0-2", "1:0.9", "1.0~rc1", "1.0+b1", "2.0", "10.0", "1.0.1",
            "0.9~~a", "1.0-1ubuntu1"]


def test_same_order_as_the_whole_key() -> None:
    rng = random.Random(7)
    arts = []
    for i in range(3000):
        name = f"pkg{rng.randrange(400)}"
        version = rng.choice(VERSIONS)
        arch = rng.choice(["amd64", "arm64", "all"])
        art = Artifact(f"{name}_{i}.deb", f"{name}_{i}.deb", "deb", 1,
                       f"{rng.getrandbits(256):064x}")
        art.deb = DebInfo(name, version, arch, f"Package: {name}")
        arts.append(art)
    expected = sorted(arts, key=deb_sort_key)
    assert sorted_debs(arts) == expected
    assert sorted_debs(reversed(arts)) == expected
    assert sorted_debs([]) == []
    # versions compare as dpkg does, not as text
    order = [a.deb.version for a in sorted_debs(arts)
             if a.deb is not None and a.deb.package == "pkg1"]
    assert len(set(order)) > 3 and order == sorted(order, key=Version)
    assert sorted(["10.0", "2.0", "1:0.9", "1.0~rc1", "1.0"], key=Version) == [
        "1.0~rc1", "1.0", "2.0", "10.0", "1:0.9"]
