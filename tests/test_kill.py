"""A build into an existing OUT that is killed with SIGKILL leaves the previous tree valid
(CONTRACT.md guarantee 3), and the next build completes.

How the kill is aimed. A build reads and checks every input first (copying each into
``OUT/.repobuild/tmp`` as it reads it), renders and signs everything in memory, and only then
changes OUT: blobs (renames from ``.repobuild/tmp``), by-hash copies, mutable indices, index.json,
its signatures. Renaming a few large files takes microseconds, so 30 files of 20 MB give a long
reading phase but no window to kill in while blobs land. Many small files do: with 2,000 new 4 KB
files, placing the blobs takes a few hundred milliseconds (a mkdir and a rename each) while the
rest of the writing phase takes a millisecond or two. So the tests add 2,000 small files, start
``python -m repobuild build`` with Popen, poll OUT until a NEW blob is there (or, for the reading
phase, until ``.repobuild/tmp`` has content and no new blob exists yet) and SIGKILL it.

``repobuild verify`` would (rightly) flag the new blobs a killed build leaves unlisted, so the
old tree is checked directly: index.json still parses, its OpenPGP signature verifies with
``gpgv --keyring OUT/keys/repo.gpg``, and every file it lists is there with its size and
SHA-256. Then a rerun completes and ``repobuild verify`` passes.

Two windows cannot be closed by any order of renames, and the random-kill test names them when
it lands in one (a warning, not a failure): between the first and last rename of the mutable
indices (Packages, Release, simple pages... at fixed paths, so the old index.json's hash of an
already replaced one is stale; by-hash copies, written before, keep apt working) and between
index.json and its signature. Each lasts about a millisecond here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from repobuild.formats import manifest
from tests.clients import DEMO_KEYS, FIXTURES, REPO, fixture_generator, snapshot

N_FILES = 2000  # new files for the targeted kills
N_BATCH = 800  # new files per attempt of the random kills
FILE_SIZE = 4096
STATE = ".repobuild"


def env() -> dict[str, str]:
    """No SOURCE_DATE_EPOCH: the trees must not be expired when `repobuild verify` runs."""
    e = dict(os.environ)
    e.pop("SOURCE_DATE_EPOCH", None)
    return e


def cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "repobuild", *map(str, args)]


def build(src: Path, out: Path) -> None:
    proc = subprocess.run(cmd("build", src, "--out", out, "--keys", DEMO_KEYS),
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr


def verify(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd("verify", out, "--trust", DEMO_KEYS / "trust.json"),
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)




def add_files(src: Path, batch: str, n: int = N_FILES) -> None:
    """n small files, plus a .deb and a wheel so that Packages and the simple pages change."""
    folder = src / "bulk" / batch
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(FILE_SIZE))
    gen = fixture_generator()
    name = f"rbdemo-kill-{batch}"
    gen.make_deb(src / "debs", name, "1.0-1", "amd64")
    gen.make_wheel(src / "python", name, "1.0.0")


def blobs_on_disk(out: Path) -> set[str]:
    """Blob paths (relative to OUT) whose file is there."""
    base = out / "blobs" / "sha256"
    found = set()
    for hh in os.listdir(base):
        for hexd in os.listdir(base / hh):
            for name in os.listdir(base / hh / hexd):
                found.add(f"blobs/sha256/{hh}/{hexd}/{name}")
    return found


def new_blob_dirs(out: Path, old_hex: set[str]) -> bool:
    """A new blob file is in place (cheap enough to poll)."""
    base = out / "blobs" / "sha256"
    for hh in os.listdir(base):
        for hexd in os.listdir(base / hh):
            if hexd not in old_hex and any(
                    not n.endswith(".metadata") for n in os.listdir(base / hh / hexd)):
                return True
    return False


def tmp_has_content(out: Path) -> bool:
    try:
        return bool(os.listdir(out / STATE / "tmp"))
    except FileNotFoundError:
        return False


def start(src: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd("build", src, "--out", out, "--keys", DEMO_KEYS),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                            cwd=REPO)


def kill(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGKILL; returns the exit status if the build had finished before."""
    done = proc.poll()
    if done is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return done


def gpgv_ok(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gpgv", "--keyring", str(out / "keys/repo.gpg"),
                           str(out / "index.json.asc"), str(out / "index.json")],
                          capture_output=True, text=True, timeout=60)


def listed_problems(out: Path, index: manifest.Manifest) -> dict[str, str]:
    """path -> what is wrong, for every file index.json lists."""
    problems = {}
    for rel, (size, digest) in index.listed().items():
        path = out / rel
        if not path.is_file():
            problems[rel] = "missing"
            continue
        data = path.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            problems[rel] = "differs"
    return problems


def assert_old_tree_valid(out: Path, old_index: bytes) -> manifest.Manifest:
    """index.json is the old one, parses, its signature verifies, everything listed is there."""
    raw = (out / "index.json").read_bytes()
    assert raw == old_index, "index.json changed"
    index = manifest.parse(raw)
    json.loads(raw)
    sig = gpgv_ok(out)
    assert sig.returncode == 0, sig.stderr
    assert listed_problems(out, index) == {}
    return index


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(SOURCE, OUT) built once; each test works on copies."""
    root = tmp_path_factory.mktemp("kill")
    src = shutil.copytree(FIXTURES, root / "release")
    out = root / "out"
    build(src, out)
    return src, out


def copies(base: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    src = shutil.copytree(base[0], tmp_path / "release")
    out = shutil.copytree(base[1], tmp_path / "out")
    return src, out


def test_kill_while_blobs_are_placed(base: tuple[Path, Path], tmp_path: Path) -> None:
    src, out = copies(base, tmp_path)
    add_files(src, "a")
    old_index = (out / "index.json").read_bytes()
    old_blobs = blobs_on_disk(out)
    old_hex = {p.split("/")[3] for p in old_blobs}
    before = snapshot(out)

    proc = start(src, out)
    deadline = time.monotonic() + 120
    while not new_blob_dirs(out, old_hex):
        assert proc.poll() is None, "the build ended before a new blob was seen"
        assert time.monotonic() < deadline
    assert kill(proc) is None, "the build finished before the kill"

    # new blobs landed (unlisted), the old tree is intact and valid
    new = blobs_on_disk(out) - old_blobs
    assert 0 < len(new) <= N_FILES + 2, len(new)
    index = assert_old_tree_valid(out, old_index)
    assert not new & set(index.listed())
    after = snapshot(out)
    for rel, value in before.items():  # nothing old was touched, .repobuild/ aside
        if not rel.startswith(STATE + "/"):
            assert after.get(rel) == value, f"changed: {rel}"
    # this is what `repobuild verify` objects to: files index.json does not list
    report = verify(out)
    assert report.returncode == 1 and "not listed in index.json" in report.stderr

    # the rerun completes, cleans up and verifies
    build(src, out)
    assert not tmp_has_content(out)
    final = manifest.parse((out / "index.json").read_bytes())
    assert final.version == index.version + 1
    assert len(final.artifacts) == len(index.artifacts) + N_FILES + 2
    report = verify(out)
    assert report.returncode == 0, report.stderr + report.stdout


def test_kill_while_reading_leaves_out_untouched(base: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    src, out = copies(base, tmp_path)
    add_files(src, "b")
    old_index = (out / "index.json").read_bytes()
    old_hex = {p.split("/")[3] for p in blobs_on_disk(out)}
    before = snapshot(out)

    proc = start(src, out)
    deadline = time.monotonic() + 120
    while not tmp_has_content(out):
        assert proc.poll() is None, "the build ended before it wrote to .repobuild/tmp"
        assert time.monotonic() < deadline
    assert kill(proc) is None
    assert not new_blob_dirs(out, old_hex), "killed later than the reading phase"
    assert tmp_has_content(out)  # partial copies, local state only

    assert_old_tree_valid(out, old_index)
    after = snapshot(out)
    outside_state = {k: v for k, v in after.items() if not k.startswith(STATE + "/")}
    assert outside_state == {k: v for k, v in before.items() if not k.startswith(STATE + "/")}
    assert verify(out).returncode == 0  # nothing unlisted: the tree is exactly the old one

    build(src, out)
    assert not tmp_has_content(out)
    assert verify(out).returncode == 0


def test_kill_at_increasing_delays(base: tuple[Path, Path], tmp_path: Path) -> None:
    """Five kills spread over a whole build; after each, the tree is valid (old or new)."""
    src, out = copies(base, tmp_path)
    # calibrate: how long does a build with one batch of new files take here?
    add_files(src, "calibrate", N_BATCH)
    t0 = time.monotonic()
    build(src, out)
    duration = time.monotonic() - t0

    hits: list[str] = []
    batches = 1
    pending = False  # a batch no completed build has taken in yet
    for attempt, fraction in enumerate((0.2, 0.4, 0.55, 0.7, 0.85)):
        if not pending:  # the same amount of work every time: one batch not yet built
            add_files(src, f"batch{attempt}", N_BATCH)
            batches += 1
        old_raw = (out / "index.json").read_bytes()
        old = manifest.parse(old_raw)
        old_blobs = blobs_on_disk(out)
        proc = start(src, out)
        time.sleep(duration * fraction)
        finished = kill(proc)
        new_blobs = blobs_on_disk(out) - old_blobs
        raw = (out / "index.json").read_bytes()
        index = manifest.parse(raw)
        problems = listed_problems(out, index)
        sig = gpgv_ok(out)
        if raw == old_raw:
            phase = "writing blobs" if new_blobs else "reading"
            if problems and all(not p.startswith("blobs/") and "/by-hash/" not in p
                                for p in problems):
                phase = f"renaming mutable indices (stale hashes: {sorted(problems)})"
                warnings.warn(f"kill {attempt} landed while mutable indices were renamed",
                              stacklevel=1)
            else:
                assert problems == {}, (attempt, problems)
            assert sig.returncode == 0, (attempt, sig.stderr)
        else:
            # a newer, complete index: every file it lists is in place
            assert index.version == old.version + 1, attempt
            assert problems == {}, (attempt, problems)
            if sig.returncode != 0:
                phase = "between index.json and its signature"
                warnings.warn(f"kill {attempt} landed between index.json and its signature",
                              stacklevel=1)
            else:
                phase = "finished" if finished == 0 else "after index.json and its signatures"
        pending = raw == old_raw
        hits.append(f"{fraction:.2f}: {phase}")
    print("kills landed in:", hits)

    build(src, out)
    final = manifest.parse((out / "index.json").read_bytes())
    assert len([a for a in final.artifacts if a["path"].startswith("bulk/")]) == batches * N_BATCH
    report = verify(out)
    assert report.returncode == 0, report.stderr + report.stdout
