"""The trust policy verifiers pin (trust.json), and the check of index.json's signatures
against it: which keys count, and how many distinct keys must agree."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repobuild.errors import UsageError, VerificationError
from repobuild.signing.gpg import dearmor

KEYLESS_BUNDLE = "index.json.keyless.sigstore.json"
SIGNATURE_FILES = (
    "index.json.asc",
    "index.json.sig",
    "index.json.sigstore.json",
    KEYLESS_BUNDLE,
)


@dataclass(frozen=True)
class KeylessIdentity:
    identity: str
    issuer: str
    staging: bool = False


@dataclass
class TrustPolicy:
    gpg_public: list[bytes] = field(default_factory=list)  # armored public keys
    gpg_fingerprints: set[str] = field(default_factory=set)
    cosign_public: list[bytes] = field(default_factory=list)  # PEM
    keyless: list[KeylessIdentity] = field(default_factory=list)
    intoto_owners: list[bytes] = field(default_factory=list)  # PEM
    threshold: int = 1
    source: str = "trust.json"
    _keyring: bytes | None = None

    def keyring(self) -> bytes:
        """A binary OpenPGP keyring of the trusted keys, for gpgv."""
        if self._keyring is None:
            self._keyring = b"".join(dearmor(k) for k in self.gpg_public)
        return self._keyring


def _list(doc: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise UsageError(f"'{key}' must be a list", path)
    return value


def parse_trust(data: bytes, path: Path) -> TrustPolicy:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"not valid JSON: {exc}", path) from None
    if not isinstance(doc, dict) or doc.get("type") != "repobuild-trust":
        raise UsageError("not a repobuild trust root (type must be 'repobuild-trust')", path)
    policy = TrustPolicy(source=str(path))
    for entry in _list(doc, "gpg", path):
        if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
            raise UsageError("each 'gpg' entry needs a 'public_key'", path)
        policy.gpg_public.append(entry["public_key"].encode())
        fpr = entry.get("fingerprint")
        if isinstance(fpr, str):
            policy.gpg_fingerprints.add(re.sub(r"\s", "", fpr).upper())
    for entry in _list(doc, "cosign", path):
        if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
            raise UsageError("each 'cosign' entry needs a 'public_key'", path)
        policy.cosign_public.append(entry["public_key"].encode())
    for entry in _list(doc, "sigstore", path):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("identity", "issuer")
        ):
            raise UsageError("each 'sigstore' entry needs 'identity' and 'issuer'", path)
        policy.keyless.append(
            KeylessIdentity(entry["identity"], entry["issuer"], bool(entry.get("staging")))
        )
    intoto = doc.get("intoto", {})
    owners = intoto.get("owner", []) if isinstance(intoto, dict) else []
    for entry in owners if isinstance(owners, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
            policy.intoto_owners.append(entry["public_key"].encode())
    threshold = doc.get("threshold", 1)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise UsageError("'threshold' must be a positive integer", path)
    available = len(policy.gpg_public) + len(policy.cosign_public) + len(policy.keyless)
    if available == 0:
        raise UsageError("names no key or identity to trust", path)
    if threshold > available:
        raise UsageError(f"threshold {threshold} exceeds the {available} keys it names", path)
    policy.threshold = threshold
    return policy


def load_trust(path: Path) -> TrustPolicy:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the trust root: {exc.strerror}", path) from None
    return parse_trust(data, path)


@dataclass
class SignatureResult:
    kind: str  # gpg, cosign, sigstore-key, sigstore-keyless
    key: str  # who signed (fingerprint, key hint, identity), or "" when unknown
    ok: bool
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "ok": self.ok, "reason": self.reason}


def gpgv_verify(keyring: bytes, signature: bytes, data: bytes | None) -> tuple[bool, str, str]:
    """Run gpgv; returns (ok, primary fingerprint, reason). ``data`` None: clear-signed input."""
    with tempfile.TemporaryDirectory(prefix="rbv-") as tmp:
        ring = Path(tmp) / "trusted.gpg"
        ring.write_bytes(keyring)
        sig = Path(tmp) / "sig"
        sig.write_bytes(signature)
        cmd = ["gpgv", "--status-fd", "1", "--keyring", str(ring), str(sig)]
        if data is not None:
            (Path(tmp) / "data").write_bytes(data)
            cmd.append(str(Path(tmp) / "data"))
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    status = proc.stdout.decode("utf-8", "replace")
    fpr = ""
    for line in status.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == "VALIDSIG":
            fpr = parts[-1] if len(parts) >= 12 else parts[2]
    if proc.returncode == 0 and fpr:
        return True, fpr.upper(), ""
    if "NO_PUBKEY" in status or proc.returncode == 2:
        return False, "", "signed by a key that is not trusted"
    if "BADSIG" in status:
        return False, "", "bad signature (content or signature changed)"
    return False, "", "no valid signature"


def gpg_clearsigned_text(inrelease: bytes) -> bytes:
    """The text a clear-signed document signs (dash-escaping undone)."""
    lines = inrelease.split(b"\n")
    try:
        start = lines.index(b"-----BEGIN PGP SIGNED MESSAGE-----")
        body_start = lines.index(b"", start) + 1
        end = lines.index(b"-----BEGIN PGP SIGNATURE-----", body_start)
    except ValueError:
        raise VerificationError("not a clear-signed document") from None
    body = [ln[2:] if ln.startswith(b"- ") else ln for ln in lines[body_start:end]]
    return b"\n".join(body) + b"\n"


def check_signatures(
    policy: TrustPolicy, data: bytes, signatures: dict[str, bytes | None]
) -> tuple[bool, list[SignatureResult]]:
    """Count distinct trusted keys whose signature over ``data`` verifies."""
    results: list[SignatureResult] = []
    trusted: set[str] = set()
    asc = signatures.get("index.json.asc")
    if policy.gpg_public:
        if asc is None:
            results.append(SignatureResult("gpg", "", False, "index.json.asc is missing"))
        else:
            ok, fpr, reason = gpgv_verify(policy.keyring(), asc, data)
            if ok and policy.gpg_fingerprints and fpr not in policy.gpg_fingerprints:
                ok, reason = False, f"signed by {fpr}, which trust.json does not name"
            results.append(SignatureResult("gpg", fpr, ok, reason))
            if ok:
                trusted.add(f"gpg:{fpr}")
    if policy.cosign_public:
        _check_cosign(policy, data, signatures, results, trusted)
    if policy.keyless:
        _check_keyless(policy, data, signatures.get(KEYLESS_BUNDLE), results, trusted)
    return len(trusted) >= policy.threshold, results


def _check_cosign(
    policy: TrustPolicy,
    data: bytes,
    signatures: dict[str, bytes | None],
    results: list[SignatureResult],
    trusted: set[str],
) -> None:
    """index.json.sig and the key-based bundle: each present file must verify under some
    trusted cosign key; a key counts once whichever of the two it verified."""
    from repobuild.signing.cosign import public_key_hint, verify_cosign_signature
    from repobuild.signing.sigstore_bundle import verify_key_bundle

    def sig_ok(pub: bytes, blob: bytes) -> bool:
        return verify_cosign_signature(pub, data, blob)

    def bundle_ok(pub: bytes, blob: bytes) -> bool:
        try:
            verify_key_bundle(blob, data, pub)
        except VerificationError:
            return False
        return True

    present = False
    for name, kind, check in (
        ("index.json.sig", "cosign", sig_ok),
        ("index.json.sigstore.json", "sigstore-key", bundle_ok),
    ):
        blob = signatures.get(name)
        if blob is None:
            continue
        present = True
        hints = [public_key_hint(pub) for pub in policy.cosign_public if check(pub, blob)]
        if hints:
            results.append(SignatureResult(kind, hints[0], True))
            trusted.add(f"cosign:{hints[0]}")
        else:
            results.append(
                SignatureResult(kind, "", False, f"{name} does not verify under a trusted key")
            )
    if not present:
        results.append(SignatureResult("cosign", "", False, "index.json.sig is missing"))


def _check_keyless(
    policy: TrustPolicy,
    data: bytes,
    bundle: bytes | None,
    results: list[SignatureResult],
    trusted: set[str],
) -> None:
    from repobuild.signing.sigstore_bundle import verify_keyless_bundle

    if bundle is None:
        results.append(SignatureResult("sigstore-keyless", "", False, f"{KEYLESS_BUNDLE} missing"))
        return
    for ident in policy.keyless:
        who = f"{ident.identity} ({ident.issuer})"
        try:
            verify_keyless_bundle(bundle, data, ident.identity, ident.issuer,
                                  staging=ident.staging)
        except VerificationError as exc:
            results.append(SignatureResult("sigstore-keyless", who, False, str(exc)))
        else:
            results.append(SignatureResult("sigstore-keyless", who, True))
            trusted.add(f"keyless:{who}")
