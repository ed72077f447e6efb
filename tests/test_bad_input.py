"""Bad input is refused (CONTRACT.md guarantee 5) and usage errors are told apart (exit 2).

Each bad SOURCE is the fixture release plus one bad file. A build of it into a good OUT exits 1
with ONE line on standard error that names the file by its SOURCE-relative path and the reason,
no Python traceback, and leaves OUT exactly as it was: every file, ``.repobuild/`` (lock, cache,
history) included, keeps its inode, size, mtime and bytes. A build into a folder that does not
exist yet leaves no folder behind (nor any parent it had to create).
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import DEMO_KEYS, FIXTURES, fixture_generator, repobuild, snapshot

EPOCH = 1_700_000_000




gen = fixture_generator()


def build(source: Path, out: Path, *extra: str | Path,  # type: ignore[no-untyped-def]
          workers: str = ""):
    env = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    if workers:
        env["REPOBUILD_WORKERS"] = workers  # 2: the files are read in worker processes
    return repobuild("build", source, "--out", out, "--keys", DEMO_KEYS, *extra, env=env)


def one_line(stderr: str) -> str:
    """The single line on standard error (no traceback, nothing else)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(SOURCE, OUT): a private copy of the fixture release and a good build of it."""
    root = tmp_path_factory.mktemp("bad-input")
    source = shutil.copytree(FIXTURES, root / "release")
    out = root / "out"
    proc = build(source, out)
    assert proc.returncode == 0, proc.stderr
    return source, out


# -- the bad inputs: each writes one bad thing into a copy of SOURCE and returns --------------
# -- (the SOURCE-relative path the message must name, words the reason must hold) -------------

Maker = Callable[[Path, Path], tuple[str, list[str]]]


def truncated_deb(src: Path, outside: Path) -> tuple[str, list[str]]:
    gen.make_truncated_deb(src / "debs" / "rbdemo-broken_1.0-1_all.deb")
    return "debs/rbdemo-broken_1.0-1_all.deb", ["truncated"]


def deb_without_control(src: Path, outside: Path) -> tuple[str, list[str]]:
    gen.make_deb_without_control(src / "debs" / "rbdemo-nocontrol_1.0-1_all.deb")
    return "debs/rbdemo-nocontrol_1.0-1_all.deb", ["control"]


def text_named_deb(src: Path, outside: Path) -> tuple[str, list[str]]:
    (src / "debs" / "notes_1.0_all.deb").write_text("this is not a Debian package\n")
    return "debs/notes_1.0_all.deb", ["not a debian package"]


def wheel_without_metadata(src: Path, outside: Path) -> tuple[str, list[str]]:
    whl = gen.make_wheel(src / "python", "rbdemo-nometa", "1.0.0", omit_metadata=True)
    return f"python/{whl.name}", ["METADATA"]


def wheel_name_disagrees(src: Path, outside: Path) -> tuple[str, list[str]]:
    whl = gen.make_wheel(src / "python", "rbdemo-mismatch", "1.0.0", filename_version="9.9.9")
    return f"python/{whl.name}", ["9.9.9", "1.0.0"]


def corrupt_zip_wheel(src: Path, outside: Path) -> tuple[str, list[str]]:
    path = src / "python" / "rbdemo_junk-1.0-py3-none-any.whl"
    path.write_bytes(b"PK\x03\x04" + os.urandom(4000))
    return "python/rbdemo_junk-1.0-py3-none-any.whl", ["zip"]


def damaged_zip_wheel(src: Path, outside: Path) -> tuple[str, list[str]]:
    """A real zip whose METADATA entry is overwritten in the middle (a bad download)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("rbdemo_junk-1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: rbdemo-junk\nVersion: 1.0\n" * 40)
        zf.writestr("rbdemo_junk-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    data = bytearray(buf.getvalue())
    data[40:200] = b"x" * 160
    (src / "python" / "rbdemo_junk-1.0-py3-none-any.whl").write_bytes(bytes(data))
    return "python/rbdemo_junk-1.0-py3-none-any.whl", ["METADATA"]


def symlink_to_outside_file(src: Path, outside: Path) -> tuple[str, list[str]]:
    target = outside / "secret.txt"
    target.write_text("not part of the release\n")
    (src / "files" / "leak.txt").symlink_to(target)
    return "files/leak.txt", ["symlink", "out of SOURCE"]


def symlink_to_outside_folder(src: Path, outside: Path) -> tuple[str, list[str]]:
    folder = outside / "elsewhere"
    folder.mkdir()
    (folder / "a.txt").write_text("not part of the release\n")
    (src / "files" / "more").symlink_to(folder, target_is_directory=True)
    return "files/more", ["symlink", "out of SOURCE"]


def dotdot_symlink(src: Path, outside: Path) -> tuple[str, list[str]]:
    """A relative link that climbs out with '..'."""
    (outside / "x.deb").write_bytes(b"!<arch>\n")
    rel = os.path.relpath(outside / "x.deb", src / "debs")
    (src / "debs" / "x.deb").symlink_to(rel)
    return "debs/x.deb", ["symlink", "out of SOURCE"]


def two_debs_one_version(src: Path, outside: Path) -> tuple[str, list[str]]:
    # same Package, Version and Architecture as debs/rbdemo-hello_1.0-1_amd64.deb, other bytes
    (src / "debs" / "rebuilt").mkdir()
    gen.make_deb(src / "debs" / "rebuilt", "rbdemo-hello", "1.0-1", "amd64",
                 payload_files={"README": b"a different build of the same version\n"})
    # the other one is named too: whichever comes second in SOURCE order is blamed
    return "debs/rebuilt/rbdemo-hello_1.0-1_amd64.deb", [
        "debs/rbdemo-hello_1.0-1_amd64.deb", "rbdemo-hello", "1.0-1", "amd64"]


CASES: dict[str, Maker] = {f.__name__: f for f in (
    truncated_deb, deb_without_control, text_named_deb, wheel_without_metadata,
    wheel_name_disagrees, corrupt_zip_wheel, damaged_zip_wheel, symlink_to_outside_file,
    symlink_to_outside_folder, dotdot_symlink, two_debs_one_version,
)}


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "worker-processes"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_out_is_unchanged(case: str, workers: str,
                                                    good: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    source, out = good
    src = shutil.copytree(source, tmp_path / "release", symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    rel, words = CASES[case](src, outside)

    before = snapshot(out)
    assert any(k.startswith(".repobuild/") for k in before)
    proc = build(src, out, workers=workers)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = one_line(proc.stderr)
    assert f"{rel}:" in line or f"{rel} " in line, f"the message does not name {rel}: {line}"
    assert str(src) not in line.split(rel)[0], f"not a SOURCE-relative name: {line}"
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in: {line}"
    # OUT, .repobuild/ included, exactly as it was: same inodes, sizes, mtimes and bytes
    after = snapshot(out)
    assert sorted(after) == sorted(before), set(after) ^ set(before)
    changed = [k for k in before if before[k] != after[k]]
    assert changed == [], f"changed in OUT: {changed}"

    # into a folder that does not exist yet (nor does its parent): nothing is left behind
    fresh = tmp_path / "new-parent" / "out"
    proc = build(src, fresh, workers=workers)
    assert proc.returncode == 1, proc.stderr
    assert one_line(proc.stderr) == line.replace(str(out), str(fresh))
    assert not fresh.exists(), "a failed build left OUT behind"
    assert not fresh.parent.exists(), "a failed build left OUT's new parent folder behind"


# -- usage and configuration errors: exit 2, one line naming the file ----------------------------


def test_usage_errors_exit_2_with_one_line(good: tuple[Path, Path], tmp_path: Path) -> None:
    source, out = good
    before = snapshot(out)
    missing_keys = tmp_path / "no-such-keys"
    bad_toml = tmp_path / "repobuild.toml"
    bad_toml.write_text("[repository\nsuite = 'stable'\n")
    missing_source = tmp_path / "no-such-release"
    runs = {
        "missing --keys folder": (
            repobuild("build", source, "--out", out, "--keys", missing_keys), str(missing_keys)),
        "no --keys at all": (repobuild("build", source, "--out", out), "--keys"),
        "nonexistent SOURCE": (build(missing_source, out), str(missing_source)),
        "malformed repobuild.toml": (build(source, out, "--config", bad_toml), str(bad_toml)),
        "missing repobuild.toml": (
            build(source, out, "--config", tmp_path / "nope.toml"), str(tmp_path / "nope.toml")),
    }
    for what, (proc, named) in runs.items():
        assert proc.returncode == 2, (what, proc.returncode, proc.stderr)
        line = one_line(proc.stderr)
        assert named in line, (what, line)
    assert snapshot(out) == before
    # none of them created a fresh OUT either
    fresh = tmp_path / "fresh-out"
    for proc in (build(missing_source, fresh), build(source, fresh, "--config", bad_toml),
                 repobuild("build", source, "--out", fresh, "--keys", missing_keys)):
        assert proc.returncode == 2, proc.stderr
        assert not fresh.exists()
