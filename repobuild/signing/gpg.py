"""OpenPGP signing through GnuPG, always in a throwaway GNUPGHOME (never the user's keyring)."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType

import gnupg

from repobuild.errors import UsageError, ValidationError
from repobuild.fdio import widen_pipe
from repobuild.formats.armor import ArmorError, unarmor


def _short_home() -> Path:
    # gpg-agent's socket lives in GNUPGHOME, and socket paths are short: keep it under /tmp.
    home = Path(tempfile.mkdtemp(prefix="rbg-", dir="/tmp"))
    home.chmod(0o700)
    return home


class GpgHome:
    """A private, temporary GnuPG home; removed (and its agent stopped) on close."""

    def __init__(self, *, faked_time: int | None = None) -> None:
        if shutil.which("gpg") is None:
            raise UsageError("GnuPG (gpg) is not installed; install the 'gnupg' package")
        self.path = _short_home()
        args = ["--digest-algo", "SHA512", "--personal-digest-preferences", "SHA512"]
        if faked_time is not None:
            # signature times come from SOURCE_DATE_EPOCH; a key made later only warns
            args += ["--faked-system-time", f"{faked_time}!", "--ignore-time-conflict"]
        self.gpg = gnupg.GPG(gnupghome=str(self.path), options=args)
        self.gpg.encoding = "utf-8"
        self._closing = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Idempotent, and safe from any thread: a second call returns once the first is done."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            subprocess.run(
                ["gpgconf", "--homedir", str(self.path), "--kill", "gpg-agent"],
                capture_output=True,
                check=False,
            )
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> GpgHome:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class GpgSigner:
    """Signs with the secret key of ``KEYDIR/gpg/secret.asc`` (imported into a GpgHome)."""

    def __init__(self, secret_asc: Path, *, faked_time: int | None = None) -> None:
        try:
            data = secret_asc.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read GPG secret key: {exc.strerror}", secret_asc) from None
        self._home = GpgHome(faked_time=faked_time)
        result = self._home.gpg.import_keys(data)
        # the primary fingerprint of the first secret key gpg took in (IMPORT_OK flag 16: "it
        # contains a secret key"), as listing the secret keys would give, without one more gpg
        secrets = [r["fingerprint"] for r in result.results
                   if r.get("fingerprint") and int(r.get("ok") or 0) & 16]
        if not secrets:
            self._home.close()
            raise UsageError("holds no usable OpenPGP secret key", secret_asc)
        self.key_id: str = secrets[0]
        self.source = secret_asc
        self._public: bytes | None = None

    def _run(self, data: bytes, mode: str) -> bytes:
        """gpg's output for ``data`` given whole: python-gnupg's command line for
        ``sign(clearsign=True)`` or ``sign(detach=True)``, run here (Popen.communicate) rather
        than through python-gnupg's reader threads, which need the GIL line by line and so
        took ~20-30 ms per signature when the build's main thread was busy meanwhile."""
        proc = self._popen(mode)
        out, err = proc.communicate(data)
        return self._signature(proc, out, err)

    def _popen(self, mode: str) -> subprocess.Popen[bytes]:
        gpg = self._home.gpg
        cmd = gpg.make_args(["-sa", mode, "--default-key", self.key_id], False)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=getattr(gpg, "env", None))
        if proc.stdin is not None:
            widen_pipe(proc.stdin.fileno())  # index.json: ~4 times fewer task switches
        return proc

    def _signature(self, proc: subprocess.Popen[bytes], out: bytes, err: bytes) -> bytes:
        """gpg's output, if it made a signature: a clear-signing gpg that fails (a secret key
        behind a passphrase, say) has written the cleartext part already, so output alone is no
        sign of success; gpg's SIG_CREATED status and its exit code are."""
        status = err.decode("utf-8", "replace").splitlines()
        created = any(line.startswith("[GNUPG:] SIG_CREATED ") for line in status)
        if proc.returncode or not created or not out:
            failures = [line[len("[GNUPG:] "):] for line in status
                        if line.startswith("[GNUPG:] ") and ("FAIL" in line or "ERROR" in line)]
            plain = [line for line in status if line and not line.startswith("[GNUPG:]")]
            raise self._failed(failures[-1] if failures else
                               plain[-1] if plain else "no signature")
        return out

    def _failed(self, reason: str) -> ValidationError:
        return ValidationError(f"gpg could not sign: {reason} (is the secret key protected "
                               "by a passphrase? repobuild signs without asking for one)",
                               self.source)

    def sign(self, data: bytes) -> bytes:
        """A detached, armored signature (Release.gpg, index.json.asc)."""
        return self._run(data, "--detach-sign")

    def sign_stream(self) -> DetachedSignature:
        """:meth:`sign` of data given piece by piece as it is made: gpg hashes each piece as
        it comes (index.json: the signature is ready ~3 ms after the last piece, not ~20 ms
        after the whole file, which gpg would hash only then)."""
        return DetachedSignature(self)

    def clearsign(self, data: bytes) -> bytes:
        """A clear-signed document (InRelease)."""
        return self._run(data, "--clearsign")

    def public_key(self, *, armor: bool) -> bytes:
        """The public key, armored (exported once) or binary (taken out of the armor)."""
        if self._public is None:
            out = self._home.gpg.export_keys(self.key_id, armor=True)
            self._public = out.encode() if isinstance(out, str) else bytes(out)
        if armor:
            return self._public
        try:
            return unarmor(self._public)
        except ArmorError as exc:
            raise ValidationError(f"gpg exported an unreadable public key: {exc}",
                                  self.source) from None

    def close(self) -> None:
        self._home.close()


class DetachedSignature:
    """A detached, armored signature by one gpg process, fed through its standard input:
    :meth:`write` each piece, then :meth:`finish` for the signature (or :meth:`abort`). The
    command line is python-gnupg's own for ``sign_file(detach=True)``, and the signature
    counts only as :meth:`GpgSigner._signature` counts one: gpg's SIG_CREATED and exit 0."""

    def __init__(self, signer: GpgSigner) -> None:
        self._signer = signer
        self._proc: subprocess.Popen[bytes] | None = signer._popen("--detach-sign")
        self._broken = False  # gpg stopped reading: it failed, and finish() says why
        self._unreadable = False  # a file handed over could not be read whole
        # gpg reads at its own pace: the pieces are handed to it by a thread of their own, so
        # that the caller goes on (feeding 4 MB held the build's main thread ~15-40 ms)
        self._pieces: queue.Queue[bytes | tuple[str, int] | None] = queue.Queue(maxsize=16)
        self._feeder: threading.Thread | None = threading.Thread(
            target=self._feed, name="gpg-input", daemon=True)
        self._feeder.start()

    def write(self, data: bytes) -> None:
        """Hand gpg this piece (after the pieces before it)."""
        if self._feeder is not None:
            self._pieces.put(data)

    def write_file(self, path: str, size: int) -> None:
        """Hand gpg the first ``size`` bytes of the file ``path`` (read by the feeding thread:
        what a build wrote before the signature was started)."""
        if self._feeder is not None:
            self._pieces.put((path, size))

    def _feed(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        stdin = proc.stdin
        while (piece := self._pieces.get()) is not None:
            if self._broken:
                continue  # drained: the caller is never held up by a gpg that failed
            try:
                if isinstance(piece, tuple):
                    path, left = piece
                    with open(path, "rb") as fh:
                        while left > 0 and (chunk := fh.read(min(left, 1 << 20))):
                            stdin.write(chunk)
                            left -= len(chunk)
                    if left > 0:
                        raise OSError(f"{path} is shorter than what was written of it")
                else:
                    stdin.write(piece)
            except (BrokenPipeError, ValueError):
                self._broken = True  # gpg stopped reading (it failed, or was stopped)
            except Exception:  # noqa: BLE001 - the file could not be read: no signature
                self._broken = True
                self._unreadable = True

    def _stop_feeding(self) -> None:
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            self._pieces.put(None)
            feeder.join()

    def finish(self) -> bytes:
        if self._proc is None:
            raise RuntimeError("the signature is finished already")
        self._stop_feeding()
        proc, self._proc = self._proc, None
        if self._unreadable:
            proc.kill()
            _drop_input(proc)
            proc.communicate()
            raise self._signer._failed("what was written could not be read back")
        try:
            out, err = proc.communicate()  # closes gpg's input: the data is complete
        except BrokenPipeError:  # what was buffered could not go: gpg stopped reading
            _drop_input(proc)
            out, err = proc.communicate()
        return self._signer._signature(proc, out, err)

    def abort(self) -> None:
        """Stop gpg (the data will not be complete)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()  # the feeding thread's writes fail: it drains what is left
        self._broken = True
        self._stop_feeding()
        if proc is not None:
            _drop_input(proc)  # what is still buffered for it goes nowhere
            proc.communicate()


def _drop_input(proc: subprocess.Popen[bytes]) -> None:
    """Close the process's input, whatever is left in its buffer (the pipe may be broken)."""
    stdin, proc.stdin = proc.stdin, None
    if stdin is not None:
        with suppress(OSError):
            stdin.close()


def generate_gpg_key(
    name: str, email: str, algo: str = "ed25519", *, created: int | None = None
) -> tuple[bytes, bytes, str]:
    """A new signing key: (armored secret key, armored public key, fingerprint)."""
    with GpgHome() as home:
        params: dict[str, object]
        if algo == "ed25519":
            params = {"key_type": "EDDSA", "key_curve": "ed25519"}
        elif algo == "rsa4096":
            params = {"key_type": "RSA", "key_length": 4096}
        else:
            raise UsageError(f"unknown GPG algorithm {algo!r} (use ed25519 or rsa4096)")
        spec = home.gpg.gen_key_input(
            name_real=name,
            name_email=email,
            key_usage="sign",
            expire_date=0,
            no_protection=True,
            **({"creation_date": time.strftime("%Y%m%dT%H%M%S", time.gmtime(created))}
               if created is not None else {}),
            **params,  # type: ignore[arg-type]
        )
        key = home.gpg.gen_key(spec)
        fpr = str(key.fingerprint or "")
        if not fpr:
            raise UsageError(f"gpg could not generate a key: {key.stderr}")
        secret = home.gpg.export_keys(fpr, secret=True, armor=True, expect_passphrase=False)
        public = home.gpg.export_keys(fpr, armor=True)
        return str(secret).encode(), str(public).encode(), fpr


def dearmor(public_asc: bytes) -> bytes:
    """The binary keyring form that gpgv and apt's signed-by take."""
    with GpgHome() as home:
        result = home.gpg.import_keys(public_asc)
        if not result.fingerprints:
            raise ValidationError("no OpenPGP public key found")
        out = home.gpg.export_keys(result.fingerprints, armor=False)
        return out if isinstance(out, bytes) else str(out).encode("latin-1")


os.environ.setdefault("GPG_TTY", "")
