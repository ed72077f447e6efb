"""The command line: a thin typer layer over the library."""

from __future__ import annotations

import gc as _gc  # the name gc is the command's
import os
import sys

# A build: no garbage collection while the modules load (~10 ms of collections over objects
# that all live to the end); repobuild.process.fewer_collections turns it on again, less often,
# once the build has imported what it needs. Only the build: `serve` runs for days.
if sys.argv[1:2] == ["build"]:
    _gc.disable()

import threading  # noqa: E402 - after the collector is set
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Any, TextIO, TypeVar  # noqa: E402

import typer  # noqa: E402

from repobuild.errors import RepobuildError  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console

    from repobuild.scan import ScanAhead

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build, verify, mirror and serve signed, content-addressed package repositories.",
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(no_args_is_help=True, help="Create signing keys.")
app.add_typer(keys_app, name="keys")


class _LazyConsole:
    """A rich Console made when first used: importing rich costs ~17 ms at every start, and a
    build that is not on a terminal prints only plain lines (:meth:`plain`)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def _stream(self) -> TextIO:
        return sys.stderr if self._stderr else sys.stdout

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    @property
    def is_terminal(self) -> bool:
        """rich's answer; asked of rich only where it could differ from ``isatty`` (a variable
        that forces a terminal, as rich reads them)."""
        if self._console is None and not any(
                os.environ.get(v) for v in ("FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE",
                                             "TTY_INTERACTIVE")):
            try:
                return self._stream().isatty()
            except (AttributeError, ValueError):
                return False
        return self.console.is_terminal

    def plain(self, text: str) -> None:
        """A line without markup: as is when not on a terminal (rich would wrap it at 80)."""
        if self.is_terminal:
            self.console.print(text, markup=False, emoji=False, highlight=False,
                               soft_wrap=True)
        else:
            print(text, file=self._stream())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


err = _LazyConsole(stderr=True)
out = _LazyConsole(stderr=False)
T = TypeVar("T")


def fail(exc: RepobuildError) -> None:
    err.plain(f"repobuild: error: {exc}")
    raise typer.Exit(exc.exit_code)


def run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except RepobuildError as exc:
        fail(exc)
        raise AssertionError("unreachable") from None
    except KeyboardInterrupt:
        err.print("repobuild: interrupted")
        raise typer.Exit(130) from None


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    if not err.is_terminal:
        yield None
        return
    # imported for a terminal only (as the tables below): ~15 ms at every start otherwise
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err.console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@keys_app.command("generate")
def keys_generate(
    keydir: Annotated[Path, typer.Argument(help="Folder to write the keys into.")],
    name: Annotated[str, typer.Option(help="Name on the OpenPGP key.")] = "repobuild signing key",
    email: Annotated[str, typer.Option(help="E-mail on the OpenPGP key.")] = "repo@example.invalid",
    gpg_algo: Annotated[str, typer.Option(help="ed25519 or rsa4096.")] = "ed25519",
    force: Annotated[bool, typer.Option(help="Replace keys already in KEYDIR.")] = False,
) -> None:
    """Write a key folder: OpenPGP, cosign, in-toto keys and the public trust.json."""
    from repobuild.keys import generate_keys

    trust = run(lambda: generate_keys(keydir, name=name, email=email, gpg_algo=gpg_algo,
                                      force=force))
    out.print(f"wrote keys to {keydir}", highlight=False)
    for entry in trust.get("gpg", []):
        out.print(f"  OpenPGP fingerprint: {entry['fingerprint']}", highlight=False)
    out.print(f"  trust root to pin: {keydir / 'trust.json'}", highlight=False)


@app.command()
def build(
    source: Annotated[Path, typer.Argument(help="The release tree.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    keys: Annotated[Path | None, typer.Option(help="Key folder.")] = None,
    config: Annotated[Path | None, typer.Option(help="repobuild.toml.")] = None,
    link: Annotated[
        bool, typer.Option(help="Hard-link blobs instead of copying (see README).")
    ] = False,
    rehash: Annotated[
        bool, typer.Option(help="Ignore the build cache: read and hash every file again.")
    ] = False,
    signer: Annotated[
        list[str] | None,
        typer.Option(help="ROLE=URI: a securesystemslib signer (awskms:, gcpkms:, hsm:, "
                     "hv:, file2:) for cosign, intoto-owner or intoto-builder; repeatable."),
    ] = None,
    sigstore: Annotated[
        bool, typer.Option(help="Also sign index.json keylessly with Sigstore (network).")
    ] = False,
    identity_token: Annotated[
        str | None, typer.Option(help="OIDC token for --sigstore (else ambient credentials).")
    ] = None,
) -> None:
    """Build (or update) a signed repository in OUT from SOURCE."""
    from repobuild.scan import ScanAhead

    # SOURCE (then OUT) is walked in a child process while this one imports the build
    ahead = ScanAhead(source, exclude=out_dir, out=out_dir, recorded=not rehash)
    try:
        _build(ahead, source, out_dir, keys, config, link=link, rehash=rehash, signer=signer,
               sigstore=sigstore, identity_token=identity_token)
    finally:
        ahead.close()


def _build(ahead: ScanAhead, source: Path, out_dir: Path, keys: Path | None,
           config: Path | None, *, link: bool, rehash: bool, signer: list[str] | None,
           sigstore: bool, identity_token: str | None) -> None:
    from repobuild.build import build as do_build
    from repobuild.config import load_config
    from repobuild.errors import UsageError
    from repobuild.process import fewer_collections, one_malloc_arena

    one_malloc_arena()  # before the build starts its threads
    fewer_collections()

    if keys is None:
        fail(UsageError("no signing keys: pass --keys KEYDIR (see 'repobuild keys generate')"))
        return
    from repobuild.signing.uri import parse_signer_options

    cfg = run(lambda: load_config(config))
    uris = run(lambda: parse_signer_options(signer or []))
    with progress_bar("reading") as bar:
        result = run(lambda: do_build(source, out_dir, keys, cfg, link=link, rehash=rehash,
                                      signers=uris, sigstore=sigstore,
                                      identity_token=identity_token, progress=bar,
                                      scanned=ahead))
    _DONE.append(True)  # the build is over: nothing is left for the interpreter to tidy
    for warning in result.warnings:
        if err.is_terminal:
            err.print(f"[bold red]WARNING:[/] {warning}", highlight=False)
        else:
            err.plain(f"WARNING: {warning}")
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(result.by_kind.items())) or "no artifacts"
    line = (
        f"built version {result.version} in {out_dir}: {kinds}; "
        f"{result.new_blobs} new blobs ({result.new_bytes:,} bytes); "
        f"{result.removed} old files removed; {result.seconds:.2f}s"
    )
    if out.is_terminal:
        from rich.table import Table

        table = Table(title=f"repobuild: version {result.version}", show_header=False)
        table.add_row("output", str(out_dir))
        table.add_row("artifacts", kinds)
        table.add_row("new blobs", f"{result.new_blobs} ({result.new_bytes:,} bytes)")
        table.add_row("removed", str(result.removed))
        table.add_row("time", f"{result.seconds:.2f}s")
        out.print(table)
    else:
        print(line)
    for problem in result.errors:
        err.plain(f"repobuild: error: {problem}")
    if result.errors:
        raise typer.Exit(1)


#: set by a command once its work is over, every file it wrote closed and every folder of its
#: own removed (the build's gpg home among them)
_DONE: list[bool] = []


def main() -> None:
    try:
        app()
    except RepobuildError as exc:  # pragma: no cover - run() catches these
        print(f"repobuild: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if _DONE and isinstance(exc.code, int | None):
            _quick_exit(exc.code or 0)
        raise


def _quick_exit(code: int) -> None:
    """Exit without tearing the interpreter down: freeing each of a build's objects one by one
    took ~0.09 s after adding one package to 10,000 artifacts, and more at 100,000. Taken only
    when no other thread or child process is left, whose work would be cut short."""
    import multiprocessing  # imported already by a build

    if threading.active_count() > 1 or multiprocessing.active_children():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def verify(
    target: Annotated[str, typer.Argument(help="A folder or an http(s) URL.")],
    trust: Annotated[Path, typer.Option(help="The pinned trust.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    state: Annotated[
        Path | None, typer.Option(help="Remembers the newest version seen (rollback guard).")
    ] = None,
) -> None:
    """Verify a tree end to end: signatures, expiry, version, every file, every index."""
    import json

    from repobuild.trust import load_trust
    from repobuild.verify import open_target
    from repobuild.verify import verify as do_verify

    policy = run(lambda: load_trust(trust))
    src = run(lambda: open_target(target))
    with progress_bar("verifying") as bar:
        report = run(lambda: do_verify(src, policy, state=state, progress=bar))
    if as_json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        from rich.table import Table

        table = Table(title=f"repobuild verify {target}", show_header=False)
        table.add_row("result", "[green]OK[/]" if report.ok else "[red]FAILED[/]")
        table.add_row("version", str(report.version))
        table.add_row("generated / expires", f"{report.generated} / {report.expires}")
        for s in report.signatures:
            table.add_row(f"signature {s.kind}", ("ok " if s.ok else "BAD ") + (s.key or s.reason))
        table.add_row("files", f"{report.files_checked} ({report.bytes_checked:,} bytes)")
        table.add_row("checks", ", ".join(report.checks_run))
        out.print(table)
    for path, reason in report.failures[:50]:
        err.print(f"repobuild: verify: {path}: {reason}", markup=False, highlight=False,
                  soft_wrap=True)
    if len(report.failures) > 50:
        err.print(f"repobuild: verify: … and {len(report.failures) - 50} more failures")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def publish(
    out_dir: Annotated[Path, typer.Argument(help="A built tree.")],
    to: Annotated[
        list[str], typer.Option("--to", help="Folder, rsync target (rsync:PATH, host:path, "
                                "rsync://…) or s3://bucket/prefix; repeatable.")
    ],
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint (MinIO, R2, moto…).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Push OUT to several destinations: blobs first, index.json last; print the purge list."""
    import json

    from repobuild.mirror.publish import publish as do_publish

    results = run(lambda: do_publish(out_dir, to, endpoint_url=endpoint_url))
    purge = sorted({p for r in results for p in r.purge})
    if as_json:
        print(json.dumps({"ok": all(r.ok for r in results), "purge": purge,
                          "destinations": [r.to_json() for r in results]}, indent=2))
    else:
        from rich.table import Table

        table = Table(title="repobuild publish")
        for col in ("destination", "result", "uploaded", "skipped", "deleted", "time"):
            table.add_column(col)
        for r in results:
            table.add_row(r.dest, "ok" if r.ok else f"FAILED: {r.error}", str(len(r.uploaded)),
                          str(r.skipped), str(len(r.deleted)), f"{r.seconds:.2f}s")
        out.print(table)
        out.print("purge (CDN invalidation): " + (" ".join(purge) or "nothing"),
                  highlight=False, soft_wrap=True)
    for r in results:
        if not r.ok:
            err.print(f"repobuild: publish: {r.dest}: {r.error}", markup=False, soft_wrap=True)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


@app.command()
def gc(
    out_dir: Annotated[Path, typer.Argument(help="A built tree.")],
    keep_days: Annotated[
        float, typer.Option(help="Keep what any index of the last N days lists.")
    ] = 7.0,
    dry_run: Annotated[bool, typer.Option(help="Only print what would be removed.")] = False,
) -> None:
    """Remove blobs and by-hash files that no index of the last N days lists."""
    from datetime import UTC, datetime

    from repobuild.gc import collect

    result = run(lambda: collect(out_dir, keep_days=keep_days, now=datetime.now(UTC),
                                 dry_run=dry_run))
    verb = "would remove" if dry_run else "removed"
    for rel, size in result.removed:
        print(f"{verb} {rel} ({size} bytes)")
    print(f"{verb} {len(result.removed)} files, {result.bytes:,} bytes "
          f"(kept what {result.kept_indices} indices list)")


@app.command()
def sync(
    upstreams: Annotated[list[str], typer.Argument(help="http(s) URLs or folders, in order.")],
    to: Annotated[Path, typer.Option("--to", help="The mirror folder.")],
    trust: Annotated[Path, typer.Option(help="The pinned trust.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    keep_unlisted: Annotated[
        bool, typer.Option("--keep-unlisted/--delete-unlisted",
                           help="Keep files the new index no longer lists for --grace-days, "
                           "or delete them once index.json lands.")
    ] = True,
    grace_days: Annotated[
        float, typer.Option(help="How long unlisted files are kept.")
    ] = 7.0,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 20.0,
    workers: Annotated[int, typer.Option(help="Parallel downloads.")] = 8,
) -> None:
    """Mirror a tree from the first upstream that answers, verifying before anything lands."""
    import json

    from repobuild.mirror.sync import sync as do_sync
    from repobuild.trust import load_trust

    policy = run(lambda: load_trust(trust))
    with progress_bar("fetching") as bar:
        result = run(lambda: do_sync(upstreams, to, policy, timeout=timeout,
                                     grace_days=grace_days, keep_unlisted=keep_unlisted,
                                     workers=workers, progress=bar))
    if as_json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        from rich.table import Table

        table = Table(title=f"repobuild sync → {to}", show_header=False)
        table.add_row("result", ("[green]OK[/]" + (" (no change)" if result.noop else ""))
                      if result.ok else "[red]FAILED[/]")
        table.add_row("version", f"{result.version} (from {result.upstream})"
                      if result.upstream else str(result.version))
        table.add_row("fetched", f"{result.fetched} files ({result.bytes:,} bytes)")
        table.add_row("already there", f"{result.skipped} files")
        table.add_row("removed / kept unlisted", f"{result.removed} / {result.in_grace}")
        for url, s in result.upstreams.items():
            table.add_row(url, f"{s.files} files, {s.bytes:,} bytes, {s.errors} errors")
        table.add_row("time", f"{result.seconds:.2f}s")
        out.print(table)
    for failure in result.failures[:50]:
        err.print(f"repobuild: sync: {failure}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def probe(
    urls: Annotated[list[str], typer.Argument(help="Mirror URLs.")],
    trust: Annotated[Path, typer.Option(help="The pinned trust.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    sample: Annotated[int, typer.Option(help="Blobs to fetch and hash-check per mirror.")] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
) -> None:
    """Health and freshness of mirrors: signature, expiry, version lag, sampled blobs."""
    import json

    from repobuild.mirror.probe import probe as do_probe
    from repobuild.trust import load_trust

    policy = run(lambda: load_trust(trust))
    results = run(lambda: do_probe(urls, policy, sample=sample, timeout=timeout))
    if as_json:
        print(json.dumps([r.to_json() for r in results], indent=2, sort_keys=True))
    else:
        from rich.table import Table

        table = Table(title="repobuild probe")
        for col in ("mirror", "health", "latency", "version", "lag", "signature", "sample"):
            table.add_column(col)
        for r in results:
            table.add_row(
                r.url, "[green]healthy[/]" if r.healthy else "[red]unhealthy[/]",
                f"{r.latency_ms} ms" if r.latency_ms is not None else "-", str(r.version),
                str(r.lag), "ok" if r.signature_ok else "BAD",
                f"{r.sampled} ok" if r.sample_ok else "BAD",
            )
        out.print(table)
    for r in results:
        for problem in r.problems:
            err.print(f"repobuild: probe: {r.url}: {problem}", markup=False, soft_wrap=True)
    raise typer.Exit(0 if all(r.healthy for r in results) else 1)


@app.command()
def serve(
    directory: Annotated[Path, typer.Argument(help="A built tree.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    quiet: Annotated[bool, typer.Option(help="No access log on standard error.")] = False,
) -> None:
    """Serve a tree over HTTP for apt and pip: ranges, ETags, cache headers, PEP 691.

    Stops cleanly on Ctrl-C or SIGTERM (exit 0).
    """
    from repobuild.mirror.serve import serve as do_serve

    run(lambda: do_serve(directory, host, port, quiet=quiet))
