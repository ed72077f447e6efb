"""The fixture generator writes real packages: dpkg-deb and pip accept them, and it is
deterministic, so that the committed fixtures/release is exactly what the generator writes."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "fixtures" / "make_release.py"
RELEASE = REPO / "fixtures" / "release"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_release", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


mr = _load_generator()

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")


def _dpkg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dpkg-deb", *map(str, args)], capture_output=True, text=True, timeout=60)


def _pip_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
    }
    env.update(PIP_CONFIG_FILE="/dev/null", PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _pip_install(target: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--target", str(target)]
        + [str(a) for a in args],
        capture_output=True,
        text=True,
        env=_pip_env(),
        timeout=300,
    )


def _run_python(path: Path, code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(path))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- the committed release ------------------------------------------------------------------


def test_committed_release_is_byte_identical_to_a_fresh_generation(tmp_path: Path) -> None:
    written = mr.build_release(tmp_path)
    fresh = _tree(tmp_path)
    committed = _tree(RELEASE)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(fresh)
    assert sorted(committed) == sorted(fresh), "run: python fixtures/make_release.py"
    differing = [name for name in fresh if committed[name] != fresh[name]]
    assert not differing, f"regenerate with python fixtures/make_release.py: {differing}"


def test_two_generations_are_identical(tmp_path: Path) -> None:
    mr.build_release(tmp_path / "a")
    mr.build_release(tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_script_wipes_and_rewrites_outdir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stale = out / "debs" / "stale.deb"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert _tree(out) == _tree(RELEASE)


def test_script_refuses_to_wipe_a_foreign_folder(tmp_path: Path) -> None:
    keep = tmp_path / "precious.txt"
    keep.write_text("do not delete")
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "precious.txt" in proc.stderr
    assert keep.read_text() == "do not delete"


def test_release_shape() -> None:
    files = _tree(RELEASE)
    assert sum(len(b) for b in files.values()) < 200 * 1024
    debs = mr.RELEASE_DEBS
    assert {d.arch for d in debs} >= {"amd64", "arm64", "all"}
    assert any(":" in d.version for d in debs)
    assert any("~" in d.version and "+" in d.version for d in debs)
    names = [d.name for d in debs]
    assert any(names.count(n) > 1 for n in names), "two versions of one package side by side"
    assert len({d.control_compression for d in debs}) == len(debs)
    for deb in debs:
        assert deb.path in files
        assert ":" not in deb.path
    assert len(mr.RELEASE_WHEELS) >= 3 and len(mr.RELEASE_SDISTS) >= 1
    assert len([f for f in files if f.startswith("files/")]) >= 2
    assert "rbdemo-tools_2.0-1_arm64.deb" in {Path(f).name for f in files}


# -- Debian packages ---------------------------------------------------------------------


@needs_dpkg
@pytest.mark.parametrize("deb", mr.RELEASE_DEBS, ids=lambda d: Path(d.path).name)
def test_dpkg_deb_accepts_fixture_debs(deb: Any, tmp_path: Path) -> None:
    path = RELEASE / deb.path
    info = _dpkg("--info", path)
    assert info.returncode == 0, info.stderr
    fields = _dpkg("--field", path, "Package", "Version", "Architecture")
    assert fields.returncode == 0, fields.stderr
    assert fields.stdout.splitlines() == [
        f"Package: {deb.name}",
        f"Version: {deb.version}",
        f"Architecture: {deb.arch}",
    ]
    contents = _dpkg("--contents", path)
    assert contents.returncode == 0, contents.stderr
    assert f"./usr/share/{deb.name}/README" in contents.stdout
    # Extract and check the payload against the package's own md5sums.
    extracted = _dpkg("-x", path, tmp_path / "root")
    assert extracted.returncode == 0, extracted.stderr
    control = _dpkg("-e", path, tmp_path / "control")
    assert control.returncode == 0, control.stderr
    lines = (tmp_path / "control" / "md5sums").read_text().splitlines()
    assert lines
    for line in lines:
        digest, rel = line.split("  ", 1)
        assert hashlib.md5((tmp_path / "root" / rel).read_bytes()).hexdigest() == digest


def test_deb_members_and_compression() -> None:
    suffix = {"gz": ".gz", "xz": ".xz", "zst": ".zst", "none": ""}
    for deb in mr.RELEASE_DEBS:
        data = (RELEASE / deb.path).read_bytes()
        members = mr._ar_members(data)
        assert [m[0] for m in members] == [
            "debian-binary",
            "control.tar" + suffix[deb.control_compression],
            "data.tar" + suffix[deb.data_compression],
        ]
        name, offset, size = members[0]
        assert data[offset : offset + size] == b"2.0\n"
        assert offset + size + size % 2 <= len(data)
        # every member is complete and the archive ends after the last one
        last = members[-1]
        assert last[1] + last[2] + last[2] % 2 == len(data)


def test_zstd_frames_decode_with_libzstd() -> None:
    zstandard = pytest.importorskip("zstandard")
    for payload in (b"", b"x", bytes(range(256)) * 1200):  # the last needs three blocks
        frame = mr.zstd_bytes(payload)
        assert zstandard.ZstdDecompressor().decompress(frame) == payload
        assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == payload


def test_gzip_output_is_standard() -> None:
    import gzip

    payload = b"hello " * 1000
    data = mr.gzip_bytes(payload)
    assert gzip.decompress(data) == payload
    assert data[4:8] == b"\0\0\0\0"  # mtime 0


def test_deb_epoch_is_left_out_of_file_name(tmp_path: Path) -> None:
    path = mr.make_deb(tmp_path, "rbdemo-x", "3:1.2-1", "amd64", control_compression="xz")
    assert path.name == "rbdemo-x_1.2-1_amd64.deb"


@needs_dpkg
@pytest.mark.parametrize("compression", ["gz", "xz", "zst", "none"])
def test_make_deb_options(tmp_path: Path, compression: str) -> None:
    path = mr.make_deb(
        tmp_path / "custom.deb",
        "rbdemo-custom",
        "0.1-1",
        "riscv64",
        depends="rbdemo-data",
        description="short\nlong line one\n\nlong line two",
        payload_files={"sub/dir/file.txt": b"content\n"},
        control_compression=compression,
        data_compression="gz" if compression == "none" else compression,
        extra_control={"Section": "devel", "Homepage": "https://example.invalid/"},
    )
    fields = _dpkg("--field", path, "Depends", "Section", "Homepage")
    assert fields.returncode == 0, fields.stderr
    assert fields.stdout.splitlines() == [
        "Depends: rbdemo-data",
        "Section: devel",
        "Homepage: https://example.invalid/",
    ]
    contents = _dpkg("--contents", path)
    assert contents.returncode == 0, contents.stderr
    assert "./usr/share/rbdemo-custom/sub/dir/file.txt" in contents.stdout
    desc = _dpkg("--field", path, "Description").stdout
    assert desc == "short\n long line one\n .\n long line two\n"  # one field: value only


@needs_dpkg
def test_truncated_deb_is_rejected(tmp_path: Path) -> None:
    path = mr.make_truncated_deb(tmp_path / "broken.deb")
    good = mr.deb_bytes("rbdemo-broken", "1.0-1", "all")
    assert good.startswith(path.read_bytes()) and path.stat().st_size < len(good)
    proc = _dpkg("--contents", path)
    assert proc.returncode != 0
    proc = _dpkg("-x", path, tmp_path / "root")
    assert proc.returncode != 0


@needs_dpkg
def test_deb_without_control_is_rejected(tmp_path: Path) -> None:
    path = mr.make_deb_without_control(tmp_path / "nocontrol.deb")
    assert [m[0] for m in mr._ar_members(path.read_bytes())] == ["debian-binary", "data.tar.xz"]
    for args in (("--info",), ("--contents",)):
        proc = _dpkg(*args, path)
        assert proc.returncode != 0
        assert "control.tar" in proc.stderr


@needs_dpkg
def test_bad_inputs(tmp_path: Path) -> None:
    bad = mr.build_bad_inputs(tmp_path)
    for kind in ("truncated_deb", "deb_without_control", "not_a_deb"):
        assert _dpkg("--contents", bad[kind]).returncode != 0, kind
    dup = bad["duplicate_deb"]
    original = RELEASE / "debs" / "rbdemo-hello_1.0-1_amd64.deb"
    assert dup.read_bytes() != original.read_bytes()
    fields = ("Package", "Version", "Architecture")
    assert _dpkg("--field", dup, *fields).stdout == _dpkg("--field", original, *fields).stdout


# -- wheels and sdists ---------------------------------------------------------------------


@pytest.mark.parametrize("wheel", mr.RELEASE_WHEELS, ids=lambda w: w.name)
def test_wheel_metadata_and_record(wheel: Any) -> None:
    path = RELEASE / wheel.path
    name, version = wheel.name, wheel.version
    dist_info = f"{mr.normalize_name(name)}-{version}.dist-info"
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        record = archive.read(f"{dist_info}/RECORD").decode()
        rows = list(csv.reader(io.StringIO(record)))
        assert sorted(r[0] for r in rows) == sorted(names)
        for file_name, digest, size in rows:
            if file_name == f"{dist_info}/RECORD":
                assert digest == size == ""
                continue
            data = archive.read(file_name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode()
            assert int(size) == len(data)
        assert f"{wheel.module}/__init__.py" in names
        assert "Root-Is-Purelib: true" in archive.read(f"{dist_info}/WHEEL").decode()
    headers = metadata.split("\n\n", 1)[0].splitlines()
    assert "Metadata-Version: 2.1" in headers
    assert f"Name: {name}" in headers
    assert f"Version: {version}" in headers
    if wheel.requires_python:
        assert f"Requires-Python: {wheel.requires_python}" in headers
    for req in wheel.requires_dist:
        assert f"Requires-Dist: {req}" in headers


def test_pip_installs_each_wheel(tmp_path: Path) -> None:
    for wheel in mr.RELEASE_WHEELS:
        target = tmp_path / wheel.module
        proc = _pip_install(target, "--no-deps", RELEASE / wheel.path)
        assert proc.returncode == 0, proc.stderr
        out = _run_python(target, f"import {wheel.module} as m; print(m.hello())")
        assert out.strip() == f"hello from {wheel.name} {wheel.version}"


def test_pip_resolves_dependency_from_find_links(tmp_path: Path) -> None:
    proc = _pip_install(tmp_path, "--find-links", RELEASE / "python", "rbdemo-app")
    assert proc.returncode == 0, proc.stderr
    installed = sorted(p.name for p in tmp_path.glob("*.dist-info"))
    assert installed == ["rbdemo_app-0.2.0.dist-info", "rbdemo_lib-1.0.0.dist-info"]
    _run_python(tmp_path, "import rbdemo_app, rbdemo_lib")


def test_pip_builds_and_installs_the_sdist_offline(tmp_path: Path) -> None:
    (sdist,) = mr.RELEASE_SDISTS
    proc = _pip_install(tmp_path, "--no-deps", RELEASE / sdist.path)
    assert proc.returncode == 0, proc.stderr
    module = mr.normalize_name(sdist.name)
    out = _run_python(tmp_path, f"import {module} as m; print(m.hello())")
    assert out.strip() == f"hello from {sdist.name} {sdist.version}"


def test_sdist_layout() -> None:
    (sdist,) = mr.RELEASE_SDISTS
    path = RELEASE / sdist.path
    top = f"{mr.normalize_name(sdist.name)}-{sdist.version}"
    assert path.name == f"{top}.tar.gz"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert all(m.name == top or m.name.startswith(top + "/") for m in members)
        assert all(m.mtime == mr.MTIME and m.uid == 0 and m.uname == "root" for m in members)
        pkg_info = tar.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        headers = pkg_info.read().decode().split("\n\n", 1)[0].splitlines()
        assert tar.getmember(f"{top}/pyproject.toml").isfile()
    assert "Metadata-Version: 2.1" in headers
    assert f"Name: {sdist.name}" in headers
    assert f"Version: {sdist.version}" in headers


def test_wheel_without_metadata_is_rejected_by_pip(tmp_path: Path) -> None:
    path = mr.make_wheel(tmp_path, "rbdemo-nometa", "1.0.0", omit_metadata=True)
    with zipfile.ZipFile(path) as archive:
        assert not [n for n in archive.namelist() if n.endswith("/METADATA")]
    proc = _pip_install(tmp_path / "t", "--no-deps", path)
    assert proc.returncode != 0


def test_wheel_with_disagreeing_file_name(tmp_path: Path) -> None:
    path = mr.make_wheel(tmp_path, "rbdemo-mismatch", "1.0.0", filename_version="9.9.9")
    assert path.name == "rbdemo_mismatch-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(path) as archive:
        metadata = archive.read("rbdemo_mismatch-1.0.0.dist-info/METADATA").decode()
    assert "Version: 1.0.0" in metadata.splitlines()
    # pip notices when it resolves the file name's version
    proc = _pip_install(tmp_path / "t", "--find-links", tmp_path, "rbdemo-mismatch==9.9.9")
    assert proc.returncode != 0
    assert "inconsistent version" in proc.stdout + proc.stderr


def test_metadata_override(tmp_path: Path) -> None:
    path = mr.make_wheel(tmp_path, "rbdemo-odd", "1.0.0", metadata_override=b"garbage")
    with zipfile.ZipFile(path) as archive:
        assert archive.read("rbdemo_odd-1.0.0.dist-info/METADATA") == b"garbage"
