"""How the build command runs (``repobuild.process``): one malloc arena for all of its threads,
which keeps a rebuild of 100,000 artifacts ~25 MB further below its 500 MB limit, and fewer
garbage collector runs."""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.clients import DEMO_KEYS

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc arenas only",
)

# Threads that each allocate; then glibc's own report (malloc_info) of the arenas it made.
PROBE = textwrap.dedent("""
    import ctypes, os, sys, tempfile, threading
    from repobuild.process import one_malloc_arena
    if sys.argv[1] == "one":
        one_malloc_arena()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    held = []
    def work():
        held.append(libc.malloc(1 << 20))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "info.xml").encode()
        fp = libc.fopen(path, b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        report = open(path).read()
    print(report.count("<heap nr="))
""")


def arenas(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


@glibc_only
def test_threads_share_the_main_arena_after_one_malloc_arena() -> None:
    assert arenas("default") > 1  # the probe sees the arenas threads get by default
    assert arenas("one") == 1


def test_fewer_collections_sets_the_build_threshold_and_freezes_what_exists() -> None:
    from repobuild import process

    before = gc.get_threshold()
    try:
        process.fewer_collections()
        assert gc.get_threshold() == process.GC_THRESHOLD
        assert process.GC_THRESHOLD[0] > 100 * before[0]
        # what existed then is frozen (never traversed: the forked workers share its pages)
        assert gc.get_freeze_count() > 1000
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
        process._settling = False


def test_settle_freezes_only_in_the_command_lines_build(tmp_path: Path) -> None:
    """A rebuild's cached artifacts are frozen once looked up, where the CLI runs the build;
    a library caller's objects are left to its collector."""
    from repobuild.build import build
    from repobuild.config import Config

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "notes.txt").write_bytes(b"hello\n")
    keys = DEMO_KEYS
    gc.unfreeze()
    build(src, out, keys, Config())
    assert gc.get_freeze_count() == 0  # a library call: nothing frozen
    probe = textwrap.dedent(f"""
        import gc, sys
        sys.argv = ["repobuild", "build"]
        import repobuild.process as process
        import repobuild.build as b
        process.fewer_collections()
        gc.unfreeze()
        seen = []
        settle = b.settle
        def spy():
            settle()
            seen.append(gc.get_freeze_count())
        b.settle = spy
        from pathlib import Path
        from repobuild.config import Config
        b.build(Path({str(src)!r}), Path({str(out)!r}), Path({str(keys)!r}), Config())
        print(len(seen), seen[0] > 0)
    """)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert run.stdout.split() == ["1", "True"]


def test_the_build_command_sets_both_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import repobuild.build
    import repobuild.process
    from repobuild.cli import app

    calls: list[str] = []
    monkeypatch.setattr(repobuild.process, "one_malloc_arena", lambda: calls.append("arena"))
    monkeypatch.setattr(repobuild.process, "fewer_collections", lambda: calls.append("gc"))

    def fake_build(*_args: object, **_kwargs: object) -> None:
        calls.append("build")
        raise SystemExit(0)

    monkeypatch.setattr(repobuild.build, "build", fake_build)
    CliRunner().invoke(app, ["build", "src", "--out", "out", "--keys", "keys"])
    assert calls == ["arena", "gc", "build"]


def test_the_build_command_imports_without_collections_then_collects() -> None:
    """The command line turns the collector off while a build's modules load (only for
    ``build``), and fewer_collections turns it on again."""
    probe = textwrap.dedent("""
        import gc, sys
        sys.argv = ["repobuild", *sys.argv[1:]]
        import repobuild.cli
        off = not gc.isenabled()
        from repobuild.process import fewer_collections
        fewer_collections()
        print(off, gc.isenabled())
    """)
    for argv, off in ((["build", "src"], True), (["verify", "out"], False), ([], False)):
        run = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                             text=True, check=True)
        assert run.stdout.split() == [str(off), "True"], argv
