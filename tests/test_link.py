"""`repobuild build --link`: blobs are hard links of the source files, the tree verifies, and
the next build finds every file in the cache although linking changed the files' ctime."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import repobuild.build as build_mod
from repobuild.config import Config
from repobuild.formats import manifest
from tests.clients import DEMO_KEYS, FIXTURES, repobuild


def test_link_builds_share_inodes_and_rebuild_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = shutil.copytree(FIXTURES, tmp_path / "src")
    out = tmp_path / "out"
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    build_mod.build(source, out, DEMO_KEYS, Config(), link=True)
    index = manifest.parse((out / "index.json").read_bytes())
    for art in index.artifacts:
        assert (out / art["blob"]).stat().st_ino == (source / art["path"]).stat().st_ino
    assert repobuild("verify", out, "--trust", DEMO_KEYS / "trust.json").returncode == 0

    reads: list[str] = []
    real = build_mod.ingest

    def counting(src, rel, temp, **kw):  # type: ignore[no-untyped-def]
        reads.append(rel)
        return real(src, rel, temp, **kw)

    monkeypatch.setattr(build_mod, "ingest", counting)
    build_mod.build(source, out, DEMO_KEYS, Config(), link=True)
    assert reads == [], reads
    assert manifest.parse((out / "index.json").read_bytes()).version == 2
