"""The output tree of `repobuild build`, as CONTRACT.md guarantees 1 and 4 describe it.

Every file in OUT is listed in index.json (as an artifact blob or under ``files``) or is
index.json and one of its signatures, with ``.repobuild/`` the one exception; every listed size
and SHA-256 matches the bytes on disk; no private key material is anywhere in OUT; index.json is
canonical JSON with RFC 3339 UTC times 7 days apart. Two builds of the same release into empty
folders with the same ``SOURCE_DATE_EPOCH`` give byte-identical files, signatures aside, and
every time written comes from ``SOURCE_DATE_EPOCH``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from repobuild.signing.cosign import load_cosign_private_key
from repobuild.signing.gpg import dearmor
from tests.clients import DEMO_KEYS, FIXTURES, fixture_generator, repobuild, snapshot

#: 2023-11-14T22:13:20Z, after the demo keys' creation (2020-01-01)
EPOCH = 1_700_000_000
EPOCH_RFC3339 = "2023-11-14T22:13:20Z"
SIGNATURES = {"index.json.asc", "index.json.sig", "index.json.sigstore.json"}
STATE = ".repobuild"


def tree_files(root: Path, *, state: bool = False) -> dict[str, bytes]:
    """Relative path -> bytes of every file below ``root`` (``.repobuild/`` only if asked)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and (state or not (rel == STATE or rel.startswith(STATE + "/"))):
            out[rel] = path.read_bytes()
    return out


def listed(index: dict) -> dict[str, tuple[int, str]]:
    """Path -> (size, sha256) of everything index.json lists."""
    out = {a["blob"]: (a["size"], a["sha256"]) for a in index["artifacts"]}
    for a in index["artifacts"]:
        meta = a.get("metadata")
        if meta:  # the PEP 658 file is listed under files as well; checked there
            assert meta["path"] in index["files"], meta
    out.update({p: (f["size"], f["sha256"]) for p, f in index["files"].items()})
    return out


def build_into(source: Path, out: Path, epoch: int = EPOCH, workers: str = "") -> None:
    env = {"SOURCE_DATE_EPOCH": str(epoch)}
    if workers:
        env["REPOBUILD_WORKERS"] = workers
    repobuild("build", source, "--out", out, "--keys", DEMO_KEYS, env=env, check=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the fixture release (others may regenerate fixtures/release)."""
    return shutil.copytree(FIXTURES, tmp_path_factory.mktemp("tree") / "release")


@pytest.fixture(scope="module")
def out_a(source: Path) -> Path:
    out = source.parent / "out-a"
    build_into(source, out)
    return out


@pytest.fixture(scope="module")
def out_b(source: Path, out_a: Path) -> Path:
    """A second build of the same release into another empty folder, same epoch; this one in
    worker processes (the files read by group, the project pages written into a folder that
    lands whole), the first in-process: the same tree either way."""
    out = source.parent / "out-b"
    build_into(source, out, workers="2")
    return out


# --- e. everything listed, hashes right, no secrets, canonical index ----------------------------


def test_every_file_is_listed_and_every_listed_file_matches(out_a: Path) -> None:
    index = json.loads((out_a / "index.json").read_bytes())
    entries = listed(index)
    files = tree_files(out_a)
    unlisted = sorted(set(files) - set(entries) - {"index.json"} - SIGNATURES)
    assert unlisted == [], f"files in OUT that index.json does not list: {unlisted}"
    assert SIGNATURES <= set(files), "a signature of index.json is missing"
    for rel in SIGNATURES | {"index.json"}:
        assert rel not in entries, f"{rel} lists itself or its own signature"
    for rel, (size, digest) in entries.items():
        assert rel in files, f"listed but absent: {rel}"
        assert len(files[rel]) == size, f"size of {rel}"
        assert hashlib.sha256(files[rel]).hexdigest() == digest, f"sha256 of {rel}"
    # every source file is an artifact, stored under its own SHA-256
    source_files = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*")
                    if p.is_file()}
    assert {a["path"] for a in index["artifacts"]} == source_files
    for a in index["artifacts"]:
        assert a["blob"] == (f"blobs/sha256/{a['sha256'][:2]}/{a['sha256']}/"
                             f"{a['path'].rsplit('/', 1)[-1]}")


def _secret_needles() -> dict[str, bytes]:
    """Byte strings that may appear nowhere in OUT, named for the failure message."""
    needles: dict[str, bytes] = {
        "a PRIVATE KEY marker": b"PRIVATE KEY",
        "an ENCRYPTED SIGSTORE marker": b"ENCRYPTED SIGSTORE",
    }
    secret_files = ["gpg/secret.asc", "cosign.key", "intoto/owner.key", "intoto/builder.key"]
    publics = b"".join((DEMO_KEYS / p).read_bytes() for p in
                       ("gpg/public.asc", "cosign.pub", "intoto/owner.pub", "intoto/builder.pub"))
    for rel in secret_files:
        data = (DEMO_KEYS / rel).read_bytes()
        needles[f"the bytes of keys.example/{rel}"] = data
        for n, line in enumerate(data.splitlines()):
            if len(line) >= 20 and not line.startswith(b"-----") and line not in publics:
                needles[f"line {n + 1} of keys.example/{rel}"] = line
            # and any 16 characters of it (a partial copy of the armored or PEM text)
            for i in range(0, max(0, len(line) - 16) + 1):
                window = line[i:i + 16]
                if len(window) == 16 and not line.startswith(b"-----") and window not in publics:
                    needles.setdefault(f"{window!r}, 16 bytes of keys.example/{rel}", window)
    # the raw private scalars, as bytes, hex and base64
    raws = {"cosign": load_cosign_private_key((DEMO_KEYS / "cosign.key").read_bytes(), b"")
            ._key.private_numbers().private_value.to_bytes(32, "big")}
    for role in ("owner", "builder"):
        key = serialization.load_pem_private_key(
            (DEMO_KEYS / "intoto" / f"{role}.key").read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        raws[f"in-toto {role}"] = key.private_bytes_raw()
    for name, raw in raws.items():
        needles[f"the {name} private scalar"] = raw
        needles[f"the {name} private scalar in hex"] = raw.hex().encode()
        needles[f"the {name} private scalar in base64"] = base64.b64encode(raw)[:40]
    # binary windows of the OpenPGP secret key block that its public key block does not hold
    secret_pgp = dearmor((DEMO_KEYS / "gpg/secret.asc").read_bytes())
    public_pgp = dearmor((DEMO_KEYS / "gpg/public.asc").read_bytes())
    for i in range(0, len(secret_pgp) - 16):
        window = secret_pgp[i:i + 16]
        if window not in public_pgp:
            needles[f"bytes {i}..{i + 16} of the OpenPGP secret key"] = window
    return needles


def test_no_private_key_material_anywhere_in_out(out_a: Path) -> None:
    needles = _secret_needles()
    assert len(needles) > 20
    for rel, data in tree_files(out_a, state=True).items():
        for what, needle in needles.items():
            assert needle not in data, f"OUT/{rel} holds {what}"


def test_index_json_is_canonical_with_rfc3339_times_7_days_apart(out_a: Path) -> None:
    raw = (out_a / "index.json").read_bytes()
    doc = json.loads(raw)
    again = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert again == raw, "index.json is not in canonical form"
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    assert stamp.match(doc["generated"]) and stamp.match(doc["expires"]), doc
    generated = datetime.strptime(doc["generated"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    expires = datetime.strptime(doc["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expires - generated == timedelta(days=7)
    assert doc["version"] == 1 and isinstance(doc["version"], int)


# --- f. reproducible builds ---------------------------------------------------------------------


def test_two_builds_are_byte_identical_signatures_aside(out_a: Path, out_b: Path) -> None:
    a, b = tree_files(out_a), tree_files(out_b)
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    differing = sorted(rel for rel in a if a[rel] != b[rel])
    # Found: OpenPGP signatures (ed25519: deterministic, signature time from SOURCE_DATE_EPOCH)
    # and the in-toto layout and link (ed25519) are byte-identical; only the cosign signature
    # (ECDSA P-256, random nonce) and the Sigstore bundle that carries it differ.
    assert set(differing) <= {"index.json.sig", "index.json.sigstore.json"}, (
        f"differ beyond the cosign signature: {differing}")
    for rel in ("index.json", "index.json.asc", "dists/stable/InRelease",
                "dists/stable/Release.gpg", "in-toto/root.layout"):
        assert a[rel] == b[rel], rel
    # the bundle differs only in the signature it carries
    bundle_a = json.loads(a["index.json.sigstore.json"])
    bundle_b = json.loads(b["index.json.sigstore.json"])
    sig_a = bundle_a["messageSignature"].pop("signature")
    sig_b = bundle_b["messageSignature"].pop("signature")
    assert bundle_a == bundle_b
    assert sig_a == a["index.json.sig"].decode() and sig_b == b["index.json.sig"].decode()


def test_times_come_from_source_date_epoch(out_a: Path, tmp_path: Path) -> None:
    index = json.loads((out_a / "index.json").read_bytes())
    assert index["generated"] == EPOCH_RFC3339
    assert {a["uploaded"] for a in index["artifacts"]} == {EPOCH_RFC3339}
    release = (out_a / "dists/stable/Release").read_text()
    assert "\nDate: Tue, 14 Nov 2023 22:13:20 UTC\n" in release
    assert "\nValid-Until: Tue, 21 Nov 2023 22:13:20 UTC\n" in release
    # the OpenPGP signature time too (gpg --list-packets: "created <epoch>")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    packets = subprocess.run(
        ["gpg", "--homedir", str(home), "--list-packets", str(out_a / "index.json.asc")],
        capture_output=True, text=True, timeout=60).stdout
    assert f"created {EPOCH}" in packets, packets


# --- g. a second build into the same OUT ---------------------------------------------------------




def _stanzas(packages: str) -> list[dict[str, str]]:
    out = []
    for block in packages.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line[:1] not in (" ", "\t") and ": " in line:
                key, value = line.split(": ", 1)
                fields[key] = value
        if fields:
            out.append(fields)
    return out


def _release_sha256(release: str) -> dict[str, tuple[int, str]]:
    """name -> (size, sha256) from Release's SHA256 field."""
    section = release.split("\nSHA256:\n", 1)[1]
    out = {}
    for line in section.splitlines():
        if not line.startswith(" "):
            break
        digest, size, name = line.split()
        out[name] = (int(size), digest)
    return out


def _check_tree(out: Path) -> dict:
    """Guarantee 1 on a built tree; returns the parsed index.json."""
    index = json.loads((out / "index.json").read_bytes())
    entries = listed(index)
    files = tree_files(out)
    unlisted = sorted(set(files) - set(entries) - {"index.json"} - SIGNATURES)
    assert unlisted == [], f"unlisted files in OUT: {unlisted}"
    for rel, (size, digest) in entries.items():
        assert rel in files, f"listed but absent: {rel}"
        assert (len(files[rel]), hashlib.sha256(files[rel]).hexdigest()) == (size, digest), rel
    return index


def test_rebuild_adds_a_package_keeps_blobs_and_retires_removed_files(tmp_path: Path) -> None:
    gen = fixture_generator()
    src = shutil.copytree(FIXTURES, tmp_path / "release")
    out = tmp_path / "out"
    build_into(src, out, EPOCH)
    first = _check_tree(out)
    assert first["version"] == 1
    before = snapshot(out)
    old_blobs = {rel: v for rel, v in before.items() if rel.startswith("blobs/")}
    assert len(old_blobs) >= 10
    old_release = (out / "dists/stable/Release").read_text()
    old_packages = (out / "dists/stable/main/binary-amd64/Packages").read_bytes()
    old_by_hash = f"dists/stable/main/binary-amd64/by-hash/SHA256/{_sha(old_packages)}"
    assert old_by_hash in first["files"]

    # -- add one .deb and one wheel, build again (a minute later) --------------------------
    deb = gen.make_deb(src / "debs", "rbdemo-extra", "3.1-1", "amd64")
    wheel = gen.make_wheel(src / "python", "rbdemo-extra", "3.1.0")
    deb_sha, wheel_sha = _sha(deb.read_bytes()), _sha(wheel.read_bytes())
    build_into(src, out, EPOCH + 60)
    second = _check_tree(out)
    assert second["version"] == 2

    after = snapshot(out)
    for rel, (ino, size, mtime, data) in old_blobs.items():
        assert rel in after, f"old blob gone: {rel}"
        assert after[rel][:3] == (ino, size, mtime), f"old blob rewritten: {rel}"
        assert after[rel][3] == data

    arts = {a["path"]: a for a in second["artifacts"]}
    deb_rel, wheel_rel = f"debs/{deb.name}", f"python/{wheel.name}"
    assert arts[deb_rel]["sha256"] == deb_sha and arts[deb_rel]["name"] == "rbdemo-extra"
    assert arts[deb_rel]["architecture"] == "amd64" and arts[deb_rel]["version"] == "3.1-1"
    assert arts[wheel_rel]["sha256"] == wheel_sha and arts[wheel_rel]["kind"] == "wheel"
    assert arts[wheel_rel]["uploaded"] == "2023-11-14T22:14:20Z"
    assert arts["files/README.txt"]["uploaded"] == EPOCH_RFC3339  # first seen in build 1
    for rel in (deb_rel, wheel_rel):
        assert (out / arts[rel]["blob"]).read_bytes() == (src / rel).read_bytes()

    # apt: Packages of amd64 (and only amd64), Release hashes, by-hash
    packages = (out / "dists/stable/main/binary-amd64/Packages").read_bytes()
    stanza = [s for s in _stanzas(packages.decode()) if s["Package"] == "rbdemo-extra"]
    assert len(stanza) == 1, packages.decode()
    assert stanza[0]["Version"] == "3.1-1" and stanza[0]["SHA256"] == deb_sha
    assert stanza[0]["Filename"] == arts[deb_rel]["blob"]
    arm = (out / "dists/stable/main/binary-arm64/Packages").read_text()
    assert "rbdemo-extra" not in arm
    release = (out / "dists/stable/Release").read_text()
    hashes = _release_sha256(release)
    assert hashes["main/binary-amd64/Packages"] == (len(packages), _sha(packages))
    for name in ("Packages.gz", "Packages.xz"):
        data = (out / "dists/stable/main/binary-amd64" / name).read_bytes()
        assert hashes[f"main/binary-amd64/{name}"] == (len(data), _sha(data))
    assert _release_sha256(old_release)["main/binary-amd64/Packages"] != hashes[
        "main/binary-amd64/Packages"]
    assert "\nDate: Tue, 14 Nov 2023 22:14:20 UTC\n" in release
    assert (out / f"dists/stable/main/binary-amd64/by-hash/SHA256/{_sha(packages)}").exists()
    assert release in (out / "dists/stable/InRelease").read_text()
    # the old by-hash copy is kept, listed as retired
    assert (out / old_by_hash).read_bytes() == old_packages
    assert second["files"][old_by_hash].get("retired") == "2023-11-14T22:14:20Z"

    # pip: simple root, project page and their PEP 691 twins
    assert 'href="rbdemo-extra/"' in (out / "simple/index.html").read_text()
    root_json = json.loads((out / "simple/index.json").read_bytes())
    assert {"name": "rbdemo-extra"} in root_json["projects"]
    page = (out / "simple/rbdemo-extra/index.html").read_text()
    assert f"{wheel.name}#sha256={wheel_sha}" in page, page
    project = json.loads((out / "simple/rbdemo-extra/index.json").read_bytes())
    assert [f["filename"] for f in project["files"]] == [wheel.name]
    assert project["files"][0]["hashes"] == {"sha256": wheel_sha}
    assert project["versions"] == ["3.1.0"]
    # landing page
    landing = (out / "index.html").read_text()
    assert "<td>rbdemo-extra</td><td>3.1-1</td><td>amd64</td>" in landing, landing
    assert 'href="simple/rbdemo-extra/">rbdemo-extra</a></td><td>3.1.0</td>' in landing
    assert "Version 2 of this repository" in landing

    # -- remove a source file, build again: its blob stays, listed as retired ----------------
    gone = src / "python" / "rbdemo_cli-0.1.0-py3-none-any.whl"
    gone_entry = next(a for a in second["artifacts"] if a["path"] == "python/" + gone.name)
    gone.unlink()
    build_into(src, out, EPOCH + 120)
    third = _check_tree(out)
    assert third["version"] == 3
    assert "python/" + gone.name not in {a["path"] for a in third["artifacts"]}
    blob = gone_entry["blob"]
    assert (out / blob).exists() and snapshot(out)[blob][:3] == after[blob][:3]
    assert third["files"][blob] == {"size": gone_entry["size"], "sha256": gone_entry["sha256"],
                                    "retired": "2023-11-14T22:15:20Z"}
    assert third["files"][blob + ".metadata"]["retired"] == "2023-11-14T22:15:20Z"
    assert not (out / "simple/rbdemo-cli").exists()
    assert "rbdemo-cli" not in (out / "simple/index.html").read_text()
    assert third["files"][old_by_hash]["retired"] == "2023-11-14T22:14:20Z"  # not reset


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_repo_keyring_is_the_published_public_key_unarmored(out_a: Path) -> None:
    """keys/repo.gpg (apt's Signed-By) is exported from the signer's home; it must be exactly
    keys/public.asc without its armour, and hold the public key only."""
    public_asc = (out_a / "keys" / "public.asc").read_bytes()
    assert (out_a / "keys" / "repo.gpg").read_bytes() == dearmor(public_asc)
    assert b"PRIVATE KEY" not in public_asc
