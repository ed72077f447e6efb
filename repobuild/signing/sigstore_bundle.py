"""Sigstore bundles (v0.3, protobuf-specs JSON form) for cosign-style key signatures.

A key bundle is what ``cosign sign-blob --key --bundle`` writes without a transparency log:
the public key's hint as verification material, the SHA-256 digest of the blob and the DER
ECDSA signature. ``cosign verify-blob --bundle B --key cosign.pub --insecure-ignore-tlog`` and
the npm package ``@sigstore/verify`` accept it offline.

Keyless bundles (Fulcio certificate, Rekor entry) are verified with sigstore-python against
its bundled trust root, without network access.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from repobuild.errors import ValidationError, VerificationError
from repobuild.signing.cosign import (
    public_key_hint,
    verify_cosign_digest,
    verify_cosign_signature,
)

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_ACCEPTED_MEDIA_TYPES = (
    BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
)
_DIGEST_ALGORITHM = "SHA2_256"


def make_key_bundle(data: bytes, signature_der: bytes, public_key_pem: bytes) -> bytes:
    """A canonical (sorted keys, compact) Sigstore v0.3 bundle for a key signature of ``data``.

    The signature is checked first, so that no bundle is written that would not verify.
    """
    return make_key_bundle_for_digest(hashlib.sha256(data).digest(), signature_der,
                                      public_key_pem)


def make_key_bundle_for_digest(
    digest: bytes, signature_der: bytes, public_key_pem: bytes
) -> bytes:
    """:func:`make_key_bundle` for data known by its SHA-256 only."""
    if not verify_cosign_digest(public_key_pem, digest, signature_der):
        raise VerificationError("signature does not verify under the bundle's public key")
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": public_key_hint(public_key_pem)},
            "tlogEntries": [],
        },
        "messageSignature": {
            "messageDigest": {
                "algorithm": _DIGEST_ALGORITHM,
                "digest": _b64(digest),
            },
            "signature": _b64(signature_der),
        },
    }
    return json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode("ascii")


def verify_key_bundle(bundle_json: bytes, data: bytes, public_key_pem: bytes) -> None:
    """Check a key bundle over ``data`` against a pinned public key; VerificationError if not.

    Transparency-log entries, if any, are not checked (like ``--insecure-ignore-tlog``): the
    trust comes from the pinned key.
    """
    bundle = _load_bundle(bundle_json)
    _check_key_material(bundle, public_key_pem)
    message = _message_signature(bundle)
    _check_digest(message, data)
    signature = _b64_field(message, "signature")
    try:
        good = verify_cosign_signature(public_key_pem, data, base64.b64encode(signature))
    except ValidationError as err:
        raise VerificationError(f"bundle check: {err}") from None
    if not good:
        raise VerificationError("bundle signature does not verify: data or signature changed")


def verify_keyless_bundle(
    bundle_json: bytes,
    data: bytes,
    identity: str,
    issuer: str,
    *,
    staging: bool = False,
) -> None:
    """Verify a keyless (Fulcio + Rekor) bundle offline with sigstore-python.

    Uses sigstore-python's cached or bundled trust root for the production (or staging)
    instance; no network access. Raises VerificationError naming the reason.
    """
    # sigstore is heavy to import: load it only when a keyless bundle is checked.
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity

    try:
        bundle = Bundle.from_json(bundle_json)
        with _quiet_tuf_logger():
            verifier = (
                Verifier.staging(offline=True) if staging else Verifier.production(offline=True)
            )
        verifier.verify_artifact(data, bundle, Identity(identity=identity, issuer=issuer))
    except (SigstoreError, ValueError) as err:
        raise VerificationError(f"keyless bundle refused: {_one_line(err)}") from None


# --- helpers ----------------------------------------------------------------------------------


def _load_bundle(bundle_json: bytes) -> dict[str, Any]:
    try:
        bundle = json.loads(bundle_json)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerificationError("bundle is not JSON") from None
    if not isinstance(bundle, dict):
        raise VerificationError("bundle is not a JSON object")
    media_type = bundle.get("mediaType")
    if media_type not in _ACCEPTED_MEDIA_TYPES:
        raise VerificationError(f"unsupported bundle media type {media_type!r} (want v0.3)")
    return bundle


def _check_key_material(bundle: dict[str, Any], public_key_pem: bytes) -> None:
    material = bundle.get("verificationMaterial")
    if not isinstance(material, dict) or not isinstance(material.get("publicKey"), dict):
        raise VerificationError("bundle has no public-key verification material")
    hint = material["publicKey"].get("hint")
    try:
        expected = public_key_hint(public_key_pem)
    except ValidationError as err:
        raise VerificationError(f"bundle check: {err}") from None
    if hint not in (None, "", expected):
        raise VerificationError(f"bundle names key {hint!r}, not the trusted key {expected!r}")


def _message_signature(bundle: dict[str, Any]) -> dict[str, Any]:
    message = bundle.get("messageSignature")
    if not isinstance(message, dict):
        raise VerificationError("bundle holds no messageSignature")
    return message


def _check_digest(message: dict[str, Any], data: bytes) -> None:
    digest = message.get("messageDigest")
    if not isinstance(digest, dict) or digest.get("algorithm") != _DIGEST_ALGORITHM:
        raise VerificationError("bundle message digest is missing or not SHA2_256")
    if _b64_field(digest, "digest") != hashlib.sha256(data).digest():
        raise VerificationError("bundle message digest does not match the data")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64_field(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise VerificationError(f"bundle field {name!r} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise VerificationError(f"bundle field {name!r} is not base64") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


@contextlib.contextmanager
def _quiet_tuf_logger() -> Iterator[None]:
    """Hide sigstore-python's 'offline mode' warning: offline is what we asked for."""
    logger = logging.getLogger("sigstore._internal.tuf")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)
