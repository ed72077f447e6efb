"""Optional keyless Sigstore signing (OIDC identity → Fulcio certificate → Rekor entry).

It needs the network and an identity token (given, or ambient in CI); when either is missing it
raises KeylessError with one clear line, and the caller carries on without the bundle.
"""

from __future__ import annotations


class KeylessError(Exception):
    pass


def sign_keyless(data: bytes, *, identity_token: str | None, staging: bool = False) -> bytes:
    """A Sigstore bundle (JSON bytes) over ``data``, signed keylessly."""
    try:
        from sigstore.models import ClientTrustConfig
        from sigstore.oidc import IdentityToken, detect_credential
        from sigstore.sign import SigningContext
    except ImportError as exc:  # pragma: no cover - sigstore is a dependency
        raise KeylessError(f"sigstore-python is not installed: {exc}") from None
    raw = identity_token
    if raw is None:
        try:
            raw = detect_credential()
        except Exception as exc:
            raise KeylessError(f"no ambient OIDC credential: {exc}") from None
    if not raw:
        raise KeylessError(
            "no OIDC identity token: pass --identity-token, or run where an ambient "
            "credential exists (e.g. GitHub Actions with id-token: write)"
        )
    try:
        token = IdentityToken(raw)
        config = ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
        context = SigningContext.from_trust_config(config)
        with context.signer(token, cache=True) as signer:
            bundle = signer.sign_artifact(data)
        return bundle.to_json().encode()
    except Exception as exc:
        first = (str(exc) or type(exc).__name__).strip().splitlines()[0]
        raise KeylessError(f"keyless Sigstore signing failed: {first}") from None
