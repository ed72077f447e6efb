"""The binary public key (keys/repo.gpg) taken out of the armor is what gpg itself writes, and
a key folder whose secret.asc holds no secret key is refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from repobuild.formats.armor import ArmorError, crc24, unarmor
from tests.clients import DEMO_KEYS, FIXTURES, repobuild

PUBLIC = DEMO_KEYS / "gpg" / "public.asc"


def _gpg_dearmor(armored: bytes) -> bytes:
    return subprocess.run(["gpg", "--dearmor"], input=armored, capture_output=True,
                          check=True).stdout


def test_unarmor_is_gpg_dearmor() -> None:
    armored = PUBLIC.read_bytes()
    assert unarmor(armored) == _gpg_dearmor(armored)
    # a Comment header, CRLF line ends and no checksum line (RFC 9580 makes it optional)
    lines = armored.decode().splitlines()
    no_crc = [line for line in lines if not line.startswith("=")]
    commented = [no_crc[0], "Comment: made by hand", *no_crc[1:]]
    assert unarmor("\r\n".join(commented).encode()) == _gpg_dearmor(armored)
    assert crc24(b"") == 0xB704CE


@pytest.mark.parametrize("damage", ["checksum", "base64", "no-block", "other-kind", "empty"])
def test_unarmor_refuses_damaged_armor(damage: str) -> None:
    text = PUBLIC.read_text()
    lines = text.splitlines()
    body = [i for i, line in enumerate(lines) if line and not line.startswith(("-", "="))]
    if damage == "checksum":
        crc = next(i for i, line in enumerate(lines) if line.startswith("="))
        lines[crc] = "=AAAA" if lines[crc] != "=AAAA" else "=AAAB"
    elif damage == "base64":
        lines[body[1]] = lines[body[1]][:-4] + "!!!!"
    elif damage == "no-block":
        lines = lines[1:]
    elif damage == "other-kind":
        lines = [line.replace("PUBLIC KEY", "PRIVATE KEY") for line in lines]
    else:
        lines = [line for i, line in enumerate(lines) if i not in body and not
                 line.startswith("=")]
    with pytest.raises(ArmorError):
        unarmor("\n".join(lines).encode())


def test_published_binary_key_is_gpgs_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    repobuild("build", FIXTURES, "--out", out, "--keys", DEMO_KEYS, check=True)
    assert (out / "keys" / "repo.gpg").read_bytes() == _gpg_dearmor(
        (out / "keys" / "public.asc").read_bytes())
    assert (out / "keys" / "public.asc").read_bytes().strip() == PUBLIC.read_bytes().strip()


def test_a_secret_key_file_without_a_secret_key_is_refused(tmp_path: Path) -> None:
    keys = shutil.copytree(DEMO_KEYS, tmp_path / "keys")
    shutil.copy(PUBLIC, keys / "gpg" / "secret.asc")
    out = tmp_path / "out"
    proc = repobuild("build", FIXTURES, "--out", out, "--keys", keys)
    assert proc.returncode != 0
    assert "holds no usable OpenPGP secret key" in proc.stderr
    assert "secret.asc" in proc.stderr
    assert not out.exists()
