"""index.json's signatures and the in-toto provenance of a fresh build, judged by real clients.

openssl checks index.json.sig, the npm package @sigstore/verify checks index.json.sigstore.json
(the node helper of tests/node, offline), the real ``in-toto-verify`` checks a copy of OUT as
CONTRACT.md tells an auditor to, and sigstore-python (through repobuild's trust policy) checks a
real keyless bundle offline. Each is shown to refuse a tampered input as well.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repobuild.trust import KEYLESS_BUNDLE, check_signatures, parse_trust
from tests.clients import DEMO_KEYS, FIXTURES, repobuild
from tests.test_cosign import NODE_HELPER, node_modules  # noqa: F401  (fixture, by name)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KEYLESS = SHARED / "fixtures" / "interop" / "sigstore-keyless"
KEYLESS_IDENTITY = "william@yossarian.net"
KEYLESS_ISSUER = "https://github.com/login/oauth"

IN_TOTO_VERIFY = Path(sys.executable).parent / "in-toto-verify"
if not IN_TOTO_VERIFY.exists():  # pragma: no cover - depends on the environment
    IN_TOTO_VERIFY = Path(shutil.which("in-toto-verify") or IN_TOTO_VERIFY)

PACKAGES = "dists/stable/main/binary-amd64/Packages"


# --- one fresh build for the module ----------------------------------------------------------


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh build of the fixture release with the demo keys; never modified by a test."""
    base = tmp_path_factory.mktemp("provenance")
    source = base / "release"
    shutil.copytree(FIXTURES, source)
    target = base / "out"
    repobuild("build", source, "--out", target, "--keys", DEMO_KEYS,
              env={"SOURCE_DATE_EPOCH": str(int(time.time()))}, check=True)
    return target


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


# --- a. index.json.sig with openssl, index.json.sigstore.json with @sigstore/verify ---------


def _openssl(pub: Path, sig_b64: Path, blob: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """CLIENTS.md: base64 -d x.sig > x.der; openssl dgst -sha256 -verify cosign.pub ..."""
    der = tmp / "index.json.sig.der"
    with der.open("wb") as fh:
        subprocess.run([_tool("base64"), "-d", str(sig_b64)], stdout=fh, check=True)
    cmd = [_tool("openssl"), "dgst", "-sha256", "-verify", str(pub), "-signature", str(der),
           str(blob)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_openssl_accepts_index_signature_and_rejects_tampered_index(
    out: Path, tmp_path: Path
) -> None:
    pub = out / "keys" / "cosign.pub"
    # OUT/keys is a convenience, never a trust root: it must be the pinned demo key.
    assert pub.read_bytes() == (DEMO_KEYS / "cosign.pub").read_bytes()
    sig = out / "index.json.sig"
    assert base64.b64decode(sig.read_bytes(), validate=True)[0] == 0x30  # DER SEQUENCE

    good = _openssl(pub, sig, out / "index.json", tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Verified OK" in good.stdout

    tampered = tmp_path / "index.json"
    shutil.copyfile(out / "index.json", tampered)
    _flip(tampered)
    bad = _openssl(pub, sig, tampered, tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Verification failure" in bad.stdout + bad.stderr


def _sigstore_js(modules: Path, bundle: Path, blob: Path, pub: Path
                 ) -> subprocess.CompletedProcess[str]:
    cmd = [_tool("node"), str(NODE_HELPER / "verify-bundle.mjs"), str(bundle), str(blob),
           str(pub), str(modules)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_sigstore_js_accepts_index_bundle_and_rejects_tampered_index(
    out: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    modules: Path = request.getfixturevalue("node_modules")
    bundle, pub = out / "index.json.sigstore.json", DEMO_KEYS / "cosign.pub"

    good = _sigstore_js(modules, bundle, out / "index.json", pub)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("OK: ")

    tampered = tmp_path / "index.json"
    shutil.copyfile(out / "index.json", tampered)
    _flip(tampered)
    bad = _sigstore_js(modules, bundle, tampered, pub)
    assert bad.returncode == 1, bad.stdout
    assert bad.stderr.startswith("FAIL: ") and "SIGNATURE_ERROR" in bad.stderr, bad.stderr


# --- c. the real in-toto-verify on a clean copy of OUT ---------------------------------------


def _audit_copy(out: Path, dest: Path) -> Path:
    """A clean copy of OUT (no local state) with the layout key at its root (CONTRACT.md)."""
    shutil.copytree(out, dest, ignore=lambda d, names: [".repobuild"] if Path(d) == out else [])
    shutil.copyfile(DEMO_KEYS / "intoto" / "owner.pub", dest / "owner.pub")
    return dest


def _in_toto_verify(root: Path) -> subprocess.CompletedProcess[str]:
    if not IN_TOTO_VERIFY.exists():
        pytest.skip("in-toto-verify is not installed")
    cmd = [str(IN_TOTO_VERIFY), "--layout", "in-toto/root.layout", "--link-dir", "in-toto",
           "--verification-keys", "owner.pub"]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)


def test_in_toto_verify_passes_on_a_clean_copy(out: Path, tmp_path: Path) -> None:
    copy = _audit_copy(out, tmp_path / "copy")
    assert not (copy / ".repobuild").exists()
    result = _in_toto_verify(copy)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def _one_blob(root: Path) -> Path:
    debs = sorted((root / "blobs").rglob("*.deb"))
    assert debs, "the build holds no .deb blob"
    return debs[0]


@pytest.mark.parametrize("what", ["blob", "Packages"])
def test_in_toto_verify_fails_on_a_changed_file(out: Path, tmp_path: Path, what: str) -> None:
    copy = _audit_copy(out, tmp_path / "copy")
    target = _one_blob(copy) if what == "blob" else copy / PACKAGES
    _flip(target)
    result = _in_toto_verify(copy)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    rel = target.relative_to(copy).as_posix()
    assert "RuleVerificationError" in output and rel in output, output[-3000:]


# --- e. a real keyless bundle under the trust policy, offline --------------------------------


@pytest.fixture
def keyless(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[bytes, bytes]:
    bundle, blob = KEYLESS / "bundle_v3.txt.sigstore.json", KEYLESS / "bundle_v3.txt"
    if not bundle.is_file() or not blob.is_file():
        pytest.skip(f"shared interop fixture {KEYLESS} is absent (sigstore-python test assets)")
    # A fresh cache: the check must work offline from sigstore-python's bundled trust roots.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return bundle.read_bytes(), blob.read_bytes()


def _keyless_policy(identity: str, *, staging: bool = True) -> bytes:
    import json

    return json.dumps({
        "type": "repobuild-trust",
        "version": 1,
        "threshold": 1,
        "sigstore": [{"identity": identity, "issuer": KEYLESS_ISSUER, "staging": staging}],
    }).encode()


def test_trust_policy_accepts_real_keyless_bundle(keyless: tuple[bytes, bytes]) -> None:
    bundle, blob = keyless
    policy = parse_trust(_keyless_policy(KEYLESS_IDENTITY), Path("trust.json"))
    ok, results = check_signatures(policy, blob, {KEYLESS_BUNDLE: bundle})
    assert ok, [r.to_json() for r in results]
    assert [(r.kind, r.ok) for r in results] == [("sigstore-keyless", True)]
    assert KEYLESS_IDENTITY in results[0].key


@pytest.mark.parametrize(
    "identity, staging, tamper, reason",
    [
        ("someone-else@example.com", True, False, "SANs do not match"),
        (KEYLESS_IDENTITY, False, False, "keyless bundle refused"),  # production root
        (KEYLESS_IDENTITY, True, True, "keyless bundle refused"),  # other data
    ],
)
def test_trust_policy_refuses_keyless_bundle(
    keyless: tuple[bytes, bytes], identity: str, staging: bool, tamper: bool, reason: str
) -> None:
    bundle, blob = keyless
    policy = parse_trust(_keyless_policy(identity, staging=staging), Path("trust.json"))
    data = blob + b"x" if tamper else blob
    ok, results = check_signatures(policy, data, {KEYLESS_BUNDLE: bundle})
    assert not ok
    assert [(r.kind, r.ok) for r in results] == [("sigstore-keyless", False)]
    assert reason in results[0].reason, results[0].reason


def test_trust_policy_refuses_missing_keyless_bundle(keyless: tuple[bytes, bytes]) -> None:
    _bundle, blob = keyless
    policy = parse_trust(_keyless_policy(KEYLESS_IDENTITY), Path("trust.json"))
    ok, results = check_signatures(policy, blob, {})
    assert not ok and "missing" in results[0].reason
