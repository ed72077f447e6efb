"""Signing keys named by securesystemslib signer URIs (KMS, HSM, HashiCorp Vault, gpg-agent,
files), so production keys need never sit in the key folder.

    awskms:arn:aws:kms:…   gcpkms:projects/…/cryptoKeyVersions/1   azurekms:https://…
    hsm:                   hv:KEYNAME                               file2:/path/key.pem

The matching public key comes from the key folder (cosign.pub, intoto/owner.pub,
intoto/builder.pub), as the verifiers pin it.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization

from repobuild.errors import UsageError

ROLES = ("cosign", "intoto-owner", "intoto-builder")


class UriSigner:
    """A securesystemslib signer behind the repobuild ``sign(bytes) -> bytes`` interface."""

    def __init__(self, uri: str, public_pem: bytes, *, role: str) -> None:
        from securesystemslib.signer import Signer, SSlibKey

        from repobuild.signing.intoto import aws_signer_back

        aws_signer_back()  # in case an in-toto import left boto3 out of securesystemslib
        try:
            public = serialization.load_pem_public_key(public_pem)
            key = SSlibKey.from_crypto(public)
        except Exception as exc:
            raise UsageError(f"{role}: the public key for signer {uri!r} is unusable: {exc}") \
                from None
        try:
            self.sslib_signer: Any = Signer.from_priv_key_uri(uri, key)
        except Exception as exc:
            raise UsageError(f"{role}: cannot open signer {uri!r}: {exc}") from None
        self._public_pem = public_pem
        self.key_id = str(key.keyid)
        self.uri = uri

    def sign(self, data: bytes) -> bytes:
        try:
            sig = self.sslib_signer.sign(data)
        except Exception as exc:
            raise UsageError(f"signer {self.uri!r} failed: {exc}") from None
        return bytes.fromhex(sig.signature)

    def public_key_pem(self) -> bytes:
        return self._public_pem


def parse_signer_options(options: list[str]) -> dict[str, str]:
    """``ROLE=URI`` pairs from the command line."""
    out: dict[str, str] = {}
    for opt in options:
        role, sep, uri = opt.partition("=")
        if not sep or role not in ROLES or not uri:
            raise UsageError(
                f"--signer takes ROLE=URI with ROLE one of {', '.join(ROLES)}: {opt!r}"
            )
        out[role] = uri
    return out
