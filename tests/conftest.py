"""Shared fixtures for the real-client tests (test_apt, test_pip, test_gpgv).

``built_out`` is one build of the fixture release with the demo keys, made once per session;
no test may change it. A test that tampers takes ``out_copy`` (or copies ``built_out`` with
``shutil.copytree`` itself) and changes the copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.clients import (
    DEMO_KEYS,
    FIXTURES,
    DebInfo,
    DistInfo,
    build_repo,
    deb_info,
    dist_info,
    have_tool,
)


@pytest.fixture(scope="session")
def release_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of fixtures/release (others may regenerate the committed one)."""
    if not any(FIXTURES.rglob("*.deb")):
        pytest.fail(f"{FIXTURES} holds no .deb: run python fixtures/make_release.py")
    return shutil.copytree(FIXTURES, tmp_path_factory.mktemp("release") / "release")


@pytest.fixture(scope="session")
def built_out(tmp_path_factory: pytest.TempPathFactory, release_src: Path) -> Path:
    """``repobuild build release_src --out OUT --keys keys.example``, once; read-only."""
    return build_repo(release_src, tmp_path_factory.mktemp("built") / "out", DEMO_KEYS)


@pytest.fixture
def out_copy(built_out: Path, tmp_path: Path) -> Path:
    """A private copy of ``built_out`` that the test may tamper with."""
    return shutil.copytree(built_out, tmp_path / "out", symlinks=True)


@pytest.fixture(scope="session")
def fixture_debs(release_src: Path) -> list[DebInfo]:
    """Every .deb of the release, as dpkg-deb reads it (not as repobuild reports it)."""
    if not have_tool("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed: cannot read the fixture packages' fields")
    debs = [deb_info(p) for p in sorted(release_src.rglob("*.deb"))]
    assert debs, f"no .deb under {release_src}"
    return debs


@pytest.fixture(scope="session")
def fixture_wheels(release_src: Path) -> list[DistInfo]:
    wheels = [dist_info(p) for p in sorted(release_src.rglob("*.whl"))]
    assert wheels, f"no wheel under {release_src}"
    return wheels


@pytest.fixture(scope="session")
def fixture_sdists(release_src: Path) -> list[DistInfo]:
    sdists = [dist_info(p) for p in sorted(release_src.rglob("*.tar.gz"))]
    assert sdists, f"no sdist under {release_src}"
    return sdists
