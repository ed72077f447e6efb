"""Real apt-get and apt-cache, isolated from this machine's apt (APT_CONFIG of their own), read
a built tree over http://127.0.0.1:PORT/ and over file://OUT/.

Accepted: `apt-get update` with Signed-By OUT/keys/repo.gpg, every fixture package and version
listed (for amd64 and for arm64, `Architecture: all` under both), `apt-get download` gives
files byte-identical to the release's. Refused, with apt's own words and return code 100: a
flipped byte in a .deb blob, a changed Packages index, a tree signed by another key and a tree
whose Valid-Until has passed.

The expected packages come from the .deb files themselves (`dpkg-deb --field`), never from
repobuild's output.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients import (
    DEMO_KEYS,
    Apt,
    DebInfo,
    blob_of,
    build_repo,
    flip_byte,
    have_apt,
    have_tool,
    http_server,
    make_apt,
    repobuild,
)

pytestmark = [
    pytest.mark.skipif(not have_apt(), reason="apt-get is not installed on this machine"),
    pytest.mark.skipif(not have_tool("dpkg-deb"), reason="dpkg-deb is not installed"),
]

TRANSPORTS = ("http", "file")
ARCHES = ("amd64", "arm64")
APT_FAILED = 100  # apt-get's return code for any failure
DAY = 86400


@contextmanager
def served(out: Path, transport: str) -> Iterator[str]:
    """The apt URI of ``out``: a local HTTP server's, or file://OUT/."""
    if transport == "http":
        with http_server(out) as server:
            yield server.url
    else:
        yield f"file://{out}/"


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def listed(apt: Apt, names: set[str]) -> set[tuple[str, str]]:
    """(package, version) pairs that `apt-cache madison` lists for ``names``."""
    return {(name, version) for name in names for version in apt.versions(name)}


# -- a: a fresh build is accepted ----------------------------------------------------------------


@dataclass
class Updated:
    apt: Apt
    transport: str
    arch: str
    uri: str
    update: subprocess.CompletedProcess[str]


@pytest.fixture(
    scope="module",
    params=[(t, a) for t in TRANSPORTS for a in ARCHES],
    ids=[f"{t}-{a}" for t in TRANSPORTS for a in ARCHES],
)
def updated(request: pytest.FixtureRequest, built_out: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Updated]:
    """`apt-get update` against the pristine build, once per transport and architecture."""
    transport, arch = request.param
    with served(built_out, transport) as uri:
        apt = make_apt(tmp_path_factory.mktemp(f"apt-{transport}-{arch}"), uri,
                       built_out / "keys" / "repo.gpg", arch=arch)
        yield Updated(apt, transport, arch, uri, apt.update())


def expected_for(debs: list[DebInfo], arch: str) -> list[DebInfo]:
    return [d for d in debs if d.architecture in (arch, "all")]


def test_update_succeeds_with_signed_by(updated: Updated) -> None:
    proc = updated.update
    assert proc.returncode == 0, output(proc)
    # no warning or error at all (a missing Release entry or weak key shows up as W:)
    bad = [ln for ln in output(proc).splitlines() if re.match(r"\s*[WE]: ", ln)]
    assert not bad, output(proc)
    assert "InRelease" in proc.stdout, proc.stdout


def test_every_fixture_package_and_version_is_listed(updated: Updated,
                                                     fixture_debs: list[DebInfo]) -> None:
    assert updated.update.returncode == 0, output(updated.update)
    expected = {(d.package, d.version) for d in expected_for(fixture_debs, updated.arch)}
    # the fixture set has a package with two versions, an `all` one and one per architecture
    names = {d.package for d in fixture_debs}
    per_name = [sum(1 for d in fixture_debs if d.package == n) for n in names]
    assert max(per_name) >= 2, "the fixture release lost its package with two versions"
    assert any(d.architecture == "all" for d in fixture_debs)
    assert {d.architecture for d in fixture_debs} >= {*ARCHES, "all"}

    # madison: exactly the packages of this architecture and `all`, none of the other one
    assert listed(updated.apt, names) == expected

    # apt-cache policy: each version in the package's version table, from this source
    policy = updated.apt.policy(*sorted(names))
    parts = re.split(r"^(\S+):$", policy, flags=re.M)
    blocks = dict(zip(parts[1::2], parts[2::2], strict=True))
    for deb in expected_for(fixture_debs, updated.arch):
        block = blocks.get(deb.package, "")
        assert re.search(rf"^\s+(\*\*\* )?{re.escape(deb.version)} 500$", block, re.M), policy
        assert f"stable/main {updated.arch} Packages" in block, policy
    for deb in fixture_debs:
        if deb.architecture not in (updated.arch, "all"):
            assert updated.apt.versions(deb.package) == [], deb


def test_download_is_byte_identical(updated: Updated, fixture_debs: list[DebInfo],
                                    tmp_path: Path) -> None:
    assert updated.update.returncode == 0, output(updated.update)
    for deb in expected_for(fixture_debs, updated.arch):
        dest = tmp_path / f"{deb.package}_{deb.version.replace(':', '%3a')}"
        proc = updated.apt.download(dest, f"{deb.package}={deb.version}")
        assert proc.returncode == 0, output(proc)
        got = sorted(dest.iterdir())
        assert len(got) == 1 and got[0].suffix == ".deb", got
        assert got[0].read_bytes() == deb.path.read_bytes(), (deb, got[0])


# -- b: tampered, foreign or expired trees are refused -------------------------------------------


def hello_1_0(debs: list[DebInfo]) -> DebInfo:
    """One amd64 .deb of the release (the older version of the package that has two)."""
    amd64 = sorted((d for d in debs if d.architecture == "amd64"),
                   key=lambda d: (d.package, d.version))
    assert amd64, "no amd64 .deb in the fixture release"
    return amd64[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_flipped_byte_in_blob_gives_hash_sum_mismatch(out_copy: Path, tmp_path: Path,
                                                      fixture_debs: list[DebInfo],
                                                      transport: str) -> None:
    deb = hello_1_0(fixture_debs)
    blob = blob_of(out_copy, deb.path)
    assert blob.is_file(), f"{blob} (the blob of {deb.path.name}) is missing"
    flip_byte(blob)
    with served(out_copy, transport) as uri:
        apt = make_apt(tmp_path, uri, out_copy / "keys" / "repo.gpg")
        update = apt.update()
        assert update.returncode == 0, output(update)  # indices are untouched
        dest = tmp_path / "dl"
        proc = apt.download(dest, f"{deb.package}={deb.version}")
    print(f"[{transport}] apt-get download rc={proc.returncode}\n{proc.stderr}")
    assert proc.returncode == APT_FAILED, output(proc)
    assert re.search(rf"E: Failed to fetch \S+/{re.escape(blob.name)}\s+Hash Sum mismatch",
                     proc.stderr), proc.stderr
    assert not list(dest.glob("*.deb")), "apt kept a .deb that failed its hash check"


def amd64_index(out: Path) -> Path:
    return out / "dists" / "stable" / "main" / "binary-amd64"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_flipped_byte_in_by_hash_packages_fails_update(out_copy: Path, tmp_path: Path,
                                                       transport: str) -> None:
    """apt fetches Packages.* by hash; one flipped byte in those files is a hash mismatch."""
    by_hash = sorted((amd64_index(out_copy) / "by-hash" / "SHA256").iterdir())
    assert by_hash
    for path in by_hash:
        flip_byte(path)
    with served(out_copy, transport) as uri:
        apt = make_apt(tmp_path, uri, out_copy / "keys" / "repo.gpg")
        proc = apt.update()
    print(f"[{transport}] apt-get update rc={proc.returncode}\n{output(proc)}")
    assert proc.returncode == APT_FAILED, output(proc)
    assert re.search(r"E: Failed to fetch \S+/binary-amd64/by-hash/SHA256/[0-9a-f]{64}\s+"
                     r"Hash Sum mismatch", proc.stderr), proc.stderr
    assert "E: Some index files failed to download" in proc.stderr
    assert apt.versions("rbdemo-hello") == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rewritten_packages_fails_update(out_copy: Path, tmp_path: Path,
                                         fixture_debs: list[DebInfo], transport: str) -> None:
    """A forged Packages (one Version changed) written to Packages, .gz, .xz and to every
    by-hash name: over HTTP apt says `File has unexpected size (N != M)`, over file:// it
    says `Hash Sum mismatch`."""
    deb = hello_1_0(fixture_debs)
    index = amd64_index(out_copy)
    original = (index / "Packages").read_bytes()
    stanza = f"Package: {deb.package}\n"
    forged = original.replace(f"{stanza}Version: {deb.version}\n".encode(),
                              f"{stanza}Version: 99:{deb.version}\n".encode())
    if forged == original:  # field order differs: change the Version line after the stanza
        head, tail = original.split(stanza.encode(), 1)
        forged = head + stanza.encode() + tail.replace(
            f"Version: {deb.version}\n".encode(), f"Version: 99:{deb.version}\n".encode(), 1)
    assert forged != original
    old = {n: hashlib.sha256((index / n).read_bytes()).hexdigest()
           for n in ("Packages", "Packages.gz", "Packages.xz")}
    new = {"Packages": forged, "Packages.gz": gzip.compress(forged, mtime=0),
           "Packages.xz": lzma.compress(forged)}
    for name, data in new.items():
        (index / name).write_bytes(data)
        by_hash = index / "by-hash" / "SHA256" / old[name]
        assert by_hash.is_file(), f"no by-hash copy of {name}"
        by_hash.write_bytes(data)
    with served(out_copy, transport) as uri:
        apt = make_apt(tmp_path, uri, out_copy / "keys" / "repo.gpg")
        proc = apt.update()
    print(f"[{transport}] apt-get update rc={proc.returncode}\n{output(proc)}")
    assert proc.returncode == APT_FAILED, output(proc)
    assert re.search(r"E: Failed to fetch \S+/binary-amd64/by-hash/SHA256/[0-9a-f]{64}\s+"
                     r"(Hash Sum mismatch|File has unexpected size \(\d+ != \d+\))",
                     proc.stderr), proc.stderr
    assert f"99:{deb.version}" not in apt.run("apt-cache", "madison", deb.package).stdout


@pytest.fixture(scope="module")
def foreign_out(tmp_path_factory: pytest.TempPathFactory, release_src: Path) -> Path:
    """The release built with a second, freshly generated key folder."""
    base = tmp_path_factory.mktemp("foreign")
    repobuild("keys", "generate", base / "keys", check=True)
    return build_repo(release_src, base / "out", base / "keys")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tree_signed_by_another_key_is_refused(foreign_out: Path, built_out: Path,
                                               tmp_path: Path, transport: str) -> None:
    fingerprint = subprocess.run(
        ["gpg", "--homedir", str(tmp_path), "--with-colons", "--show-keys",
         str(foreign_out / "keys" / "public.asc")],
        capture_output=True, text=True, check=True,
    ).stdout.split("\nfpr:", 1)[1].split(":")[8]
    assert (DEMO_KEYS / "gpg" / "public.asc").read_bytes() != (
        foreign_out / "keys" / "public.asc").read_bytes()
    with served(foreign_out, transport) as uri:
        apt = make_apt(tmp_path, uri, built_out / "keys" / "repo.gpg")  # the demo key
        proc = apt.update()
    print(f"[{transport}] apt-get update rc={proc.returncode}\n{output(proc)}")
    assert proc.returncode == APT_FAILED, output(proc)
    match = re.search(r"NO_PUBKEY ([0-9A-F]{16})", proc.stderr)
    assert match and fingerprint.endswith(match.group(1)), (fingerprint, proc.stderr)
    assert re.search(r"E: The repository '\S+ stable InRelease' is not signed\.", proc.stderr)
    assert apt.versions("rbdemo-hello") == []


@pytest.fixture(scope="module")
def expired_out(tmp_path_factory: pytest.TempPathFactory, release_src: Path) -> Path:
    """The release built 30 days ago (SOURCE_DATE_EPOCH); the default validity is 7 days."""
    out = tmp_path_factory.mktemp("expired") / "out"
    return build_repo(release_src, out, DEMO_KEYS,
                      source_date_epoch=int(time.time()) - 30 * DAY)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_expired_tree_is_refused(expired_out: Path, tmp_path: Path, transport: str) -> None:
    release = (expired_out / "dists" / "stable" / "Release").read_text()
    assert re.search(r"^Valid-Until: ", release, re.M), release
    with served(expired_out, transport) as uri:
        apt = make_apt(tmp_path, uri, expired_out / "keys" / "repo.gpg")
        proc = apt.update()
    print(f"[{transport}] apt-get update rc={proc.returncode}\n{output(proc)}")
    assert proc.returncode == APT_FAILED, output(proc)
    assert re.search(r"E: Release file for \S+/dists/stable/InRelease is expired "
                     r"\(invalid since \d+d ", proc.stderr), proc.stderr
    assert apt.versions("rbdemo-hello") == []


def test_a_copy_of_a_tree_is_still_accepted(out_copy: Path, tmp_path: Path,
                                            fixture_debs: list[DebInfo]) -> None:
    """Control for the refusals above: the untampered copy they start from works."""
    with served(out_copy, "file") as uri:
        apt = make_apt(tmp_path, uri, out_copy / "keys" / "repo.gpg")
        proc = apt.update()
        assert proc.returncode == 0, output(proc)
        deb = hello_1_0(fixture_debs)
        assert deb.version in apt.versions(deb.package)
