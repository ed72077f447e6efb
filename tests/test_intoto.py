"""in-toto layout and link: judged by the real `in-toto-verify` and by in-toto's Python API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from repobuild.errors import ValidationError, VerificationError
from repobuild.signing import intoto

IN_TOTO_VERIFY = Path(sys.executable).parent / "in-toto-verify"
if not IN_TOTO_VERIFY.exists():  # pragma: no cover - depends on the environment
    found = shutil.which("in-toto-verify")
    IN_TOTO_VERIFY = Path(found) if found else IN_TOTO_VERIFY

SOURCE_FILES = {
    "pool/x_1.0_amd64.deb": b"!<arch>\ndebian-binary fake deb\n",
    "wheels/demo-1.0-py3-none-any.whl": b"PK fake wheel",
    "notes/README.txt": b"release notes\n",
}
BLOB = "blobs/sha256/ab/abcd/x.deb"
PACKAGES = "dists/stable/main/binary-amd64/Packages"
RELEASE = "dists/stable/Release"
OUT_FILES = {
    BLOB: SOURCE_FILES["pool/x_1.0_amd64.deb"],
    "blobs/sha256/cd/cdef/demo-1.0-py3-none-any.whl": SOURCE_FILES[
        "wheels/demo-1.0-py3-none-any.whl"
    ],
    PACKAGES: b"Package: x\nVersion: 1.0\nFilename: blobs/sha256/ab/abcd/x.deb\n",
    RELEASE: b"Suite: stable\nAcquire-By-Hash: yes\n",
    "simple/demo/index.html": b"<a href='../../blobs/sha256/cd/cdef/demo-1.0-py3-none-any.whl'>",
    "keys/cosign.pub": b"-----BEGIN PUBLIC KEY-----\nfake\n-----END PUBLIC KEY-----\n",
    "index.html": b"<h1>repo</h1>\n",
}
# Written after the link: not products of the build step.
LATE_FILES = {
    "index.json": b'{"version":1}',
    "index.json.asc": b"-----BEGIN PGP SIGNATURE-----\n",
    "index.json.sig": b"MEUCIQ==",
}


@dataclass(frozen=True)
class Keys:
    owner_key: bytes
    owner_pub: bytes
    builder_key: bytes
    builder_pub: bytes


@pytest.fixture(scope="module")
def keys() -> Keys:
    owner_key, owner_pub = intoto.generate_keypair()
    builder_key, builder_pub = intoto.generate_keypair()
    return Keys(owner_key, owner_pub, builder_key, builder_pub)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def _future() -> datetime:
    return datetime.now(UTC) + timedelta(days=30)


def build_out(
    tmp_path: Path,
    keys: Keys,
    *,
    expires: datetime | None = None,
    required: bool = False,
    source_names: list[str] | None = None,
    layout_key: bytes | None = None,
    link_key: bytes | None = None,
) -> Path:
    """A fake SOURCE and OUT, with the layout and link written as the build would."""
    source, out = tmp_path / "source", tmp_path / "out"
    _write(source, SOURCE_FILES)
    _write(out, OUT_FILES)
    materials = _hashes(SOURCE_FILES)  # precomputed, as the build does
    products = _hashes(OUT_FILES)
    layout = intoto.make_layout(
        layout_key or keys.owner_key,
        keys.builder_pub,
        expires=expires or _future(),
        source_names=source_names,
        required_paths=products if required else None,
    )
    name, link = intoto.make_link(
        link_key or keys.builder_key,
        materials=materials,
        products=products,
        command=list(intoto.EXPECTED_COMMAND),
    )
    (out / "in-toto").mkdir()
    (out / "in-toto" / "root.layout").write_bytes(layout)
    (out / "in-toto" / name).write_bytes(link)
    _write(out, LATE_FILES)  # index.json and its signatures come last
    return out


def audit(
    out: Path,
    keys: Keys,
    tmp_path: Path,
    mutate: Callable[[Path], None] | None = None,
    *,
    pub_inside: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Copy OUT to a clean folder, optionally tamper with it, run the real in-toto-verify."""
    copy = tmp_path / "audit" / "tree"
    if copy.parent.exists():
        shutil.rmtree(copy.parent)
    shutil.copytree(out, copy)
    if mutate is not None:
        mutate(copy)
    if pub_inside:
        (copy / "owner.pub").write_bytes(keys.owner_pub)
        pub = "owner.pub"
    else:
        (tmp_path / "audit" / "owner.pub").write_bytes(keys.owner_pub)
        pub = str(tmp_path / "audit" / "owner.pub")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [
            str(IN_TOTO_VERIFY),
            "--layout",
            "in-toto/root.layout",
            "--link-dir",
            "in-toto",
            "--verification-keys",
            pub,
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ keys


def test_keypair_is_pem_ed25519_and_key_id_matches_in_toto(tmp_path: Path) -> None:
    from in_toto.models._signer import load_public_key_from_file

    private_pem, public_pem = intoto.generate_keypair()
    assert private_pem.startswith(b"-----BEGIN " + b"PRIVATE KEY-----")  # PKCS#8
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")  # SPKI
    (tmp_path / "k.pub").write_bytes(public_pem)
    # What in-toto-verify computes from --verification-keys and uses to find link files.
    loaded = load_public_key_from_file(str(tmp_path / "k.pub"))
    assert loaded["keytype"] == "ed25519"
    assert intoto.key_id(public_pem) == loaded["keyid"]
    name, _ = intoto.make_link(
        private_pem, materials={}, products={}, command=["repobuild", "build"]
    )
    assert name == f"build.{loaded['keyid'][:8]}.link" == intoto.link_name(public_pem)


def test_key_id_rejects_garbage() -> None:
    with pytest.raises(ValidationError):
        intoto.key_id(b"not a key")


def test_ecdsa_signing_key_is_refused() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValidationError, match="Ed25519"):
        intoto.make_link(pem, materials={}, products={}, command=["x"])


# ------------------------------------------------------------------------------ determinism


def test_layout_and_link_are_deterministic(keys: Keys) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    a = intoto.make_layout(keys.owner_key, keys.builder_pub, expires=when)
    b = intoto.make_layout(keys.owner_key, keys.builder_pub, expires=when)
    assert a == b
    doc = json.loads(a)
    assert doc["signed"]["expires"] == "2030-01-02T03:04:05Z"
    assert a == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    later = intoto.make_layout(keys.owner_key, keys.builder_pub, expires=when + timedelta(days=1))
    assert later != a

    materials, products = _hashes(SOURCE_FILES), _hashes(OUT_FILES)
    n1, l1 = intoto.make_link(
        keys.builder_key, materials=materials, products=products, command=["repobuild", "build"]
    )
    n2, l2 = intoto.make_link(
        keys.builder_key, materials=materials, products=products, command=["repobuild", "build"]
    )
    assert (n1, l1) == (n2, l2)
    link = json.loads(l1)["signed"]
    assert link["products"][BLOB] == {"sha256": hashlib.sha256(OUT_FILES[BLOB]).hexdigest()}
    assert link["name"] == "build"


def test_link_signed_in_a_thread_is_the_same_and_a_failure_comes_when_asked(
        keys: Keys) -> None:
    """products_signing signs while the caller goes on: its link is the one products() makes,
    and a signer that fails raises ValidationError when the link is asked for."""
    materials, products = _hashes(SOURCE_FILES), _hashes(OUT_FILES)
    expected = intoto.make_link(keys.builder_key, materials=materials, products=products,
                                command=["repobuild", "build"])
    writer = intoto.LinkWriter(keys.builder_key, command=["repobuild", "build"])
    writer.materials(materials)
    pending = writer.products_signing(products)
    assert pending() == expected
    assert pending.sha256() == hashlib.sha256(expected[1]).hexdigest()  # taken in the thread

    class Broken(Exception):
        pass

    def broken(_data: object) -> dict[str, str]:
        raise Broken("the key is gone")

    writer = intoto.LinkWriter(keys.builder_key, command=["repobuild", "build"])
    writer.materials(materials)
    writer._signer.sign = broken  # type: ignore[method-assign]
    link = writer.products_signing(products)  # no error yet: it comes with the link
    with pytest.raises(ValidationError, match="cannot sign the in-toto link: the key is gone"):
        link()
    with pytest.raises(ValidationError, match="the key is gone"):
        link.sha256()


def test_layout_content(keys: Keys) -> None:
    doc = json.loads(intoto.make_layout(keys.owner_key, keys.builder_pub, expires=_future()))
    signed = doc["signed"]
    (step,) = signed["steps"]
    assert step["name"] == "build"
    assert step["pubkeys"] == [intoto.key_id(keys.builder_pub)]
    assert step["threshold"] == 1
    (inspection,) = signed["inspect"]
    rules = inspection["expected_materials"]
    assert rules[0] == ["MATCH", "*", "WITH", "PRODUCTS", "FROM", "build"]
    assert rules[-1] == ["DISALLOW", "*"]
    assert ["ALLOW", "owner.pub"] in rules
    assert ["ALLOW", "*.pub"] not in rules  # would let a tampered keys/*.pub through
    assert [s["keyid"] for s in doc["signatures"]] == [intoto.key_id(keys.owner_pub)]


def test_naive_expiry_is_refused(keys: Keys) -> None:
    with pytest.raises(ValidationError, match="timezone"):
        intoto.make_layout(keys.owner_key, keys.builder_pub, expires=datetime(2030, 1, 1))


@pytest.mark.parametrize(
    ("products", "match"),
    [
        ({"index.json": "0" * 64}, "after the link"),
        ({"in-toto/root.layout": "0" * 64}, "after the link"),
        ({"a": "XYZ"}, "sha256"),
        ({"a": "A" * 64}, "sha256"),
        ({"/etc/passwd": "0" * 64}, "relative"),
        ({"a/../b": "0" * 64}, "relative"),
        ({"./a": "0" * 64}, "relative"),
    ],
)
def test_make_link_refuses_bad_products(keys: Keys, products: dict[str, str], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        intoto.make_link(keys.builder_key, materials={}, products=products, command=["x"])


def _many(count: int) -> dict[str, str]:
    """More entries than make_link checks and encodes at once."""
    return {f"blobs/sha256/{i % 256:02x}/{i:064x}/pkg-{i}.whl": f"{i:064x}" for i in range(count)}


def test_large_link_is_the_canonical_json_signed(keys: Keys) -> None:
    """Entries go in chunks, joined; the odd ones (a quote to escape, a dot file, non-ASCII)
    are encoded one by one: the document must be what json.dumps makes of it, and its
    signature must verify over the canonical bytes of its signed part."""
    products = _many(9000) | {
        'simple/a"b/index.html': "1" * 64,
        "docs/.hidden/x": "2" * 64,
        "simple/ünï/index.json": "3" * 64,
        "a b/c": "4" * 64,
        ".well-known/x": "5" * 64,
    }
    materials = dict(list(_many(5000).items())[::-1])  # not given in order
    _, link = intoto.make_link(keys.builder_key, materials=materials, products=products,
                               command=["repobuild", "build"])
    doc = json.loads(link)
    assert link == (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                    + "\n").encode()
    signed = doc["signed"]
    assert signed["products"] == {p: {"sha256": d} for p, d in products.items()}
    assert signed["materials"] == {p: {"sha256": d} for p, d in materials.items()}
    public = serialization.load_pem_public_key(keys.builder_pub)
    assert isinstance(public, Ed25519PublicKey)
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    public.verify(bytes.fromhex(doc["signatures"][0]["sig"]), canonical.encode())


@pytest.mark.parametrize(
    ("path", "digest", "match"),
    [
        ("a//b", "0" * 64, "relative"),
        ("a/", "0" * 64, "relative"),
        ("", "0" * 64, "relative"),
        ("a/./b", "0" * 64, "relative"),
        ("a/..", "0" * 64, "relative"),
        ("a\\b", "0" * 64, "relative"),
        ("/a", "0" * 64, "relative"),
        (".", "0" * 64, "relative"),
        ("ok", "0" * 63, "sha256"),
        ("ok", "0" * 65, "sha256"),
        ("ok", "G" * 64, "sha256"),
        ("ok", "A" * 64, "sha256"),
        ("ok", "é" * 64, "sha256"),
    ],
)
def test_bad_entry_among_many_is_refused(keys: Keys, path: str, digest: str, match: str) -> None:
    many = _many(6000)
    many[path] = digest
    if digest == "0" * 63:  # the chunk's total length would still be right
        many["ok2"] = "0" * 65
    with pytest.raises(ValidationError, match=match):
        intoto.make_link(keys.builder_key, materials=many, products={}, command=["x"])
    with pytest.raises(ValidationError, match=match):
        intoto.make_link(keys.builder_key, materials={}, products=many, command=["x"])


@pytest.mark.parametrize("where", ["materials", "products"])
def test_a_control_character_among_many_gives_securesystemslib_canonical_json(
        keys: Keys, where: str) -> None:
    """OLPC canonical JSON writes control characters as they are (json.dumps escapes them):
    one among thousands of entries sends the whole link to securesystemslib's encoder, and
    the link verifies over the canonical bytes of its signed part. (A file name with a tab
    used to fail the build here: the canonical bytes were parsed back strictly.)"""
    from securesystemslib.formats import encode_canonical

    many = _many(5000) | {"odd\x01name/x": "6" * 64, "tab\there": "7" * 64}
    # with odd products, the clean materials (written early, not kept) are read back
    entries = {"materials": many, "products": {}} if where == "materials" else {
        "materials": dict(list(_many(300).items())[::-1]), "products": many}
    _, link = intoto.make_link(keys.builder_key, command=["x"], **entries)
    doc = json.loads(link)  # the file is JSON (in-toto writes it with json.dumps too)
    want = {"_type": "link", "byproducts": {}, "command": ["x"], "environment": {},
            "materials": {p: {"sha256": d} for p, d in entries["materials"].items()},
            "name": "build",
            "products": {p: {"sha256": d} for p, d in entries["products"].items()}}
    assert doc["signed"] == want
    canonical = str(encode_canonical(doc["signed"])).encode("utf-8")
    assert b"odd\x01name" in canonical  # as it is, not escaped
    public = serialization.load_pem_public_key(keys.builder_pub)
    assert isinstance(public, Ed25519PublicKey)
    public.verify(bytes.fromhex(doc["signatures"][0]["sig"]), canonical)


# ------------------------------------- the same keyids, layouts and signatures as in-toto's own


def _sslib_layout(keys: Keys, when: datetime, source_names: list[str] | None,
                  required: list[str] | None) -> bytes:
    """The layout as in-toto's own classes make it, signed by securesystemslib."""
    from in_toto.models.layout import Inspection, Layout, Step
    from in_toto.models.metadata import Metablock
    from securesystemslib.signer import CryptoSigner, SSlibKey

    builder = SSlibKey.from_crypto(serialization.load_pem_public_key(keys.builder_pub))
    builder_dict = builder.to_dict() | {"keyid": builder.keyid}
    materials, products = intoto._build_step_rules(source_names)
    rules = intoto._inspection_rules(required, [intoto._escape(f)
                                                for f in intoto.DEFAULT_VERIFIER_FILES])
    layout = Layout(
        steps=[Step(name="build", pubkeys=[builder.keyid], threshold=1,
                    expected_command=list(intoto.EXPECTED_COMMAND),
                    expected_materials=materials, expected_products=products)],
        inspect=[Inspection(name="verify-tree", run=list(intoto.INSPECTION_RUN),
                            expected_materials=rules, expected_products=[list(r) for r in rules])],
        keys={builder.keyid: builder_dict},
        expires=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        readme="",
    )
    block = Metablock(signed=layout)
    private = serialization.load_pem_private_key(keys.owner_key, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    block.create_signature(CryptoSigner(private))
    return (json.dumps(block.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            + "\n").encode()


@pytest.mark.parametrize("variant", ["default", "source-names", "required-paths"])
def test_layout_is_in_totos_own_byte_for_byte(keys: Keys, variant: str) -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    names = sorted(SOURCE_FILES) if variant == "source-names" else None
    required = sorted(OUT_FILES) if variant == "required-paths" else None
    ours = intoto.make_layout(keys.owner_key, keys.builder_pub, expires=when,
                              source_names=names, required_paths=required)
    assert ours == _sslib_layout(keys, when, names, required)


def test_keyid_and_link_signature_are_securesystemslibs(keys: Keys) -> None:
    from securesystemslib.signer import CryptoSigner, Signature, SSlibKey

    for pem in (keys.owner_pub, keys.builder_pub):
        theirs = SSlibKey.from_crypto(serialization.load_pem_public_key(pem))
        assert intoto.key_id(pem) == theirs.keyid
        assert intoto._key_dict(pem) == theirs.to_dict() | {"keyid": theirs.keyid}
    _, link = intoto.make_link(keys.builder_key, materials=_hashes(SOURCE_FILES),
                               products=_hashes(OUT_FILES), command=["repobuild", "build"])
    doc = json.loads(link)
    signed = json.dumps(doc["signed"], sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode()
    private = serialization.load_pem_private_key(keys.builder_key, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    assert doc["signatures"] == [CryptoSigner(private).sign(signed).to_dict()]
    builder = SSlibKey.from_crypto(serialization.load_pem_public_key(keys.builder_pub))
    builder.verify_signature(Signature.from_dict(doc["signatures"][0]), signed)


def test_a_build_imports_neither_in_toto_nor_securesystemslib(tmp_path: Path) -> None:
    """Their imports cost ~0.1 s of the GIL at every build; the build signs without them."""
    from tests.clients import DEMO_KEYS, FIXTURES

    script = (
        "import sys; from pathlib import Path\n"
        "from repobuild.build import build\nfrom repobuild.config import Config\n"
        f"build(Path({str(FIXTURES)!r}), Path({str(tmp_path / 'out')!r}), "
        f"Path({str(DEMO_KEYS)!r}), Config())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('in_toto', 'securesystemslib')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert (tmp_path / "out" / "in-toto" / "root.layout").exists()


# --------------------------------------------------------------------- the real in-toto-verify


def test_in_toto_verify_accepts_untouched_copy(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys)
    result = audit(out, keys, tmp_path)
    assert result.returncode == 0, result.stderr


def test_in_toto_verify_accepts_owner_pub_in_cwd(tmp_path: Path, keys: Keys) -> None:
    """CONTRACT.md's command line passes `owner.pub` relative: the key sits in the tree."""
    out = build_out(tmp_path, keys)
    result = audit(out, keys, tmp_path, pub_inside=True)
    assert result.returncode == 0, result.stderr


def test_in_toto_verify_twice_in_same_folder(tmp_path: Path, keys: Keys) -> None:
    """The verifier writes verify-tree.link into cwd; a second run must not trip over it."""
    out = build_out(tmp_path, keys)
    first = audit(out, keys, tmp_path, pub_inside=True)
    assert first.returncode == 0, first.stderr
    tree = tmp_path / "audit" / "tree"
    assert (tree / "verify-tree.link").exists()
    again = subprocess.run(
        [str(IN_TOTO_VERIFY), "--layout", "in-toto/root.layout", "--link-dir", "in-toto",
         "--verification-keys", "owner.pub"],
        cwd=tree, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr


def test_in_toto_verify_with_required_paths_and_source_names(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys, required=True, source_names=sorted(SOURCE_FILES))
    result = audit(out, keys, tmp_path)
    assert result.returncode == 0, result.stderr


def _append(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        with (root / rel).open("ab") as f:
            f.write(b"Package: evil\n")

    return mutate


def _add(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"extra")

    return mutate


TAMPERING: dict[str, Callable[[Path], None]] = {
    "blob byte flipped": lambda root: _flip_byte(root / BLOB),
    "Packages changed": _append(PACKAGES),
    "Release changed": _append(RELEASE),
    "keys/cosign.pub changed": _append("keys/cosign.pub"),
    "extra top-level file": _add("evil.sh"),
    "extra nested file": _add("blobs/sha256/ee/eeee/evil.deb"),
    "extra by-hash file": _add("dists/stable/main/binary-amd64/by-hash/SHA256/" + "e" * 64),
    "extra file named like a key": _add("blobs/sha256/ee/eeee/evil.pub"),
}


@pytest.mark.parametrize("what", sorted(TAMPERING))
def test_in_toto_verify_rejects_tampering(tmp_path: Path, keys: Keys, what: str) -> None:
    out = build_out(tmp_path, keys)
    assert audit(out, keys, tmp_path).returncode == 0  # the same copy, untouched, passes
    result = audit(out, keys, tmp_path, TAMPERING[what], pub_inside=True)
    assert result.returncode != 0, f"{what}: in-toto-verify accepted it\n{result.stderr}"
    assert "RuleVerificationError" in result.stderr


def test_in_toto_verify_rejects_deleted_file_when_required(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys, required=True)
    result = audit(out, keys, tmp_path, lambda root: (root / BLOB).unlink())
    assert result.returncode != 0
    assert "REQUIRE" in result.stderr


def test_in_toto_verify_rejects_expired_layout(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys, expires=datetime.now(UTC) - timedelta(seconds=1))
    result = audit(out, keys, tmp_path)
    assert result.returncode != 0
    assert "expired" in result.stderr.lower()


def test_in_toto_verify_rejects_layout_by_another_owner(tmp_path: Path, keys: Keys) -> None:
    other_key, _ = intoto.generate_keypair()
    out = build_out(tmp_path, keys, layout_key=other_key)
    result = audit(out, keys, tmp_path)
    assert result.returncode != 0
    assert "Signature" in result.stderr


def test_in_toto_verify_rejects_link_by_non_functionary(tmp_path: Path, keys: Keys) -> None:
    other_key, _ = intoto.generate_keypair()
    out = build_out(tmp_path, keys, link_key=other_key)
    result = audit(out, keys, tmp_path)
    assert result.returncode != 0
    assert "LinkNotFoundError" in result.stderr


def test_in_toto_verify_rejects_forged_link_under_builder_name(tmp_path: Path, keys: Keys) -> None:
    """A link with the functionary's file name but signed by someone else."""
    out = build_out(tmp_path, keys)
    other_key, _ = intoto.generate_keypair()
    _, forged = intoto.make_link(
        other_key, materials={}, products=_hashes(OUT_FILES), command=["x"]
    )

    def forge(root: Path) -> None:
        (root / "in-toto" / intoto.link_name(keys.builder_pub)).write_bytes(forged)

    result = audit(out, keys, tmp_path, forge)
    assert result.returncode != 0


def test_in_toto_verify_rejects_materials_outside_source_names(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys, source_names=["pool/x_1.0_amd64.deb"])
    result = audit(out, keys, tmp_path)
    assert result.returncode != 0
    assert "DISALLOW" in result.stderr


# ------------------------------------------------------------------------ python verify_layout


def _verify(tree: Path, keys: Keys) -> None:
    layout = (tree / "in-toto" / "root.layout").read_bytes()
    intoto.verify_layout(layout, tree / "in-toto", keys.owner_pub, tree=tree)


def test_verify_layout_accepts_and_leaves_tree_alone(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys, required=True)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    cwd = Path.cwd()
    _verify(out, keys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert Path.cwd() == cwd


@pytest.mark.parametrize(
    "what",
    ["blob byte flipped", "Packages changed", "Release changed", "extra nested file"],
)
def test_verify_layout_rejects_tampering(tmp_path: Path, keys: Keys, what: str) -> None:
    out = build_out(tmp_path, keys)
    TAMPERING[what](out)
    with pytest.raises(VerificationError, match="RuleVerificationError"):
        _verify(out, keys)


def test_verify_layout_sees_files_in_toto_verify_hides(tmp_path: Path, keys: Keys) -> None:
    """in-toto-verify never records *.link*, *.pyc, *~: the Python check does."""
    out = build_out(tmp_path, keys)
    _add("blobs/sha256/ee/eeee/evil.pyc")(out)
    assert audit(out, keys, tmp_path).returncode == 0  # a limit of the real client
    with pytest.raises(VerificationError, match="evil.pyc"):
        _verify(out, keys)


def test_verify_layout_rejects_expired(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys, expires=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(VerificationError, match="expired"):
        _verify(out, keys)


def test_verify_layout_rejects_wrong_owner_key(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys)
    _, other_pub = intoto.generate_keypair()
    layout = (out / "in-toto" / "root.layout").read_bytes()
    with pytest.raises(VerificationError, match="Signature"):
        intoto.verify_layout(layout, out / "in-toto", other_pub, tree=out)


def test_verify_layout_rejects_deleted_required_file(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys, required=True)
    (out / PACKAGES).unlink()
    with pytest.raises(VerificationError, match="REQUIRE"):
        _verify(out, keys)


def test_verify_layout_rejects_malformed_layout(tmp_path: Path, keys: Keys) -> None:
    out = build_out(tmp_path, keys)
    with pytest.raises(VerificationError, match="malformed"):
        intoto.verify_layout(b"{not json", out / "in-toto", keys.owner_pub, tree=out)


def test_build_products_view_gives_the_link_a_dict_gives(keys: Keys) -> None:
    """The build hands make_link a view over its blobs and listed files, read a chunk at a
    time through ``digests_of``: the link must be the one the same entries give as a dict
    (a listed file wins over a blob of the same path, as in the view's own lookups)."""
    from repobuild.build import _Products
    from repobuild.model import FileEntry

    blobs = _many(6000)
    listed = {f"simple/p{i}/index.html": FileEntry(i, f"{i + 7:064x}") for i in range(5000)}
    shadowed = next(iter(blobs))
    listed[shadowed] = FileEntry(1, "e" * 64)
    view = _Products(blobs, listed)
    assert view.digests_of([shadowed, "simple/p3/index.html"]) == ["e" * 64, f"{10:064x}"]
    disjoint = _Products(blobs, {p: e for p, e in listed.items() if p != shadowed})
    for products in (view, disjoint):  # the second: no path both a blob and listed (a build's)
        plain = {**blobs, **{p: e.sha256 for p, e in products._listed.items()}}
        assert dict(products) == plain and len(products) == len(plain)
        got = intoto.make_link(keys.builder_key, materials={}, products=products,
                               command=["x"])
        want = intoto.make_link(keys.builder_key, materials={}, products=plain, command=["x"])
        assert got == want
