"""The key folder (CONTRACT.md): generating it, and loading the signers a build needs."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repobuild.errors import UsageError, ValidationError
from repobuild.signing.cosign import public_key_hint
from repobuild.signing.gpg import GpgSigner, generate_gpg_key

DEMO_MARKER = "INSECURE-DEMO-KEYS"


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_trust(
    *,
    gpg_public: bytes,
    gpg_fingerprint: str,
    cosign_public: bytes | None,
    owner_public: bytes | None,
    owner_keyid: str | None,
) -> dict[str, Any]:
    """The public trust root verifiers pin: fingerprints and public keys, never a secret."""
    trust: dict[str, Any] = {
        "type": "repobuild-trust",
        "version": 1,
        "gpg": [{"fingerprint": gpg_fingerprint, "public_key": gpg_public.decode()}],
        "cosign": [],
        "sigstore": [],
        "intoto": {"owner": []},
    }
    if cosign_public is not None:
        trust["cosign"].append(
            {"hint": public_key_hint(cosign_public), "public_key": cosign_public.decode()}
        )
    if owner_public is not None and owner_keyid is not None:
        trust["intoto"]["owner"].append({"keyid": owner_keyid, "public_key": owner_public.decode()})
    # every configured kind of signature must hold by default
    trust["threshold"] = 1 + (1 if trust["cosign"] else 0)
    return trust


def generate_keys(
    keydir: Path, *, name: str, email: str, gpg_algo: str = "ed25519", force: bool = False
) -> dict[str, Any]:
    """Write a whole key folder; refuses to overwrite one unless ``force``."""
    if (keydir / "gpg" / "secret.asc").exists() and not force:
        raise UsageError("already holds keys (use --force to replace them)", keydir)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    created = int(epoch) if epoch and epoch.isdigit() else None
    secret, public, fpr = generate_gpg_key(name, email, gpg_algo, created=created)
    _write(keydir / "gpg" / "secret.asc", secret, secret=True)
    _write(keydir / "gpg" / "public.asc", public, secret=False)

    from repobuild.signing import cosign, intoto

    password = cosign.password_from_env()
    cosign_key, cosign_pub = cosign.generate_cosign_keypair(password)
    _write(keydir / "cosign.key", cosign_key, secret=True)
    _write(keydir / "cosign.pub", cosign_pub, secret=False)
    owner_key, owner_pub = intoto.generate_keypair()
    builder_key, builder_pub = intoto.generate_keypair()
    _write(keydir / "intoto" / "owner.key", owner_key, secret=True)
    _write(keydir / "intoto" / "owner.pub", owner_pub, secret=False)
    _write(keydir / "intoto" / "builder.key", builder_key, secret=True)
    _write(keydir / "intoto" / "builder.pub", builder_pub, secret=False)
    trust = make_trust(
        gpg_public=public,
        gpg_fingerprint=fpr,
        cosign_public=cosign_pub,
        owner_public=owner_pub,
        owner_keyid=intoto.key_id(owner_pub),
    )
    _write(keydir / "trust.json", json.dumps(trust, indent=2, sort_keys=True).encode() + b"\n",
           secret=False)
    return trust


@dataclass
class KeySet:
    """What a build signs with. Secret material stays inside the signers."""

    keydir: Path
    gpg: GpgSigner
    gpg_public: bytes
    gpg_public_binary: bytes  # the same key unarmored: keys/repo.gpg, apt's signed-by
    cosign: Any | None = None  # repobuild.signing.cosign.CosignSigner
    cosign_public: bytes | None = None
    owner_key: Any | None = None  # PEM bytes, or a UriSigner
    owner_public: bytes | None = None
    builder_key: Any | None = None
    builder_public: bytes | None = None
    trust: dict[str, Any] = field(default_factory=dict)
    insecure_demo: bool = False

    def close(self) -> None:
        self.gpg.close()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key file: {exc.strerror}", path) from None


def _signer_uris(keydir: Path, overrides: dict[str, str] | None) -> dict[str, str]:
    """Signer URIs from KEYDIR/signers.json, overridden by --signer ROLE=URI."""
    uris: dict[str, str] = {}
    path = keydir / "signers.json"
    if path.is_file():
        try:
            doc = json.loads(_read(path))
        except json.JSONDecodeError as exc:
            raise UsageError(f"invalid JSON: {exc}", path) from None
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise UsageError("must map roles to signer URIs", path)
        uris.update(doc)
    uris.update(overrides or {})
    return uris


def check_keydir(keydir: Path) -> None:
    """The cheap checks of load_keys, done first so a wrong folder fails before any work."""
    if not keydir.is_dir():
        raise UsageError("key folder not found (create one with 'repobuild keys generate')", keydir)
    if not (keydir / "gpg" / "secret.asc").is_file():
        raise UsageError("the key folder has no gpg/secret.asc", keydir)


def _load_cosign(keydir: Path) -> Any:
    from repobuild.process import background
    from repobuild.signing import cosign

    background(5)  # this thread only, which ends with the job: the build's thread comes first

    try:
        return cosign.load_cosign_private_key(
            _read(keydir / "cosign.key"),
            cosign.password_from_env(),
            source=str(keydir / "cosign.key"),
        )
    except ValidationError as exc:  # a wrong $COSIGN_PASSWORD is a configuration error
        raise UsageError(str(exc)) from None


def load_keys(
    keydir: Path, *, faked_time: int | None, signers: dict[str, str] | None = None
) -> KeySet:
    if not keydir.is_dir():
        raise UsageError("key folder not found (create one with 'repobuild keys generate')", keydir)
    secret = keydir / "gpg" / "secret.asc"
    if not secret.is_file():
        raise UsageError("the key folder has no gpg/secret.asc", keydir)
    uris = _signer_uris(keydir, signers)
    cosign_job: Future[Any] | None = None
    if "cosign" not in uris and (keydir / "cosign.key").is_file():
        # its scrypt (~0.1-0.2 s, without the GIL) runs while gpg takes in its key
        pool = ThreadPoolExecutor(max_workers=1)
        cosign_job = pool.submit(_load_cosign, keydir)
        pool.shutdown(wait=False)
    signer = GpgSigner(secret, faked_time=faked_time)
    ks = KeySet(keydir=keydir, gpg=signer, gpg_public=signer.public_key(armor=True),
                gpg_public_binary=signer.public_key(armor=False))
    try:
        ks.insecure_demo = (keydir / DEMO_MARKER).exists()
        trust_path = keydir / "trust.json"
        if trust_path.is_file():
            try:
                ks.trust = json.loads(_read(trust_path))
            except json.JSONDecodeError as exc:
                raise UsageError(f"invalid JSON: {exc}", trust_path) from None
        if uris:
            from repobuild.signing.uri import ROLES

            unknown = set(uris) - set(ROLES)
            if unknown:
                raise UsageError(f"unknown signer role(s): {', '.join(sorted(unknown))}", keydir)
        if "cosign" in uris:
            from repobuild.signing.uri import UriSigner

            ks.cosign = UriSigner(uris["cosign"], _read(keydir / "cosign.pub"), role="cosign")
            ks.cosign_public = ks.cosign.public_key_pem()
        elif cosign_job is not None:
            ks.cosign = cosign_job.result()
            ks.cosign_public = ks.cosign.public_key_pem()
        intoto_dir = keydir / "intoto"
        for role, attr in (("intoto-owner", "owner"), ("intoto-builder", "builder")):
            pub = intoto_dir / f"{attr}.pub"
            if role in uris:
                from repobuild.signing.uri import UriSigner

                setattr(ks, f"{attr}_key", UriSigner(uris[role], _read(pub), role=role))
                setattr(ks, f"{attr}_public", _read(pub))
            elif (intoto_dir / f"{attr}.key").is_file():
                setattr(ks, f"{attr}_key", _read(intoto_dir / f"{attr}.key"))
                setattr(ks, f"{attr}_public", _read(pub))
    except BaseException:
        signer.close()
        raise
    return ks
