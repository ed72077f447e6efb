"""One small interface: bytes in, signature bytes out. Keys never leave the signer."""

from __future__ import annotations

from typing import Protocol


class Signer(Protocol):
    #: a short public identifier: a GPG fingerprint, a cosign key hint, an in-toto keyid
    key_id: str

    def sign(self, data: bytes) -> bytes: ...
