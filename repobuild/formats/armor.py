"""OpenPGP ASCII armor (RFC 4880 section 6): the binary packets inside an armored block.

The build publishes its public key both armored (keys/public.asc) and binary (keys/repo.gpg,
what apt's ``signed-by`` and gpgv take); taking the binary form out of the armor is a base64
decode, where asking gpg for it again cost a process per build.
"""

from __future__ import annotations

import base64
import binascii

_CRC24_INIT = 0xB704CE
_CRC24_POLY = 0x1864CFB


class ArmorError(ValueError):
    pass


def crc24(data: bytes) -> int:
    crc = _CRC24_INIT
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= _CRC24_POLY
    return crc & 0xFFFFFF


def unarmor(armored: bytes, kind: str = "PGP PUBLIC KEY BLOCK") -> bytes:
    """The packets of the one ``kind`` block in ``armored``; its checksum line, when there
    is one (RFC 9580 makes it optional), must match. ArmorError otherwise."""
    lines = [line.rstrip() for line in armored.decode("ascii", "strict").splitlines()]
    try:
        start = lines.index(f"-----BEGIN {kind}-----")
        stop = lines.index(f"-----END {kind}-----", start)
    except ValueError:
        raise ArmorError(f"no {kind}") from None
    body = [line.lstrip() for line in lines[start + 1:stop]]
    if "" in body:  # armor headers ("Comment: ..."), up to the first empty line
        body = body[body.index("") + 1:]
    checksum: str | None = None
    if body and body[-1].startswith("="):
        checksum = body.pop()[1:]
    try:
        data = base64.b64decode("".join(body), validate=True)
        if checksum is not None:
            want = int.from_bytes(base64.b64decode(checksum, validate=True), "big")
            if len(checksum) != 4 or crc24(data) != want:
                raise ArmorError("armor checksum mismatch")
    except binascii.Error as exc:
        raise ArmorError(f"bad base64 in the armor: {exc}") from None
    if not data:
        raise ArmorError(f"empty {kind}")
    return data
