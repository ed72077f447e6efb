"""cosign-compatible ECDSA P-256 keys and signatures.

The private key file is what ``cosign generate-key-pair`` writes: a PEM block labelled
``ENCRYPTED SIGSTORE PRIVATE KEY`` (older cosign: ``ENCRYPTED COSIGN PRIVATE KEY``) whose body
is a compact JSON envelope::

    {"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"<b64>"},
     "cipher":{"name":"nacl/secretbox","nonce":"<b64>"},"ciphertext":"<b64>"}

The ciphertext is NaCl secretbox (XSalsa20-Poly1305) of the PKCS#8 DER private key, under a
32-byte key derived with scrypt from the password and the 32-byte salt. cosign writes N = 2^15
(as the keys it wrote in ../shared/fixtures/interop/cosign-go show) and reads 2^15, 2^16 or 2^17
with r=8 and p=1, and encrypts even when the password is empty. Keys are written with cosign's
2^15: the key is unlocked at every build, and 2^16 took ~0.17 CPU-s of it.

Signatures are what ``cosign sign-blob --key`` makes: an ASN.1 DER ECDSA signature over the
SHA-256 digest of the blob, written base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from repobuild.errors import UsageError, ValidationError

SIGSTORE_KEY_LABEL = "ENCRYPTED SIGSTORE PRIVATE KEY"
COSIGN_KEY_LABEL = "ENCRYPTED COSIGN PRIVATE KEY"
PASSWORD_ENV = "COSIGN_PASSWORD"

_ACCEPTED_LABELS = (SIGSTORE_KEY_LABEL, COSIGN_KEY_LABEL)
_ACCEPTED_N_LOG2 = (15, 16, 17)
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_LEN = 32
_KEY_LEN = 32
_PEM_LINE = 64
_PEM_RE = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\r?\n(?P<body>.*?)-----END (?P=label)-----",
    re.DOTALL,
)
_WRONG_PASSWORD = "cannot decrypt cosign key: wrong password or corrupt key"


class CosignSigner:
    """Signs with an ECDSA P-256 key the way ``cosign sign-blob --key`` does."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValidationError("cosign key is not an ECDSA P-256 key")
        self._key = private_key
        #: the key hint cosign and Sigstore bundles use: base64(SHA-256(SPKI DER))
        self.key_id = public_key_hint(self.public_key_pem())

    def sign(self, data: bytes) -> bytes:
        """DER-encoded ECDSA signature over SHA-256 of ``data``."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def sign_digest(self, digest: bytes) -> bytes:
        """:meth:`sign` for data known by its SHA-256 only (a file streamed to disk)."""
        return self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    def sign_blob_b64(self, data: bytes) -> bytes:
        """The signature as ``cosign sign-blob --output-signature`` writes it (no newline)."""
        return base64.b64encode(self.sign(data))

    def public_key_pem(self) -> bytes:
        """The public key as ``cosign generate-key-pair`` writes ``cosign.pub``."""
        return _public_pem(self._key.public_key())


def generate_cosign_keypair(password: bytes, *, n_log2: int = 15) -> tuple[bytes, bytes]:
    """Return (encrypted private key PEM, public key PEM) for a new ECDSA P-256 key."""
    if n_log2 not in _ACCEPTED_N_LOG2:
        raise UsageError(f"scrypt cost 2^{n_log2} is not one cosign reads (2^15, 2^16, 2^17)")
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    envelope = _encrypt(der, password, n=1 << n_log2)
    return _pem_encode(SIGSTORE_KEY_LABEL, envelope), _public_pem(key.public_key())


def load_cosign_private_key(
    pem: bytes, password: bytes, *, source: str = "cosign.key"
) -> CosignSigner:
    """Decrypt a cosign private key file; every failure is one clear ValidationError."""
    envelope = _parse_envelope(_pem_decode(pem, source), source)
    der = _decrypt(envelope, password, source)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError:
        raise ValidationError("cosign key holds no valid PKCS#8 private key", path=source) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValidationError("cosign key is not an ECDSA P-256 key", path=source)
    return CosignSigner(key)


def verify_cosign_signature(pub_pem: bytes, data: bytes, sig_b64: bytes) -> bool:
    """True when ``sig_b64`` (cosign's base64 DER signature) signs ``data`` under ``pub_pem``.

    A malformed public key raises ValidationError; a malformed signature is simply not valid.
    """
    public_key = load_cosign_public_key(pub_pem)
    try:
        signature = base64.b64decode(b"".join(sig_b64.split()), validate=True)
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, InvalidSignature):
        return False
    return True


def verify_cosign_digest(pub_pem: bytes, digest: bytes, signature_der: bytes) -> bool:
    """:func:`verify_cosign_signature` for data known by its SHA-256 only."""
    try:
        load_cosign_public_key(pub_pem).verify(
            signature_der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def load_cosign_public_key(
    pub_pem: bytes, *, source: str = "cosign.pub"
) -> ec.EllipticCurvePublicKey:
    """Parse an ECDSA P-256 public key PEM (``PUBLIC KEY``, SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(pub_pem)
    except ValueError:
        raise ValidationError("not a PEM public key", path=source) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValidationError("public key is not an ECDSA P-256 key", path=source)
    return key


def public_key_hint(pub_pem: bytes) -> str:
    """base64(SHA-256(SPKI DER)): the key hint cosign writes into Sigstore bundles."""
    spki = load_cosign_public_key(pub_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def password_from_env() -> bytes:
    """The key password from ``$COSIGN_PASSWORD``; unset means the empty password."""
    value = os.environ.get(PASSWORD_ENV, "")
    return os.fsencode(value)


# --- envelope -------------------------------------------------------------------------------


def _encrypt(plaintext: bytes, password: bytes, *, n: int) -> bytes:
    salt = secrets.token_bytes(_SALT_LEN)
    nonce = secrets.token_bytes(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_derive_key(password, salt, n))
    ciphertext = box.encrypt(plaintext, nonce).ciphertext
    # Field order and compact separators follow what cosign's Go encoder writes.
    envelope = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": n, "r": _SCRYPT_R, "p": _SCRYPT_P},
            "salt": _b64(salt),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
        "ciphertext": _b64(ciphertext),
    }
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def _decrypt(envelope: dict[str, Any], password: bytes, source: str) -> bytes:
    kdf, cipher = envelope["kdf"], envelope["cipher"]
    params = kdf["params"]
    key = _derive_key(password, _b64_field(kdf, "salt", source), params["N"])
    nonce = _b64_field(cipher, "nonce", source)
    ciphertext = _b64_field(envelope, "ciphertext", source)
    try:
        return nacl.secret.SecretBox(key).decrypt(ciphertext, nonce)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise ValidationError(_WRONG_PASSWORD, path=source) from None


def _parse_envelope(body: bytes, source: str) -> dict[str, Any]:
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValidationError("cosign key is not a JSON envelope", path=source) from None
    if not isinstance(envelope, dict):
        raise ValidationError("cosign key is not a JSON envelope", path=source)
    kdf, cipher = envelope.get("kdf"), envelope.get("cipher")
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise ValidationError("cosign key: unsupported key derivation (want scrypt)", path=source)
    if not isinstance(cipher, dict) or cipher.get("name") != "nacl/secretbox":
        raise ValidationError("cosign key: unsupported cipher (want nacl/secretbox)", path=source)
    _check_scrypt_params(kdf.get("params"), source)
    return envelope


def _check_scrypt_params(params: object, source: str) -> None:
    accepted = [{"N": 1 << k, "r": _SCRYPT_R, "p": _SCRYPT_P} for k in _ACCEPTED_N_LOG2]
    exact_ints = isinstance(params, dict) and all(type(v) is int for v in params.values())
    if not exact_ints or params not in accepted:
        raise ValidationError(
            f"cosign key: unsupported scrypt parameters {json.dumps(params)} "
            "(cosign reads N=2^15, 2^16 or 2^17 with r=8, p=1)",
            path=source,
        )


def _derive_key(password: bytes, salt: bytes, n: int) -> bytes:
    """scrypt, by libsodium (through PyNaCl, which opens the key's secretbox as well): ~60 ms
    at cosign's N = 2^15 on this machine, against ~85 ms by OpenSSL (cryptography's Scrypt,
    used where libsodium was built without it). The same bytes either way (test)."""
    if nacl.bindings.has_crypto_pwhash_scryptsalsa208sha256:
        return nacl.bindings.crypto_pwhash_scryptsalsa208sha256_ll(
            password, salt, n, _SCRYPT_R, _SCRYPT_P, dklen=_KEY_LEN,
            maxmem=2 * 128 * _SCRYPT_R * _SCRYPT_P * n)
    return Scrypt(salt=salt, length=_KEY_LEN, n=n, r=_SCRYPT_R, p=_SCRYPT_P).derive(password)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64_field(obj: dict[str, Any], name: str, source: str) -> bytes:
    value = obj.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError(name)
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(f"cosign key: field {name!r} is not base64", path=source) from None


# --- PEM --------------------------------------------------------------------------------------


def _pem_encode(label: str, body: bytes) -> bytes:
    text = base64.b64encode(body).decode("ascii")
    lines = [text[i : i + _PEM_LINE] for i in range(0, len(text), _PEM_LINE)]
    block = [f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]
    return "\n".join(block).encode("ascii")


def _pem_decode(pem: bytes, source: str) -> bytes:
    match = _PEM_RE.search(pem)
    if match is None:
        raise ValidationError("not a PEM file", path=source)
    label = match.group("label").decode("ascii")
    if label not in _ACCEPTED_LABELS:
        raise ValidationError(
            f"PEM block is {label!r}, not an encrypted cosign private key", path=source
        )
    try:
        return base64.b64decode(b"".join(match.group("body").split()), validate=True)
    except binascii.Error:
        raise ValidationError("PEM body is not base64", path=source) from None


def _public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
