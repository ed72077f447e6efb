"""A gpg that fails to sign fails the build: a clear-signing gpg writes the cleartext before it
signs, so an InRelease without a signature was once published when the secret key could not
sign (one behind a passphrase)."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from tests.clients import DEMO_KEYS, FIXTURES, repobuild


def _protected_secret_key(tmp_path: Path) -> bytes:
    """A fresh Ed25519 signing key behind a passphrase, armored, from gpg itself."""
    home = tmp_path / "gh"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", "not-empty"]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "protected <p@example.invalid>", "ed25519",
                        "sign", "never"], check=True, capture_output=True)
        return subprocess.run([*gpg, "--armor", "--export-secret-keys"], check=True,
                              capture_output=True).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       check=False, capture_output=True)


def test_a_key_that_cannot_sign_fails_the_build_and_changes_nothing(tmp_path: Path) -> None:
    keys = shutil.copytree(DEMO_KEYS, tmp_path / "keys")
    good = tmp_path / "out"
    repobuild("build", FIXTURES, "--out", good, "--keys", DEMO_KEYS, check=True)
    before = {p: p.read_bytes() for p in sorted(good.rglob("*"))
              if p.is_file() and ".repobuild" not in p.parts}
    (keys / "gpg" / "secret.asc").write_bytes(_protected_secret_key(tmp_path))

    for out in (tmp_path / "new", good):
        proc = repobuild("build", FIXTURES, "--out", out, "--keys", keys)
        assert proc.returncode != 0
        assert "gpg could not sign" in proc.stderr and "passphrase" in proc.stderr
        assert "secret.asc" in proc.stderr
    assert not (tmp_path / "new").exists()
    after = {p: p.read_bytes() for p in sorted(good.rglob("*"))
             if p.is_file() and ".repobuild" not in p.parts}
    assert after == before, "the previous tree is left as it was"


def test_a_streamed_signature_is_the_one_gpg_makes_of_the_whole(tmp_path: Path) -> None:
    """index.json is signed as it is written: piece by piece, the same signature as of the
    whole (the signature time fixed, as SOURCE_DATE_EPOCH fixes it), and it verifies."""
    from repobuild.fdio import PIPE_SIZE
    from repobuild.signing.gpg import GpgSigner

    data = b"".join(b'{"entry":%d},' % i for i in range(200_000))  # ~3 MB, past any buffer
    signer = GpgSigner(DEMO_KEYS / "gpg" / "secret.asc", faked_time=1_700_000_000)
    try:
        stream = signer.sign_stream()
        for start in range(0, len(data), 65536):
            stream.write(data[start:start + 65536])
        proc = stream._proc
        assert proc is not None and proc.stdin is not None
        if hasattr(fcntl, "F_GETPIPE_SZ") and Path("/proc/sys/fs/pipe-max-size").exists():
            # a wide pipe to gpg: ~4 times fewer task switches feeding it a few MB
            limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
            size = fcntl.fcntl(proc.stdin.fileno(), fcntl.F_GETPIPE_SZ)
            assert size == PIPE_SIZE or limit < PIPE_SIZE, size
        streamed = stream.finish()
        assert streamed == signer.sign(data)
        stream = signer.sign_stream()
        stream.write(b"half")
        stream.abort()  # a build that fails meanwhile: gpg is stopped, nothing is left
    finally:
        signer.close()
    from repobuild.signing.gpg import dearmor

    (tmp_path / "data").write_bytes(data)
    (tmp_path / "data.asc").write_bytes(streamed)
    (tmp_path / "repo.gpg").write_bytes(dearmor((DEMO_KEYS / "gpg" / "public.asc").read_bytes()))
    ok = subprocess.run(["gpgv", "--keyring", str(tmp_path / "repo.gpg"),
                         str(tmp_path / "data.asc"), str(tmp_path / "data")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_a_streamed_signature_of_a_file_written_before_and_pieces_after(tmp_path: Path) -> None:
    """What a build wrote before it started the signature is handed over as the file's first
    bytes (read by the feeding thread), then the pieces that follow: the signature is that of
    the whole. A file shorter than said is no signature."""
    import pytest

    from repobuild.errors import ValidationError
    from repobuild.signing.gpg import GpgSigner

    head = b"".join(b'{"artifact":%d},' % i for i in range(100_000))  # ~2 MB
    tail = b"".join(b'{"file":%d},' % i for i in range(50_000))
    written = tmp_path / "index.part"
    written.write_bytes(head + b"not yet part of it")
    signer = GpgSigner(DEMO_KEYS / "gpg" / "secret.asc", faked_time=1_700_000_000)
    try:
        stream = signer.sign_stream()
        stream.write_file(str(written), len(head))
        for start in range(0, len(tail), 65536):
            stream.write(tail[start:start + 65536])
        assert stream.finish() == signer.sign(head + tail)
        stream = signer.sign_stream()
        stream.write_file(str(written), len(head) + 10**6)
        stream.write(tail)
        with pytest.raises(ValidationError, match="could not be read back"):
            stream.finish()
    finally:
        signer.close()


def test_a_streamed_signature_that_gpg_cannot_make_is_an_error(tmp_path: Path) -> None:
    import pytest

    from repobuild.errors import ValidationError
    from repobuild.signing.gpg import GpgSigner

    secret = tmp_path / "secret.asc"
    secret.write_bytes(_protected_secret_key(tmp_path))
    signer = GpgSigner(secret)
    try:
        stream = signer.sign_stream()
        for _ in range(100):  # more than a pipe holds: gpg may have stopped reading
            stream.write(b"x" * 65536)
        with pytest.raises(ValidationError, match="gpg could not sign.*passphrase") as exc:
            stream.finish()
        assert "secret.asc" in str(exc.value)
    finally:
        signer.close()


def test_clearsign_and_detached_sign_fail_alike_without_a_signature(tmp_path: Path) -> None:
    """Release is signed by gpg run directly (python-gnupg's command line): a key behind a
    passphrase is an error for InRelease (whose cleartext gpg writes before it fails) and for
    Release.gpg; the demo key's signatures pass gpgv."""
    import pytest

    from repobuild.errors import ValidationError
    from repobuild.signing.gpg import GpgSigner, dearmor

    release = b"Origin: test\nLabel: test\nSuite: stable\n"
    secret = tmp_path / "secret.asc"
    secret.write_bytes(_protected_secret_key(tmp_path))
    signer = GpgSigner(secret)
    try:
        for sign in (signer.clearsign, signer.sign):
            with pytest.raises(ValidationError, match="gpg could not sign.*passphrase"):
                sign(release)
    finally:
        signer.close()
    signer = GpgSigner(DEMO_KEYS / "gpg" / "secret.asc")
    try:
        inrelease, detached = signer.clearsign(release), signer.sign(release)
    finally:
        signer.close()
    assert inrelease.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----\n")
    (tmp_path / "repo.gpg").write_bytes(dearmor((DEMO_KEYS / "gpg" / "public.asc").read_bytes()))
    (tmp_path / "InRelease").write_bytes(inrelease)
    (tmp_path / "Release").write_bytes(release)
    (tmp_path / "Release.gpg").write_bytes(detached)
    for args in (["InRelease"], ["Release.gpg", "Release"]):
        ok = subprocess.run(["gpgv", "--keyring", str(tmp_path / "repo.gpg"),
                             *[str(tmp_path / a) for a in args]], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr


def _agents() -> set[str]:
    """The command lines of the gpg-agents of builds' gpg homes (/tmp/rbg-*) now running."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True)
    return {line.strip() for line in ps.stdout.splitlines()
            if "gpg-agent" in line and "/tmp/rbg-" in line}


def test_a_build_leaves_no_gpg_home_and_no_agent(tmp_path: Path) -> None:
    """The gpg home of a build (and its agent) is gone when the command returns: it is stopped
    while the build lands, in a thread of its own, and the build waits for that at its end."""
    homes, agents = set(Path("/tmp").glob("rbg-*")), _agents()
    for out in (tmp_path / "out", tmp_path / "out"):  # a first build, then a rebuild
        repobuild("build", FIXTURES, "--out", out, "--keys", DEMO_KEYS, check=True)
        assert set(Path("/tmp").glob("rbg-*")) <= homes
        assert _agents() <= agents
