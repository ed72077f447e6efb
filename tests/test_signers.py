"""Signing keys named by securesystemslib signer URIs, and keyless Sigstore signing offline."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from repobuild.keys import make_trust
from repobuild.signing import intoto
from tests.clients import DEMO_KEYS, FIXTURES, repobuild


def _pem_pair(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture()
def uri_keys(tmp_path: Path) -> tuple[Path, Path]:
    """A key folder whose cosign and in-toto builder keys live outside it, named by URIs."""
    keydir = tmp_path / "keys"
    shutil.copytree(DEMO_KEYS, keydir)
    (keydir / "cosign.key").unlink()
    (keydir / "intoto" / "builder.key").unlink()
    external = tmp_path / "kms"
    external.mkdir()
    cosign_priv, cosign_pub = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    builder_priv, builder_pub = _pem_pair(ed25519.Ed25519PrivateKey.generate())
    (external / "cosign.pem").write_bytes(cosign_priv)
    (external / "builder.pem").write_bytes(builder_priv)
    (keydir / "cosign.pub").write_bytes(cosign_pub)
    (keydir / "intoto" / "builder.pub").write_bytes(builder_pub)
    owner_pub = (keydir / "intoto" / "owner.pub").read_bytes()
    gpg_trust = json.loads((DEMO_KEYS / "trust.json").read_text())["gpg"][0]
    trust = make_trust(gpg_public=gpg_trust["public_key"].encode(),
                       gpg_fingerprint=gpg_trust["fingerprint"], cosign_public=cosign_pub,
                       owner_public=owner_pub, owner_keyid=intoto.key_id(owner_pub))
    (keydir / "trust.json").write_text(json.dumps(trust))
    return keydir, external


def test_build_signs_through_signer_uris(tmp_path: Path, uri_keys: tuple[Path, Path]) -> None:
    keydir, external = uri_keys
    out = tmp_path / "out"
    proc = repobuild("build", FIXTURES, "--out", out, "--keys", keydir,
                     "--signer", f"cosign=file2:{external / 'cosign.pem'}",
                     "--signer", f"intoto-builder=file2:{external / 'builder.pem'}")
    assert proc.returncode == 0, proc.stderr
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in out.rglob("*") if p.is_file())
    der = tmp_path / "sig.der"
    der.write_bytes(base64.b64decode((out / "index.json.sig").read_bytes()))
    check = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(keydir / "cosign.pub"),
                            "-signature", str(der), str(out / "index.json")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    builder_pub = (keydir / "intoto" / "builder.pub").read_bytes()
    assert (out / "in-toto" / intoto.link_name(builder_pub)).is_file()
    verified = repobuild("verify", out, "--trust", keydir / "trust.json")
    assert verified.returncode == 0, verified.stderr


def test_unknown_signer_role_is_a_usage_error(tmp_path: Path) -> None:
    proc = repobuild("build", FIXTURES, "--out", tmp_path / "out", "--keys", DEMO_KEYS,
                     "--signer", "gpg=file2:/nonexistent")
    assert proc.returncode == 2
    assert "--signer takes ROLE=URI" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unreadable_signer_uri_fails_cleanly(tmp_path: Path) -> None:
    proc = repobuild("build", FIXTURES, "--out", tmp_path / "out", "--keys", DEMO_KEYS,
                     "--signer", f"cosign=file2:{tmp_path / 'missing.pem'}")
    assert proc.returncode == 2, proc.stderr
    assert "cosign: cannot open signer" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_keyless_signing_offline_fails_clearly_and_leaves_the_tree_valid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = repobuild("build", FIXTURES, "--out", out, "--keys", DEMO_KEYS, "--sigstore")
    assert proc.returncode == 1
    assert "no OIDC identity token" in proc.stderr or "keyless" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "index.json.keyless.sigstore.json").exists()
    verified = repobuild("verify", out, "--trust", DEMO_KEYS / "trust.json")
    assert verified.returncode == 0, verified.stderr
