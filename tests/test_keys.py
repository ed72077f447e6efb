"""`repobuild keys generate`: the key folder of CONTRACT.md, ed25519 by default, rsa4096 on
request, never the user's keyring; trust.json holds no secret; a build signs with it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from repobuild.signing.cosign import load_cosign_private_key
from tests.clients import FIXTURES, gpgv, repobuild

FILES = ["gpg/secret.asc", "gpg/public.asc", "cosign.key", "cosign.pub", "intoto/owner.key",
         "intoto/owner.pub", "intoto/builder.key", "intoto/builder.pub", "trust.json"]
SECRETS = ["gpg/secret.asc", "cosign.key", "intoto/owner.key", "intoto/builder.key"]


def _algo(public_asc: Path) -> str:
    out = subprocess.run(["gpg", "--show-keys", "--with-colons", str(public_asc)],
                         capture_output=True, text=True, check=True).stdout
    pub = next(line for line in out.splitlines() if line.startswith("pub:"))
    fields = pub.split(":")
    return f"{fields[3]}/{fields[2]}"  # algorithm number / key length


@pytest.mark.parametrize(("option", "expected"), [((), "22/255"), (("--gpg-algo", "rsa4096"),
                                                                   "1/4096")])
def test_generate_writes_the_key_folder_and_builds_with_it(
    tmp_path: Path, option: tuple[str, ...], expected: str
) -> None:
    home = tmp_path / "gnupg-home"
    home.mkdir(mode=0o700)
    keydir = tmp_path / "keys"
    env = {"COSIGN_PASSWORD": "s3cret", "GNUPGHOME": str(home)}
    proc = repobuild("keys", "generate", keydir, "--name", "Test Repo", "--email", "t@example.org",
                     *option, env=env)
    assert proc.returncode == 0, proc.stderr
    for name in FILES:
        assert (keydir / name).is_file(), name
    for name in SECRETS:
        assert stat.S_IMODE((keydir / name).stat().st_mode) == 0o600, name
    assert not any(home.iterdir()), "the user's GNUPGHOME was not touched"
    assert _algo(keydir / "gpg" / "public.asc") == expected
    trust = (keydir / "trust.json").read_text()
    assert "PRIVATE" not in trust and json.loads(trust)["type"] == "repobuild-trust"
    load_cosign_private_key((keydir / "cosign.key").read_bytes(), b"s3cret")
    assert repobuild("keys", "generate", keydir).returncode == 2, "refuses to overwrite"

    out = tmp_path / "out"
    built = repobuild("build", FIXTURES, "--out", out, "--keys", keydir, env=env)
    assert built.returncode == 0, built.stderr
    assert "INSECURE" not in built.stderr
    assert gpgv(out / "keys" / "repo.gpg", out / "dists/stable/InRelease").returncode == 0
    verified = repobuild("verify", out, "--trust", keydir / "trust.json")
    assert verified.returncode == 0, verified.stderr
    wrong = repobuild("build", FIXTURES, "--out", tmp_path / "o2", "--keys", keydir,
                      env={**env, "COSIGN_PASSWORD": "wrong"})
    assert wrong.returncode == 2 and "cannot decrypt cosign key" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()
    assert os.environ.get("GNUPGHOME") != str(home)
