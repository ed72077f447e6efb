"""gpgv with OUT/keys/repo.gpg as its only keyring accepts the build's three OpenPGP
signatures (InRelease, Release.gpg over Release, index.json.asc over index.json) and rejects
each of them once one byte of the signed text changes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.clients import gpgv, have_tool

pytestmark = pytest.mark.skipif(not have_tool("gpgv"), reason="gpgv is not installed")

# (signature, signed file); a clear-signed file carries its own text
SIGNED = [
    ("dists/stable/InRelease", None),
    ("dists/stable/Release.gpg", "dists/stable/Release"),
    ("index.json.asc", "index.json"),
]
IDS = ["InRelease", "Release.gpg", "index.json.asc"]

GOOD_RC, BAD_RC = 0, 1


def keyring(out: Path) -> Path:
    ring = out / "keys" / "repo.gpg"
    assert ring.is_file(), f"{ring} is missing"
    assert not ring.read_bytes().startswith(b"-----BEGIN"), "repo.gpg must be a binary keyring"
    return ring


@pytest.mark.parametrize(("sig", "data"), SIGNED, ids=IDS)
def test_gpgv_accepts(built_out: Path, sig: str, data: str | None) -> None:
    files = [built_out / sig] + ([built_out / data] if data else [])
    proc = gpgv(keyring(built_out), *files)
    assert proc.returncode == GOOD_RC, proc.stderr
    assert "Good signature" in proc.stderr, proc.stderr


def change_signed_byte(path: Path, clearsigned: bool) -> None:
    """Change one letter inside the signed text (not the armor, not trailing white space,
    which a clear signature ignores)."""
    data = bytearray(path.read_bytes())
    start, end = 0, len(data)
    if clearsigned:
        start = data.index(b"\n\n", data.index(b"-----BEGIN PGP SIGNED MESSAGE-----")) + 2
        end = data.index(b"-----BEGIN PGP SIGNATURE-----")
    at = (start + end) // 2
    while not chr(data[at]).isalnum():
        at += 1
    assert at < end
    data[at] ^= 0x01 if chr(data[at] ^ 0x01).isalnum() else 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("sig", "data"), SIGNED, ids=IDS)
def test_gpgv_rejects_a_changed_byte(built_out: Path, tmp_path: Path, sig: str,
                                     data: str | None) -> None:
    copies = [Path(shutil.copy(built_out / name, tmp_path / Path(name).name))
              for name in ([sig] + ([data] if data else []))]
    change_signed_byte(copies[-1], clearsigned=data is None)
    assert copies[-1].read_bytes() != (built_out / (data or sig)).read_bytes()
    proc = gpgv(keyring(built_out), *copies)
    print(f"[{Path(sig).name}] gpgv rc={proc.returncode}\n{proc.stderr}")
    assert proc.returncode == BAD_RC, proc.stderr
    assert re.search(r'BAD signature from "', proc.stderr), proc.stderr
    assert "Good signature" not in proc.stderr
