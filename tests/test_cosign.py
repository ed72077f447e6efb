"""cosign-compatible keys, signatures and Sigstore bundles, judged by real clients.

openssl checks the signatures, cosign's own key files must load, the npm package
@sigstore/verify checks the key bundles offline, and sigstore-python checks a real keyless
bundle offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from repobuild.errors import UsageError, ValidationError, VerificationError
from repobuild.signing.cosign import (
    COSIGN_KEY_LABEL,
    SIGSTORE_KEY_LABEL,
    CosignSigner,
    generate_cosign_keypair,
    load_cosign_private_key,
    password_from_env,
    public_key_hint,
    verify_cosign_signature,
)
from repobuild.signing.sigstore_bundle import (
    BUNDLE_MEDIA_TYPE,
    make_key_bundle,
    verify_key_bundle,
    verify_keyless_bundle,
)

INTEROP = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "interop"
COSIGN_GO = INTEROP / "cosign-go"
KEYLESS = INTEROP / "sigstore-keyless"
NODE_HELPER = Path(__file__).resolve().parent / "node"
KEYLESS_IDENTITY = "william@yossarian.net"
KEYLESS_ISSUER = "https://github.com/login/oauth"
DATA = b"repobuild index.json stand-in\n"


# --- helpers ----------------------------------------------------------------------------------


def _pem_json(pem: bytes) -> tuple[str, bytes]:
    """(label, JSON body) of a one-block PEM file."""
    lines = pem.decode("ascii").strip().splitlines()
    label = lines[0].removeprefix("-----BEGIN ").removesuffix("-----")
    assert lines[-1] == f"-----END {label}-----"
    return label, base64.b64decode("".join(lines[1:-1]))


def _pem_from_json(label: str, body: bytes) -> bytes:
    text = base64.b64encode(body).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _openssl_verify(tmp_path: Path, pub_pem: bytes, sig_b64: bytes, blob: Path) -> int:
    """Run the CLIENTS.md recipe: base64 -d x.sig > x.der; openssl dgst -sha256 -verify ..."""
    openssl, b64 = _require_tool("openssl"), _require_tool("base64")
    (tmp_path / "cosign.pub").write_bytes(pub_pem)
    (tmp_path / "x.sig").write_bytes(sig_b64)
    with (tmp_path / "x.der").open("wb") as der:
        subprocess.run([b64, "-d", str(tmp_path / "x.sig")], stdout=der, check=True)
    cmd = [openssl, "dgst", "-sha256", "-verify", str(tmp_path / "cosign.pub")]
    cmd += ["-signature", str(tmp_path / "x.der"), str(blob)]
    return subprocess.run(cmd, capture_output=True, text=True).returncode


def _interop_key(name: str) -> Path:
    path = COSIGN_GO / name
    if not path.is_file():
        pytest.skip(f"interop fixture {path} is absent (written by cosign's Go code)")
    return path


# --- cosign key files -------------------------------------------------------------------------


def test_keys_use_the_scrypt_cost_cosign_writes() -> None:
    """The demo key and new keys are unlocked at every build: they use cosign's own cost,
    not more (the keys cosign wrote, where ../shared/ is present, say which)."""
    from tests.clients import DEMO_KEYS

    demo = json.loads(_pem_json((DEMO_KEYS / "cosign.key").read_bytes())[1])
    new = json.loads(_pem_json(generate_cosign_keypair(b"")[0])[1])
    assert demo["kdf"]["params"] == new["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    if not COSIGN_GO.is_dir():
        pytest.skip("../shared/fixtures/interop is absent: no key written by cosign to compare")
    for path in sorted(COSIGN_GO.glob("*.key")):
        assert json.loads(_pem_json(path.read_bytes())[1])["kdf"]["params"] == new["kdf"]["params"]


def test_generated_key_has_cosign_layout() -> None:
    priv, pub = generate_cosign_keypair(b"s3cret")
    label, body = _pem_json(priv)
    assert label == SIGSTORE_KEY_LABEL
    envelope = json.loads(body)
    # same field order and compact form as cosign's Go encoder
    assert body == json.dumps(envelope, separators=(",", ":")).encode()
    assert list(envelope) == ["kdf", "cipher", "ciphertext"]
    assert envelope["kdf"]["name"] == "scrypt"
    assert envelope["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}  # as cosign writes it
    assert list(envelope["kdf"]["params"]) == ["N", "r", "p"]
    assert len(base64.b64decode(envelope["kdf"]["salt"])) == 32
    assert envelope["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(envelope["cipher"]["nonce"])) == 24
    assert pub.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert pub.endswith(b"-----END PUBLIC KEY-----\n")
    assert all(len(line) <= 64 for line in priv.splitlines())


def test_generate_load_sign_and_openssl_verifies(tmp_path: Path) -> None:
    priv, pub = generate_cosign_keypair(b"s3cret")
    signer = load_cosign_private_key(priv, b"s3cret")
    assert signer.public_key_pem() == pub
    assert signer.key_id == public_key_hint(pub)

    blob = tmp_path / "x"
    blob.write_bytes(DATA)
    sig = signer.sign_blob_b64(DATA)
    assert not sig.endswith(b"\n")  # as cosign writes --output-signature
    assert base64.b64decode(sig)[0] == 0x30  # an ASN.1 DER SEQUENCE
    assert _openssl_verify(tmp_path, pub, sig, blob) == 0
    assert verify_cosign_signature(pub, DATA, sig)
    assert verify_cosign_signature(pub, DATA, sig + b"\n")  # cosign prints one on stdout

    blob.write_bytes(DATA + b"tampered")
    assert _openssl_verify(tmp_path, pub, sig, blob) == 1
    assert not verify_cosign_signature(pub, DATA + b"tampered", sig)
    assert not verify_cosign_signature(pub, DATA, b"not base64!")


@pytest.mark.parametrize("n_log2", [15, 17])
def test_other_scrypt_costs_cosign_reads(n_log2: int) -> None:
    priv, pub = generate_cosign_keypair(b"", n_log2=n_log2)
    assert json.loads(_pem_json(priv)[1])["kdf"]["params"]["N"] == 1 << n_log2
    signer = load_cosign_private_key(priv, b"")
    assert verify_cosign_signature(pub, DATA, signer.sign_blob_b64(DATA))


def test_unsupported_scrypt_cost_is_refused() -> None:
    with pytest.raises(UsageError):
        generate_cosign_keypair(b"", n_log2=14)
    priv, _ = generate_cosign_keypair(b"", n_log2=15)
    label, body = _pem_json(priv)
    envelope = json.loads(body)
    envelope["kdf"]["params"]["N"] = 16384
    weak = _pem_from_json(label, json.dumps(envelope).encode())
    with pytest.raises(ValidationError, match="unsupported scrypt parameters"):
        load_cosign_private_key(weak, b"", source="weak.key")


def test_old_cosign_label_is_accepted() -> None:
    priv, pub = generate_cosign_keypair(b"pw", n_log2=15)
    _, body = _pem_json(priv)
    signer = load_cosign_private_key(_pem_from_json(COSIGN_KEY_LABEL, body), b"pw")
    assert signer.public_key_pem() == pub


def test_wrong_password_is_one_clear_line() -> None:
    priv, _ = generate_cosign_keypair(b"right", n_log2=15)
    with pytest.raises(ValidationError) as info:
        load_cosign_private_key(priv, b"wrong", source="keys/cosign.key")
    assert str(info.value) == (
        "keys/cosign.key: cannot decrypt cosign key: wrong password or corrupt key"
    )
    assert info.value.path == "keys/cosign.key"


@pytest.mark.parametrize(
    "pem, reason",
    [
        (b"", "not a PEM file"),
        # (PEM labels spelt in pieces: no real key is in this file, and scanners should not
        # think there is one)
        (b"-----BEGIN " + b"PRIVATE KEY-----\nAAAA\n-----END " + b"PRIVATE KEY-----\n",
         "not an encrypted"),
        (_pem_from_json(SIGSTORE_KEY_LABEL, b"{not json"), "not a JSON envelope"),
        (_pem_from_json(SIGSTORE_KEY_LABEL, b"[]"), "not a JSON envelope"),
        (_pem_from_json(SIGSTORE_KEY_LABEL, b'{"kdf":{"name":"pbkdf2"}}'), "key derivation"),
        (
            b"-----BEGIN ENCRYPTED SIGSTORE " + b"PRIVATE KEY-----\n!!!\n"
            b"-----END ENCRYPTED SIGSTORE " + b"PRIVATE KEY-----\n",
            "not base64",
        ),
    ],
)
def test_malformed_key_files_are_refused(pem: bytes, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as info:
        load_cosign_private_key(pem, b"", source="bad.key")
    assert str(info.value).startswith("bad.key: ")
    assert "\n" not in str(info.value)


def test_corrupt_ciphertext_is_refused() -> None:
    priv, _ = generate_cosign_keypair(b"", n_log2=15)
    label, body = _pem_json(priv)
    envelope = json.loads(body)
    raw = bytearray(base64.b64decode(envelope["ciphertext"]))
    raw[20] ^= 0xFF
    envelope["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ValidationError, match="wrong password or corrupt key"):
        load_cosign_private_key(_pem_from_json(label, json.dumps(envelope).encode()), b"")


def test_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    assert password_from_env() == b""
    monkeypatch.setenv("COSIGN_PASSWORD", "hunter2 ✓")
    assert password_from_env() == "hunter2 ✓".encode()


# --- keys written by cosign itself ------------------------------------------------------------


@pytest.mark.parametrize("name", ["go_sigstore.key", "go_cosign_label.key"])
def test_keys_written_by_cosign_load_and_sign(tmp_path: Path, name: str) -> None:
    path = _interop_key(name)
    signer = load_cosign_private_key(path.read_bytes(), b"hello", source=str(path))
    assert isinstance(signer, CosignSigner)
    blob = tmp_path / "x"
    blob.write_bytes(DATA)
    sig = signer.sign_blob_b64(DATA)
    assert _openssl_verify(tmp_path, signer.public_key_pem(), sig, blob) == 0
    assert verify_cosign_signature(signer.public_key_pem(), DATA, sig)


@pytest.mark.parametrize("name", ["go_sigstore.key", "go_cosign_label.key"])
def test_keys_written_by_cosign_refuse_wrong_password(name: str) -> None:
    path = _interop_key(name)
    with pytest.raises(ValidationError) as info:
        load_cosign_private_key(path.read_bytes(), b"Hello", source=str(path))
    assert str(info.value) == f"{path}: cannot decrypt cosign key: wrong password or corrupt key"


# --- Sigstore key bundles ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def keypair() -> tuple[CosignSigner, bytes]:
    priv, pub = generate_cosign_keypair(b"", n_log2=15)
    return load_cosign_private_key(priv, b""), pub


def test_key_bundle_shape_is_sigstore_v03(keypair: tuple[CosignSigner, bytes]) -> None:
    signer, pub = keypair
    signature = signer.sign(DATA)
    bundle_bytes = make_key_bundle(DATA, signature, pub)
    assert make_key_bundle(DATA, signature, pub) == bundle_bytes  # deterministic
    bundle = json.loads(bundle_bytes)
    assert json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode() == bundle_bytes
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    assert bundle["verificationMaterial"] == {
        "publicKey": {"hint": signer.key_id},
        "tlogEntries": [],
    }
    message = bundle["messageSignature"]
    assert message["messageDigest"]["algorithm"] == "SHA2_256"
    assert base64.b64decode(message["messageDigest"]["digest"]) == hashlib.sha256(DATA).digest()
    assert base64.b64decode(message["signature"]) == signature


def test_key_bundle_python_check(keypair: tuple[CosignSigner, bytes]) -> None:
    signer, pub = keypair
    bundle = make_key_bundle(DATA, signer.sign(DATA), pub)
    verify_key_bundle(bundle, DATA, pub)
    with pytest.raises(VerificationError, match="digest does not match"):
        verify_key_bundle(bundle, DATA + b"x", pub)
    _, other_pub = generate_cosign_keypair(b"", n_log2=15)
    with pytest.raises(VerificationError, match="not the trusted key"):
        verify_key_bundle(bundle, DATA, other_pub)
    forged = json.loads(bundle)
    forged["messageSignature"]["signature"] = base64.b64encode(signer.sign(b"other")).decode()
    with pytest.raises(VerificationError, match="does not verify"):
        verify_key_bundle(json.dumps(forged).encode(), DATA, pub)
    with pytest.raises(VerificationError, match="not JSON"):
        verify_key_bundle(b"{", DATA, pub)
    with pytest.raises(VerificationError, match="signature does not verify"):
        make_key_bundle(DATA, signer.sign(b"other"), pub)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """Install the helper's npm packages once, in a cache folder outside the repository."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run @sigstore/verify")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = cache_home / "repobuild-tests" / "node"
    manifests = ["package.json", "package-lock.json"]
    current = all(
        (cache / m).is_file() and (cache / m).read_bytes() == (NODE_HELPER / m).read_bytes()
        for m in manifests
    )
    if current and (cache / "node_modules" / "@sigstore" / "verify").is_dir():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    for m in manifests:
        shutil.copyfile(NODE_HELPER / m, cache / m)
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund"],
        cwd=cache,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )
    if result.returncode != 0:
        tail = " ".join(result.stderr.split()[-40:])
        pytest.skip(f"npm install of @sigstore/verify failed (no registry access?): {tail}")
    return cache


def _node_verify(
    modules: Path, bundle: Path, blob: Path, pub: Path
) -> subprocess.CompletedProcess[str]:
    node = _require_tool("node")
    cmd = [node, str(NODE_HELPER / "verify-bundle.mjs"), str(bundle), str(blob), str(pub)]
    return subprocess.run([*cmd, str(modules)], capture_output=True, text=True, timeout=120)


def test_key_bundle_accepted_by_sigstore_js(
    tmp_path: Path, node_modules: Path, keypair: tuple[CosignSigner, bytes]
) -> None:
    signer, pub = keypair
    blob, bundle, key = tmp_path / "index.json", tmp_path / "b.sigstore.json", tmp_path / "k.pub"
    blob.write_bytes(DATA)
    bundle.write_bytes(make_key_bundle(DATA, signer.sign(DATA), pub))
    key.write_bytes(pub)

    ok = _node_verify(node_modules, bundle, blob, key)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: ")

    blob.write_bytes(DATA + b" ")
    tampered = _node_verify(node_modules, bundle, blob, key)
    assert tampered.returncode == 1, tampered.stdout
    assert "SIGNATURE_ERROR" in tampered.stderr


def test_sigstore_js_refuses_bundle_for_another_key(
    tmp_path: Path, node_modules: Path, keypair: tuple[CosignSigner, bytes]
) -> None:
    signer, pub = keypair
    path = _interop_key("go_sigstore.key")
    other = load_cosign_private_key(path.read_bytes(), b"hello", source=str(path))
    blob, bundle, key = tmp_path / "x", tmp_path / "b.json", tmp_path / "k.pub"
    blob.write_bytes(DATA)
    bundle.write_bytes(make_key_bundle(DATA, other.sign(DATA), other.public_key_pem()))
    key.write_bytes(pub)  # trust our key, not the one that signed
    result = _node_verify(node_modules, bundle, blob, key)
    assert result.returncode == 1, result.stdout
    assert "trusted key is" in result.stderr


# --- keyless bundles (sigstore-python, offline) -----------------------------------------------


@pytest.fixture
def keyless(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[bytes, bytes]:
    bundle, blob = KEYLESS / "bundle_v3.txt.sigstore.json", KEYLESS / "bundle_v3.txt"
    if not bundle.is_file() or not blob.is_file():
        pytest.skip(f"interop fixture {KEYLESS} is absent (sigstore-python test assets)")
    # A fresh cache: the check must work from sigstore-python's bundled trust root alone.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return bundle.read_bytes(), blob.read_bytes()


def test_keyless_bundle_verifies_offline(keyless: tuple[bytes, bytes]) -> None:
    bundle, blob = keyless
    verify_keyless_bundle(bundle, blob, KEYLESS_IDENTITY, KEYLESS_ISSUER, staging=True)


@pytest.mark.parametrize(
    "identity, issuer, tamper, reason",
    [
        ("someone@example.com", KEYLESS_ISSUER, False, "SANs do not match"),
        (KEYLESS_IDENTITY, "https://accounts.google.com", False, "OIDCIssuer does not match"),
        (KEYLESS_IDENTITY, KEYLESS_ISSUER, True, "digest mismatch"),
    ],
)
def test_keyless_bundle_refused(
    keyless: tuple[bytes, bytes], identity: str, issuer: str, tamper: bool, reason: str
) -> None:
    bundle, blob = keyless
    data = blob + b"x" if tamper else blob
    with pytest.raises(VerificationError, match=reason) as info:
        verify_keyless_bundle(bundle, data, identity, issuer, staging=True)
    assert "\n" not in str(info.value)


def test_keyless_staging_bundle_is_not_trusted_by_production(
    keyless: tuple[bytes, bytes],
) -> None:
    bundle, blob = keyless
    with pytest.raises(VerificationError, match="keyless bundle refused"):
        verify_keyless_bundle(bundle, blob, KEYLESS_IDENTITY, KEYLESS_ISSUER)


@pytest.mark.parametrize("n_log2", [15, 17])
def test_scrypt_by_libsodium_is_openssls(monkeypatch: pytest.MonkeyPatch, n_log2: int) -> None:
    """The key is derived by libsodium's scrypt where PyNaCl has it, else by cryptography's:
    the same bytes, at each cost cosign writes or reads."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    from repobuild.signing import cosign

    salt, password = bytes(range(32)), "pässword".encode()
    want = Scrypt(salt=salt, length=32, n=1 << n_log2, r=8, p=1).derive(password)
    assert cosign._derive_key(password, salt, 1 << n_log2) == want
    monkeypatch.setattr(cosign.nacl.bindings, "has_crypto_pwhash_scryptsalsa208sha256", False)
    assert cosign._derive_key(password, salt, 1 << n_log2) == want
