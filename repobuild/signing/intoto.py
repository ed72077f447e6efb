"""in-toto supply-chain metadata for a built repository.

The build writes two files into ``OUT/in-toto/``:

``root.layout``
    signed by the layout owner; it names the builder's key as the functionary of the ``build``
    step and carries an inspection, ``verify-tree``, whose rules tie every file of the audited
    tree to the build step's recorded products.
``build.<keyid8>.link``
    signed by the builder; its materials are the files of the release tree (SOURCE) and its
    products the files of the output tree, each with its SHA-256 (the build hashed them already:
    nothing is re-hashed here).

An auditor checks a copy of OUT by running, at its root::

    in-toto-verify --layout in-toto/root.layout --link-dir in-toto --verification-keys owner.pub

Keys are Ed25519 (PKCS#8 PEM private, SubjectPublicKeyInfo PEM public): securesystemslib 1.x
loads them from PEM without any extra parameter, and Ed25519 signatures are deterministic, so
the layout and link bytes depend only on their inputs and keys, never on the clock.

What ``in-toto-verify`` does (in-toto 3.1), which shapes the inspection's rules:

* it runs the inspection command in the working folder and records every file below it, before
  (materials) and after (products), *except* paths matching its built-in exclude patterns
  ``*.link*``, ``.git``, ``*.pyc`` and ``*~`` (gitignore style, at any depth);
* it then writes the inspection's own link, ``verify-tree.link``, into the working folder;
* rule patterns are ``fnmatch`` patterns, whose ``*`` crosses ``/``.

The inspection therefore requires (REQUIRE, optional: ``required_paths``) the files that must be
present, consumes every file identical to a build product (``MATCH * WITH PRODUCTS FROM build``),
allows the few files that are legitimately not build products (``index.json`` and its
signatures, ``in-toto/*``, the local ``.repobuild/*`` state, the verifier's ``owner.pub`` and its
own ``verify-tree.link``) and disallows everything else: an extra file, or a changed build
product, fails the verification.
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import hashlib
import importlib
import json
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from repobuild.errors import ValidationError, VerificationError

__all__ = [
    "BUILD_STEP",
    "EXPECTED_COMMAND",
    "INSPECTION",
    "INSPECTION_RUN",
    "LAYOUT_NAME",
    "RESERVED_PATTERNS",
    "generate_keypair",
    "key_id",
    "link_name",
    "make_layout",
    "make_link",
    "verify_layout",
]

BUILD_STEP = "build"
INSPECTION = "verify-tree"
LAYOUT_NAME = "root.layout"
LINK_DIR = "in-toto"
EXPECTED_COMMAND: tuple[str, ...] = ("repobuild", "build")
# Harmless, and present on every POSIX system (coreutils, busybox, BSD): the inspection only
# exists so that in-toto-verify records the files of the tree it runs in.
INSPECTION_RUN: tuple[str, ...] = ("true",)

# Files of a served tree that are legitimately not products of the build step: they are written
# after the link (index.json lists the link, its signatures cover index.json), or they are the
# in-toto metadata itself, or local state that is never served (CONTRACT.md, guarantee 1).
RESERVED_PATTERNS: tuple[str, ...] = (
    "index.json",
    "index.json.asc",
    "index.json.sig",
    "index.json.sigstore.json",
    f"{LINK_DIR}/*",
    ".repobuild/*",
)
# Files a verifier may add at the root of its copy: the layout key named as in CONTRACT.md's
# command line. Deliberately not "*.pub": fnmatch's "*" crosses "/", so that pattern would also
# let a tampered keys/cosign.pub or an artifact named *.pub through.
DEFAULT_VERIFIER_FILES: tuple[str, ...] = ("owner.pub",)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_GLOB_CHARS = re.compile(r"([*?\[])")


# --------------------------------------------------------------------------------------- keys


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key: (PKCS#8 PEM private key, SubjectPublicKeyInfo PEM public key)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


_AWS_LEFT_OUT = False  # securesystemslib.signer was imported without boto3


def _import_sslib() -> None:
    """Import ``securesystemslib.signer`` (in-toto imports it too) without boto3.

    Its AWS KMS signer imports boto3 when it can, ~0.12 s that hold the GIL: a tenth of adding
    one package to a 10,000-artifact repository. In-toto's keys here are local files, so boto3
    is hidden from that one import (unless something loaded it already); :func:`aws_signer_back`
    puts it back for a build whose signer URI is ``awskms:``.
    """
    global _AWS_LEFT_OUT
    if "securesystemslib.signer" in sys.modules or "boto3" in sys.modules:
        return
    sys.modules["boto3"] = None  # type: ignore[assignment]  # makes 'import boto3' fail
    try:
        import securesystemslib.signer  # noqa: F401
    finally:
        if "boto3" in sys.modules and sys.modules["boto3"] is None:
            del sys.modules["boto3"]
    import securesystemslib.signer._aws_signer as aws

    _AWS_LEFT_OUT = bool(aws.AWS_IMPORT_ERROR)


def aws_signer_back() -> None:
    """Undo :func:`_import_sslib`'s hiding of boto3 (a reload of the AWS signer's module, whose
    functions then see boto3), for a signer URI that needs it."""
    global _AWS_LEFT_OUT
    if not _AWS_LEFT_OUT:
        return
    import securesystemslib.signer._aws_signer as aws

    importlib.reload(aws)
    _AWS_LEFT_OUT = False


def _sslib_key(public_pem: bytes) -> Any:
    _import_sslib()
    from securesystemslib.signer import SSlibKey

    try:
        public = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"not a PEM public key ({exc})") from exc
    try:
        return SSlibKey.from_crypto(public)
    except Exception as exc:  # securesystemslib raises its own types for unsupported keys
        raise ValidationError(f"unsupported in-toto public key ({exc})") from exc


# An Ed25519 key (the keys repobuild makes) is handled here, without importing
# securesystemslib and in-toto: ~0.1 s of imports that hold the GIL, at every build, while the
# build's own thread renders. The keyid, the key's dict and the signatures are the ones
# securesystemslib makes (its compute_default_keyid, SSlibKey.to_dict, CryptoSigner); tests
# hold them to it. Any other key goes through securesystemslib.


def _ed25519_dict(public: Ed25519PublicKey) -> dict[str, Any]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    data: dict[str, Any] = {"keytype": "ed25519", "keyval": {"public": raw.hex()},
                            "scheme": "ed25519"}
    # the canonical JSON of these hex and name strings is json.dumps, sorted and compact
    data["keyid"] = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"))
                                   .encode()).hexdigest()
    return data


def _key_dict(public_pem: bytes) -> dict[str, Any]:
    """The key as in-toto's layout and verifier carry it (legacy dict with its keyid)."""
    try:
        public = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"not a PEM public key ({exc})") from exc
    if isinstance(public, Ed25519PublicKey):
        return _ed25519_dict(public)
    key = _sslib_key(public_pem)
    data: dict[str, Any] = key.to_dict()
    data["keyid"] = key.keyid
    return data


def key_id(public_pem: bytes) -> str:
    """The keyid in-toto computes for this public key (what `in-toto-verify` loads)."""
    return str(_key_dict(public_pem)["keyid"])


class _Ed25519Signer:
    """Signs as securesystemslib's CryptoSigner does for an Ed25519 key (deterministic)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.keyid: str = _ed25519_dict(private.public_key())["keyid"]

    def sign(self, data: bytes | memoryview) -> dict[str, str]:
        # bytes-like as it is: a copy of a 100,000-artifact link is ~60 MB at the build's peak
        return {"keyid": self.keyid, "sig": self._private.sign(data).hex()}


class _SslibSigner:
    """A securesystemslib signer (from a signer URI), seen as :class:`_Ed25519Signer` is."""

    def __init__(self, signer: Any) -> None:
        self._signer = signer
        self.keyid: str = signer.public_key.keyid

    def sign(self, data: bytes | memoryview) -> dict[str, str]:
        return dict(self._signer.sign(data).to_dict())


def _signer(private_pem: Any) -> _Ed25519Signer | _SslibSigner:
    """A signer from PEM bytes; a signer object (from a URI) is used through its
    securesystemslib signer."""
    if not isinstance(private_pem, bytes):
        _import_sslib()
        return _SslibSigner(getattr(private_pem, "sslib_signer", private_pem))
    try:
        private = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(private, Ed25519PrivateKey):
        # ECDSA would verify too, but its signatures are randomised: the layout and link bytes
        # would change at every build (CONTRACT.md, guarantee 4).
        raise ValidationError("in-toto keys must be Ed25519 (PKCS#8 PEM)")
    return _Ed25519Signer(private)


def link_name(public_pem: bytes, step: str = BUILD_STEP) -> str:
    """The file name in-toto looks for: ``<step>.<first 8 hex digits of the keyid>.link``."""
    return f"{step}.{key_id(public_pem)[:8]}.link"


# ----------------------------------------------------------------------------------- helpers


def _dumps(document: Mapping[str, Any]) -> bytes:
    """Deterministic JSON: sorted keys, no insignificant white space, UTF-8, final newline."""
    return (
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    ).encode("utf-8")


def _escape(name: str) -> str:
    """An fnmatch pattern matching exactly ``name``."""
    return _GLOB_CHARS.sub(r"[\1]", name)


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError("layout expiry must be a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_path(path: str, what: str) -> None:
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ValidationError(f"{what} path {path!r} is not a clean relative path")


_CLEAN_PATH = re.compile(r"(?!/)(?:(?!\.\.?(?:/|$))[^/\\\x00]+(?:/|$))+")


def _artifacts(entries: Mapping[str, str], what: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for path, digest in entries.items():
        _check_entry(path, digest, what)
        out[path] = {"sha256": digest}
    return out


def _check_entry(path: str, digest: str, what: str) -> None:
    if not (isinstance(path, str) and _CLEAN_PATH.fullmatch(path)) or path.endswith("/"):
        _check_path(path, what)  # raises with the reason
        raise ValidationError(f"{what} path {path!r} is not a clean relative path")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise ValidationError(f"{what} {path!r}: sha256 must be 64 lowercase hex digits")


# ------------------------------------------------------------------------------------ layout


def _build_step_rules(
    source_names: Iterable[str] | None,
) -> tuple[list[list[str]], list[list[str]]]:
    if source_names is None:
        materials: list[list[str]] = [["ALLOW", "*"]]
    else:
        names = sorted(set(source_names))
        for name in names:
            _check_path(name, "source")
        # The release is exactly these files: each one present, nothing else.
        materials = [["REQUIRE", n] for n in names]
        materials += [["ALLOW", _escape(n)] for n in names]
        materials.append(["DISALLOW", "*"])
    # The step's products are the served tree minus what is written after the link or never
    # served: keeping those apart is what lets the inspection ALLOW them by name.
    products = [["DISALLOW", p] for p in RESERVED_PATTERNS]
    products.append(["ALLOW", "*"])
    return materials, products


def _hidden_from_in_toto_verify() -> Any:
    """in-toto-verify's default exclude patterns, as it applies them when recording."""
    _import_sslib()
    from in_toto.settings import ARTIFACT_EXCLUDE_PATTERNS
    from pathspec import GitIgnoreSpec

    return GitIgnoreSpec.from_lines(ARTIFACT_EXCLUDE_PATTERNS)


def _inspection_rules(
    required_paths: Iterable[str] | None, verifier_files: Sequence[str]
) -> list[list[str]]:
    rules: list[list[str]] = []
    if required_paths is not None:
        hidden = _hidden_from_in_toto_verify()
        # REQUIRE looks at the not-yet-consumed artifacts: it must come before MATCH.
        for path in sorted(set(required_paths)):
            _check_path(path, "required")
            if not hidden.match_file(path):  # in-toto-verify would never see it
                rules.append(["REQUIRE", path])
    rules.append(["MATCH", "*", "WITH", "PRODUCTS", "FROM", BUILD_STEP])
    allowed = [*RESERVED_PATTERNS, f"{INSPECTION}.link", *verifier_files]
    rules += [["ALLOW", p] for p in allowed]
    rules.append(["DISALLOW", "*"])
    return rules


def make_layout(
    owner_private_pem: Any,
    builder_public_pem: bytes,
    *,
    expires: datetime,
    source_names: Iterable[str] | None = None,
    required_paths: Iterable[str] | None = None,
    verifier_files: Sequence[str] = DEFAULT_VERIFIER_FILES,
    expected_command: Sequence[str] = EXPECTED_COMMAND,
    readme: str = "",
) -> bytes:
    """A signed in-toto layout (classic Metablock JSON), deterministic for the same inputs.

    ``expires``: when the layout stops verifying (timezone-aware; written to the second, UTC).
    ``source_names``: when given, the build step's materials must be exactly these SOURCE paths.
    ``required_paths``: when given (typically the link's products), each must exist in the
    audited tree, so that a deleted file fails too (one REQUIRE rule per path; paths that
    in-toto-verify never records, such as ``*.link*`` or ``*~``, are left out).
    ``verifier_files``: exact root-level names a verifier may add to its copy (the layout key).
    ``expected_command``: what the link's ``command`` should be; in-toto only warns on mismatch.
    """
    signer = _signer(owner_private_pem)
    builder_key = _key_dict(builder_public_pem)
    materials, products = _build_step_rules(source_names)
    inspection_rules = _inspection_rules(required_paths, [_escape(f) for f in verifier_files])
    # in-toto's Layout, Step and Inspection as their to_dict() writes them (a test holds this
    # to in-toto's own classes); the rules above are made here, of constant patterns and
    # escaped names
    signed = {
        "_type": "layout",
        "expires": _rfc3339(expires),
        "inspect": [{
            "_type": "inspection",
            # Recorded before (materials) and after (products) the command: check both.
            "expected_materials": inspection_rules,
            "expected_products": [list(rule) for rule in inspection_rules],
            "name": INSPECTION,
            "run": list(INSPECTION_RUN),
        }],
        "keys": {builder_key["keyid"]: builder_key},
        "readme": readme,
        "steps": [{
            "_type": "step",
            "expected_command": list(expected_command),
            "expected_materials": materials,
            "expected_products": products,
            "name": BUILD_STEP,
            "pubkeys": [builder_key["keyid"]],
            "threshold": 1,
        }],
    }
    try:
        signature = signer.sign(_canonical_bytes(signed))
    except Exception as exc:
        raise ValidationError(f"cannot sign the in-toto layout: {exc}") from exc
    return _dumps({"signatures": [signature], "signed": signed})


# -------------------------------------------------------------------------------------- link


def make_link(
    builder_private_pem: Any,
    *,
    materials: Mapping[str, str],
    products: Mapping[str, str],
    command: Sequence[str],
    step: str = BUILD_STEP,
) -> tuple[str, bytes | bytearray]:
    """The build step's signed link: (file name ``<step>.<keyid8>.link``, JSON bytes).

    ``materials`` (SOURCE files) and ``products`` (OUT files) map a relative, ``/``-separated
    path to its SHA-256 hex digest, as the build computed it. Products must not include the
    files written after the link (index.json and its signatures, ``in-toto/*``) nor
    ``.repobuild/*``: the layout refuses them.
    """
    writer = LinkWriter(builder_private_pem, command=command, step=step)
    writer.materials(materials)
    return writer.products(products)


class LinkWriter:
    """:func:`make_link` in two steps: the materials (a build knows them early), then the
    products, which complete and sign the link."""

    def __init__(self, builder_private_pem: Any, *, command: Sequence[str],
                 step: str = BUILD_STEP) -> None:
        self._signer = _signer(builder_private_pem)
        self._command, self._step = list(command), step
        self._given = self._done = False
        # the materials, kept only where the whole link goes through the exact encoder; else
        # they are in the canonical bytes so far (100,000 of them are ~10 MB as a mapping)
        self._materials: Mapping[str, str] | None = None
        self._out: bytearray | None = None  # the canonical bytes so far, when plain
        self._span = (0, 0)  # where the materials' object stands in them
        self._reserve = 0

    def materials(self, materials: Mapping[str, str]) -> None:
        if self._given:
            raise RuntimeError("the materials are given once")
        self._given = True
        paths = sorted(materials)
        if _any_control(paths) or any(_CONTROL.search(s) for s in (*self._command, self._step)):
            self._materials = materials  # the whole link goes through the exact encoder
            return
        # at 100,000 products the link is ~50 MB: written straight as canonical bytes, never
        # held as a dict of dicts and then as a string as well
        # room is kept in front for the document's head, whose length is known (an Ed25519
        # signature is always 128 hex digits), so the link is never copied whole
        dummy = {"keyid": self._signer.keyid, "sig": "0" * 128}
        self._reserve = len(_dumps({"signatures": [dummy]})) - 2 + len(b',"signed":')
        out = bytearray(self._reserve)
        out.extend(b'{"_type":"link","byproducts":{},"command":')
        out.extend(json.dumps(self._command, ensure_ascii=False, separators=(",", ":")).encode())
        out.extend(b',"environment":{},"materials":')
        start = len(out)
        _artifact_object(out, paths, materials, "material")
        self._span = (start, len(out))
        out.extend(b',"name":')
        out.extend(_encode_text(self._step))
        out.extend(b',"products":')
        self._out = out

    def products(self, products: Mapping[str, str]) -> tuple[str, bytes | bytearray]:
        """The link's file name and bytes, signed."""
        return self.products_signing(products)()

    def products_signing(self, products: Mapping[str, str]) -> PendingLink:
        """:meth:`products`, the signature made in a thread while the caller goes on: the
        :class:`PendingLink` returned waits for it and gives the link. An Ed25519 signature
        over the link's ~5 MB at 10,000 artifacts takes ~12 ms, without the GIL."""
        if not self._given:
            raise RuntimeError("the materials come first")
        if self._done:
            raise RuntimeError("the link is signed already")
        self._done = True
        product_paths = sorted(products)
        if self._step == BUILD_STEP:
            _refuse_reserved(product_paths)
        signed_bytes: bytes | bytearray
        out, self._out = self._out, None
        plain = out is not None and not _any_control(product_paths)
        if plain:
            assert out is not None
            _artifact_object(out, product_paths, products, "product")
            out.extend(b"}")
            signed_bytes, reserve = out, self._reserve
        else:  # _artifacts checks each entry
            materials = self._materials
            if materials is None:  # clean materials, odd products: read back from their bytes
                assert out is not None
                start, end = self._span
                materials = {path: entry["sha256"]
                             for path, entry in json.loads(out[start:end]).items()}
            del out
            signed_bytes, reserve = _canonical_bytes({
                "_type": "link",
                "byproducts": {},
                "command": self._command,
                "environment": {},
                "materials": _artifacts(materials, "material"),
                "name": self._step,
                "products": _artifacts(products, "product"),
            }), 0
        return PendingLink(lambda signature: self._assemble(signature, signed_bytes, reserve,
                                                            plain),
                           self._signer.sign, memoryview(signed_bytes)[reserve:])

    def _assemble(self, signature: dict[str, str], signed_bytes: bytes | bytearray,
                  reserve: int, plain: bool) -> tuple[str, bytes | bytearray]:
        name = f"{self._step}.{self._signer.keyid[:8]}.link"
        # _dumps of {"signatures": [...], "signed": signed}: sorted keys put "signatures"
        # first, and the signed part is its canonical bytes (no control characters: identical
        # to json.dumps)
        head = _dumps({"signatures": [signature]})[:-2]  # without the closing "}\n"
        if not plain:
            return name, _dumps({"signatures": [signature],
                                 "signed": json.loads(signed_bytes, strict=False)})
        assert isinstance(signed_bytes, bytearray)
        # the document's head into the room kept for it (in place when the length is as
        # expected; a signer with another signature length costs one move of the buffer)
        signed_bytes[:reserve] = head + b',"signed":'
        signed_bytes += b"}\n"
        return name, signed_bytes


class PendingLink:
    """A link being signed in a thread of its own, which then puts the signature in and takes
    the link's SHA-256 (~3 ms at 10,000 artifacts, without the GIL, while the build goes on).
    Called, it waits and gives (file name, bytes), or raises ValidationError if it could not
    be signed; :meth:`sha256` gives the digest of those bytes."""

    def __init__(self, assemble: Callable[[dict[str, str]], tuple[str, bytes | bytearray]],
                 sign: Callable[[memoryview], dict[str, str]], signed: memoryview) -> None:
        self._link: tuple[str, bytes | bytearray] | None = None
        self._digest = ""
        self._failed: Exception | None = None

        def work() -> None:
            try:
                signature = sign(signed)
                signed.release()
                self._link = assemble(signature)
                self._digest = hashlib.sha256(self._link[1]).hexdigest()
            except Exception as exc:  # noqa: BLE001 - raised where the link is asked for
                self._failed = exc

        self._thread = threading.Thread(target=work, name="in-toto link", daemon=True)
        self._thread.start()

    def __call__(self) -> tuple[str, bytes | bytearray]:
        self._thread.join()
        if self._link is None:
            reason = self._failed or "no signature"
            raise ValidationError(f"cannot sign the in-toto link: {reason}") from self._failed
        return self._link

    def sha256(self) -> str:
        self()
        return self._digest


_CHUNK = 4096  # entries checked and encoded at once
_HEX_DIGITS = b"0123456789abcdef"
_CONTROL_BYTES = bytes(range(32))  # what UTF-8 holds of the control characters U+0000-U+001F


def _artifact_object(out: bytearray, paths: list[str], entries: Mapping[str, str],
                     what: str) -> None:
    """``{"path":{"sha256":"..."},...}`` for the sorted ``paths``, without control characters.

    A chunk of entries is checked at once on joined strings (NUL never occurs in a clean path,
    so it separates them): no empty, absolute or ``.``/``..`` component, no backslash, only
    64 lowercase hex digits. A chunk that fails, or has a quote to escape, goes entry by entry:
    :func:`_check_entry` raises with the reason, and the encoder escapes. A mapping with a
    ``digests_of(paths)`` method gives a chunk's digests through it, at once (a view over
    other mappings then makes no Python call per entry)."""
    bulk = getattr(entries, "digests_of", None)
    out.extend(b"{")
    for start in range(0, len(paths), _CHUNK):
        chunk = paths[start:start + _CHUNK]
        digests = bulk(chunk) if bulk is not None else [entries[path] for path in chunk]
        if start:
            out.extend(b",")
        if _clean_chunk(chunk, digests):
            out.extend(",".join([f'"{path}":{{"sha256":"{digest}"}}'
                                 for path, digest in zip(chunk, digests, strict=True)]).encode())
            continue
        for i, (path, digest) in enumerate(zip(chunk, digests, strict=True)):
            _check_entry(path, digest, what)
            if i:
                out.extend(b",")
            out.extend(_encode_text(path))
            out.extend(b':{"sha256":"')
            out.extend(digest.encode("ascii"))
            out.extend(b'"}')
    out.extend(b"}")


def _clean_chunk(paths: list[str], digests: list[str]) -> bool:
    """Whether a chunk's entries can be written as they are. With its paths joined between
    slashes (none holds a NUL), a path that is empty, starts or ends with "/" or has an empty
    component shows as "//", and a component starting with "." (clean, but left to the exact
    check) as "/."; a backslash (unclean) and a quote (to be escaped) need the exact path too.
    A few scans of the joined paths (the two-character ones in one regular expression: a
    path is mostly slashes and names, and ``"//" in`` and ``"/." in`` took ~1.8 ms each over
    26,000 products), the digests' lengths counted and their characters deleted at once."""
    try:
        joined = "\x00" + "\x00".join(paths) + "\x00"
        hexes = "".join(digests)
    except TypeError:  # not all strings
        return False
    if joined.count("\x00") != len(paths) + 1:
        return False
    slashed = joined.replace("\x00", "/")
    if "\\" in slashed or '"' in slashed or _EMPTY_OR_DOT.search(slashed):
        return False
    if set(map(len, digests)) != {64}:
        return False
    return not hexes.encode("ascii", "replace").translate(None, _HEX_DIGITS)


_EMPTY_OR_DOT = re.compile("/[/.]")  # an empty path component, or one that starts with "."


def _has_control(text: str) -> bool:
    data = text.encode("utf-8", "surrogatepass")
    return len(data.translate(None, _CONTROL_BYTES)) != len(data)


def _any_control(paths: list[str]) -> bool:
    return any(_has_control("".join(paths[i:i + _CHUNK])) for i in range(0, len(paths), _CHUNK))


def _refuse_reserved(paths: list[str]) -> None:
    """Products (sorted) must not include what is written after the link or never served: a
    path that matches a reserved pattern starts with the pattern's fixed part, and the paths
    that do are found by bisection, not by a match of each of 100,000 products."""
    for prefix in _RESERVED_PREFIXES:
        at = bisect.bisect_left(paths, prefix)
        while at < len(paths) and paths[at].startswith(prefix):
            if _RESERVED.match(paths[at]):
                raise ValidationError(
                    f"product {paths[at]!r} is written after the link or never served; "
                    "leave it out"
                )
            at += 1


_CONTROL = re.compile(r"[\x00-\x1f]")
_RESERVED = re.compile("|".join(fnmatch.translate(p) for p in RESERVED_PATTERNS))
#: the reserved patterns' fixed parts (up to a wildcard), none the start of another
_RESERVED_PREFIXES = sorted({re.split(r"[*?\[]", p, maxsplit=1)[0] for p in RESERVED_PATTERNS})
_RESERVED_PREFIXES = [p for p in _RESERVED_PREFIXES
                      if not any(p != q and p.startswith(q) for q in _RESERVED_PREFIXES)]
_encode_str = json.JSONEncoder(ensure_ascii=False).encode  # one encoder, not one per string


def _encode_text(value: str) -> bytes:
    return _encode_str(value).encode("utf-8")


def _canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """OLPC canonical JSON, the bytes in-toto signs. For documents whose strings hold no
    control characters it is exactly sorted, compact ``json.dumps`` without ASCII escaping,
    which is fast at 100,000 products; anything else goes through securesystemslib."""
    if any(_CONTROL.search(s) for s in _strings(document)):
        from securesystemslib.formats import encode_canonical

        return str(encode_canonical(dict(document))).encode("utf-8")
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


# ------------------------------------------------------------------------------ verification


def verify_layout(
    layout_bytes: bytes,
    link_dir: Path,
    owner_public_pem: bytes,
    *,
    tree: Path,
) -> None:
    """Run in-toto's own verification of ``tree`` (an OUT or a copy of it) in Python.

    The same checks as ``in-toto-verify`` (layout signature and expiry, link signature and
    threshold, step rules, the inspection run in ``tree`` and its rules), with two differences
    that make it stricter, not looser: no artifact is hidden by in-toto's default exclude
    patterns (``*.link*``, ``.git``, ``*.pyc``, ``*~``), and the inspection link is not written
    into ``tree``. Raises VerificationError naming the reason.

    Not thread-safe: in-toto records the inspection's artifacts relative to the process's
    working directory, so this changes directory (and in-toto's settings) for the duration.
    """
    _import_sslib()
    import in_toto.settings
    from in_toto.models.metadata import Metadata
    from in_toto.verifylib import in_toto_verify

    tree = Path(tree).resolve()
    link_dir = Path(link_dir).resolve()
    if not tree.is_dir():
        raise VerificationError("not a folder", tree)
    if not link_dir.is_dir():
        raise VerificationError("not a folder", link_dir)
    try:
        metadata = Metadata.from_dict(json.loads(layout_bytes))
    except Exception as exc:
        raise VerificationError(f"malformed in-toto layout ({exc})") from exc
    try:
        owner_key = _key_dict(owner_public_pem)
    except ValidationError as exc:
        raise VerificationError(f"layout owner key: {exc}") from exc

    saved_excludes = in_toto.settings.ARTIFACT_EXCLUDE_PATTERNS
    # in-toto falls back to its defaults on an empty list: give it a pattern matching nothing
    # (gitignore style; a NUL never occurs in a path).
    in_toto.settings.ARTIFACT_EXCLUDE_PATTERNS = ["\x00"]
    try:
        with contextlib.chdir(tree), warnings.catch_warnings():
            # in-toto 3.1 builds its exclude filter with pathspec's deprecated "gitwildmatch".
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pathspec")
            in_toto_verify(
                metadata,
                {owner_key["keyid"]: owner_key},
                str(link_dir),
                persist_inspection_links=False,
            )
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise VerificationError(
            f"in-toto verification failed: {type(exc).__name__}: {reason}", tree
        ) from exc
    finally:
        in_toto.settings.ARTIFACT_EXCLUDE_PATTERNS = saved_excludes


def verify_link_products(
    layout_bytes: bytes,
    link_bytes: bytes,
    owner_public_pem: bytes,
    *,
    now: datetime,
) -> dict[str, str]:
    """Check the layout (owner's signature, expiry) and the build link (signed by the layout's
    build functionary) and return the link's products as path -> sha256.

    The caller compares those products with hashes it verified itself, so that a tree is
    checked against its provenance without reading any file a second time.
    """
    _import_sslib()
    from in_toto.models.metadata import Metadata
    from securesystemslib.signer import Signature, SSlibKey

    try:
        layout_md = Metadata.from_dict(json.loads(layout_bytes))
        link_doc = json.loads(link_bytes)
        link_signed = link_doc["signed"]
        link_sigs = [Signature.from_dict(dict(sig)) for sig in link_doc["signatures"]]
    except Exception as exc:
        raise VerificationError(f"malformed in-toto metadata ({exc})") from exc
    try:
        owner_key = _key_dict(owner_public_pem)
    except ValidationError as exc:
        raise VerificationError(f"layout owner key: {exc}") from exc
    try:
        layout_md.verify_signature(owner_key)
    except Exception as exc:
        raise VerificationError("layout is not signed by the trusted owner key") from exc
    layout = layout_md.get_payload()
    expires = datetime.fromisoformat(str(layout.expires).replace("Z", "+00:00"))
    if expires < now:
        raise VerificationError(f"layout expired at {layout.expires}")
    steps = [s for s in layout.steps if s.name == BUILD_STEP]
    if not steps:
        raise VerificationError("layout has no build step")
    # The link can hold 100,000 products: its canonical bytes are made here, fast, and its
    # signature checked with securesystemslib directly (same bytes, same check as in-toto).
    if not isinstance(link_signed, dict) or link_signed.get("_type") != "link":
        raise VerificationError("the build link is not an in-toto link")
    payload = _canonical_bytes(link_signed)
    for keyid in steps[0].pubkeys:
        key_data = dict(layout.keys[keyid])
        key = SSlibKey.from_dict(keyid, {k: v for k, v in key_data.items() if k != "keyid"})
        for sig in link_sigs:
            if sig.keyid != keyid:
                continue
            try:
                key.verify_signature(sig, payload)
            except Exception:
                continue
            if link_signed.get("name") != BUILD_STEP:
                raise VerificationError(
                    f"link is for step {link_signed.get('name')!r}, not {BUILD_STEP!r}"
                )
            products = link_signed.get("products") or {}
            return {p: str(h.get("sha256", "")) for p, h in products.items()}
    raise VerificationError("build link is not signed by the layout's build functionary")
