"""A gpg that fails to sign fails the build: a clear-signing gpg writes the cleartext before it
signs, so an InRelease without a signature was once published when the secret key could not
sign (one behind a passphrase)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.clients import DEMO_KEYS, FIXTURES, repobuild


def _protected_secret_key(tmp_path: Path) -> bytes:
    """A fresh Ed25519 signing key behind a passphrase, armored, from gpg itself."""
    home = tmp_path / "gh"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", "not-empty"]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "protected <p@example.invalid>", "ed25519",
                        "sign", "never"], check=True, capture_output=True)
        return subprocess.run([*gpg, "--armor", "--export-secret-keys"], check=True,
                              capture_output=True).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       check=False, capture_output=True)


def test_a_key_that_cannot_sign_fails_the_build_and_changes_nothing(tmp_path: Path) -> None:
    keys = shutil.copytree(DEMO_KEYS, tmp_path / "keys")
    good = tmp_path / "out"
    repobuild("build", FIXTURES, "--out", good, "--keys", DEMO_KEYS, check=True)
    before = {p: p.read_bytes() for p in sorted(good.rglob("*"))
              if p.is_file() and ".repobuild" not in p.parts}
    (keys / "gpg" / "secret.asc").write_bytes(_protected_secret_key(tmp_path))

    for out in (tmp_path / "new", good):
        proc = repobuild("build", FIXTURES, "--out", out, "--keys", keys)
        assert proc.returncode != 0
        assert "gpg could not sign" in proc.stderr and "passphrase" in proc.stderr
        assert "secret.asc" in proc.stderr
    assert not (tmp_path / "new").exists()
    after = {p: p.read_bytes() for p in sorted(good.rglob("*"))
             if p.is_file() and ".repobuild" not in p.parts}
    assert after == before, "the previous tree is left as it was"
