"""``repobuild build`` leaves without tearing the interpreter down once its work is over (see
``repobuild.cli._quick_exit``), and only then: its output is all written, nothing of its own is
left in TMPDIR (the gpg home holds the imported secret key), and a failed build exits as usual."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from clients import REPO

from repobuild import cli

# the CLI as installed, with one atexit handler more: it runs only on an ordinary exit
CLI = ("import atexit, repobuild.cli; atexit.register(lambda: print('torn down')); "
       "repobuild.cli.main()")


def run_build(tmp_path: Path, source: Path) -> subprocess.CompletedProcess[str]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run(
        [sys.executable, "-c", CLI, "build", str(source), "--out", str(tmp_path / "out"),
         "--keys", str(REPO / "keys.example")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )


def test_a_finished_build_exits_at_once_with_everything_written(tmp_path: Path) -> None:
    done = run_build(tmp_path, REPO / "fixtures" / "release")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("built version 1 in "), done.stdout
    assert "torn down" not in done.stdout  # the quick exit was taken
    assert "INSECURE demo keys" in done.stderr  # the warning got out as well
    assert list((tmp_path / "tmp").iterdir()) == []  # no gpg home (nor anything) left behind
    assert (tmp_path / "out" / "index.json.asc").is_file()


def test_a_failed_build_exits_as_usual(tmp_path: Path) -> None:
    done = run_build(tmp_path, tmp_path / "no-such-release")
    assert done.returncode != 0
    assert "repobuild: error:" in done.stderr and "Traceback" not in done.stderr
    assert "torn down" in done.stdout


def test_no_quick_exit_while_another_thread_runs() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        cli._quick_exit(0)  # would end this very test process if it did not hold back
    finally:
        release.set()
        worker.join()


@pytest.mark.parametrize("code", [0, 1])
def test_quick_exit_keeps_the_exit_status(tmp_path: Path, code: int) -> None:
    script = ("import sys; from repobuild import cli; print('out', flush=False); "
              f"sys.stderr.write('err'); cli._quick_exit({code}); print('not reached')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (code, "out\n", "err")
