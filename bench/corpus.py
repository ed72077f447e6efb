"""A synthetic release tree for the benchmarks, deterministic by seed.

``python bench/corpus.py N --out DIR [--seed S] [--mix deb=0.45,...] [--avg-kb 500]`` writes N
artifacts below DIR:

    DIR/deb/pkgNNNNN_1.0.K_<arch>.deb           ar archive: debian-binary, control.tar.gz
                                                (./control), data.tar.xz (a random payload)
    DIR/wheel/pkgNNNNN-1.0.K-py3-none-any.whl    zip: payload stored uncompressed, then
                                                .dist-info/METADATA, WHEEL, RECORD
    DIR/sdist/pkgNNNNN-1.0.K.tar.gz              tar.gz with a top-level PKG-INFO
    DIR/file/pkgNNNNN.bin                        random bytes
    DIR/.corpus.json                             what was asked for and what was written
                                                (hidden: repobuild skips dot files)

Payloads are random (incompressible) bytes, so no tool gains from compressing them. Everything
is written with the standard library and no compressor runs over a payload: data.tar.xz is an
xz stream of *uncompressed* LZMA2 chunks (valid for xz, dpkg-deb and Python's lzma), the sdist
is gzip level 0, the wheel stores its payload. Generating 2.5 GB takes about as long as writing
it. Sizes are log-normal around ``--avg-kb`` (capped at 16× the average); names are unique
(``pkg00001``, ``pkg00002``, ...).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import math
import os
import random
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("deb", "wheel", "sdist", "file")
DEFAULT_MIX: dict[str, float] = {"deb": 0.45, "wheel": 0.45, "sdist": 0.05, "file": 0.05}
MANIFEST = ".corpus.json"
GENERATOR_VERSION = 1  # bump when the bytes written for a given seed change
MTIME = 1_700_000_000  # fixed time in every archive member


@dataclass
class CorpusSpec:
    n: int
    seed: int = 1
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    avg_kb: float = 500.0

    def key(self) -> dict[str, object]:
        return {"generator": GENERATOR_VERSION, **asdict(self)}


@dataclass
class Corpus:
    root: Path
    spec: CorpusSpec
    files: list[str]  # relative paths, sorted
    total_bytes: int

    def paths(self, kind: str | None = None) -> list[Path]:
        return [self.root / f for f in self.files if kind is None or f.startswith(kind + "/")]

    def bytes_of(self, kind: str) -> int:
        return sum(p.stat().st_size for p in self.paths(kind))

    def count(self, kind: str) -> int:
        return len(self.paths(kind))


# -- parsing options --------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """``deb=0.45,wheel=0.45,sdist=0.05,file=0.05`` (weights are normalised)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise ValueError(f"bad --mix entry {part!r}: expected KIND=WEIGHT, KIND in {KINDS}")
        weight = float(value)
        if weight < 0:
            raise ValueError(f"bad --mix entry {part!r}: negative weight")
        mix[kind] = weight
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("--mix gives every kind a weight of 0")
    return {k: mix.get(k, 0.0) / total for k in KINDS}


# -- sizes and kinds --------------------------------------------------------------------------

SIGMA = 1.0
CAP = 16.0


def _sizes(rng: random.Random, n: int, avg: float) -> list[int]:
    """Log-normal sizes rescaled so that their mean is ``avg`` bytes (at least 1 byte each)."""
    mu = math.log(avg) - SIGMA * SIGMA / 2
    raw = [min(rng.lognormvariate(mu, SIGMA), CAP * avg) for _ in range(n)]
    scale = avg / (sum(raw) / n) if n else 1.0
    return [max(1, int(x * scale)) for x in raw]


def _kinds(rng: random.Random, n: int, mix: dict[str, float]) -> list[str]:
    """Exactly round(n * weight) of each kind (remainder to the largest), shuffled."""
    counts = {k: int(n * mix.get(k, 0.0)) for k in KINDS}
    biggest = max(KINDS, key=lambda k: mix.get(k, 0.0))
    counts[biggest] += n - sum(counts.values())
    kinds = [k for k in KINDS for _ in range(counts[k])]
    rng.shuffle(kinds)
    return kinds


# -- archive writers ----------------------------------------------------------------------


def _tar_member(name: str, data: bytes | None, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    info.uname = info.gname = "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        return info.tobuf(format=tarfile.USTAR_FORMAT)
    info.size = len(data)
    pad = (-len(data)) % tarfile.BLOCKSIZE
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * pad


def tar_bytes(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A ustar archive of (name, data) entries; data None means a folder."""
    parts = [_tar_member(n, d, 0o755 if d is None else 0o644) for n, d in entries]
    parts.append(b"\0" * (2 * tarfile.BLOCKSIZE))
    return b"".join(parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data))


def xz_stored(data: bytes) -> bytes:
    """An .xz stream (CRC32 check) of one LZMA2 block made of uncompressed chunks.

    Valid xz that any decoder reads; it costs a CRC and a copy, no compression.
    """
    flags = b"\x00\x01"  # check type: CRC32
    header = b"\xfd7zXZ\x00" + flags + _crc(flags)
    # block header: size byte, flags (1 filter, no sizes), LZMA2 filter (id 0x21, 1 property
    # byte: dictionary 1 MiB), padding to a multiple of 4, CRC32
    bh = b"\x02\x00\x21\x01\x10"
    bh += b"\0" * ((-len(bh) - 4) % 4)
    bh += _crc(bh)
    chunks = bytearray()
    step = 1 << 16
    for i in range(0, len(data), step):
        piece = data[i : i + step]
        chunks += (b"\x01" if i == 0 else b"\x02") + struct.pack(">H", len(piece) - 1) + piece
    chunks += b"\x00"
    unpadded = len(bh) + len(chunks) + 4
    block = bh + bytes(chunks) + b"\0" * ((-(len(bh) + len(chunks))) % 4) + _crc(data)
    index = b"\x00" + _varint(1) + _varint(unpadded) + _varint(len(data))
    index += b"\0" * ((-len(index)) % 4)
    index += _crc(index)
    backward = struct.pack("<I", len(index) // 4 - 1)
    footer = _crc(backward + flags) + backward + flags + b"YZ"
    return header + block + index + footer


def _ar_member(name: str, data: bytes) -> bytes:
    head = f"{name:<16}{MTIME:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    assert len(head) == 60
    return head + data + (b"\n" if len(data) % 2 else b"")


def make_deb(name: str, version: str, arch: str, size: int, rng: random.Random) -> bytes:
    description = f"synthetic benchmark package {name}\n generated by repobuild's bench/corpus.py"
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        f"Maintainer: Bench <bench@example.invalid>\nInstalled-Size: {max(1, size // 1024)}\n"
        f"Section: misc\nPriority: optional\nDescription: {description}\n"
    ).encode()
    control_tar = gzip.compress(
        tar_bytes([("./", None), ("./control", control)]), compresslevel=6, mtime=0
    )
    overhead = 8 + 3 * 60 + 4 + len(control_tar) + 5 * 512 + 2 * 512 + 200
    payload = rng.randbytes(max(0, size - overhead))
    data_tar = xz_stored(
        tar_bytes(
            [
                ("./", None),
                ("./usr/", None),
                ("./usr/share/", None),
                (f"./usr/share/{name}/", None),
                (f"./usr/share/{name}/payload.bin", payload),
            ]
        )
    )
    return (
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.gz", control_tar)
        + _ar_member("data.tar.xz", data_tar)
    )


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_wheel(name: str, version: str, size: int, rng: random.Random) -> bytes:
    info_dir = f"{name}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: synthetic benchmark wheel {name}\nRequires-Python: >=3.8\n"
    ).encode()
    wheel = (
        b"Wheel-Version: 1.0\nGenerator: bench-corpus\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    payload = rng.randbytes(max(0, size - 1200))
    members = [
        (f"{name}/__init__.py", f"# {name}\n".encode()),
        (f"{name}/payload.bin", payload),
        (f"{info_dir}/METADATA", metadata),
        (f"{info_dir}/WHEEL", wheel),
    ]
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in members)
    record += f"{info_dir}/RECORD,,\n"
    members.append((f"{info_dir}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for member, data in members:
            zi = zipfile.ZipInfo(member, date_time=(2023, 11, 14, 22, 13, 20))
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data)
    return buf.getvalue()


def make_sdist(name: str, version: str, size: int, rng: random.Random) -> bytes:
    top = f"{name}-{version}"
    pkg_info = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: synthetic benchmark sdist {name}\n"
    ).encode()
    payload = rng.randbytes(max(0, size - 3000))
    tar = tar_bytes(
        [
            (f"{top}/", None),
            (f"{top}/PKG-INFO", pkg_info),
            (f"{top}/{name}/", None),
            (f"{top}/{name}/payload.bin", payload),
        ]
    )
    return gzip.compress(tar, compresslevel=0, mtime=0)


# -- the corpus -----------------------------------------------------------------------------


def artifact_path(kind: str, index: int, rng: random.Random) -> tuple[str, str, str]:
    """(relative path, package name, version) of artifact number ``index``."""
    name = f"pkg{index:05d}"
    version = f"1.0.{index % 7}"
    if kind == "deb":
        arch = "all" if rng.random() < 0.3 else "amd64"
        return f"deb/{name}_{version}_{arch}.deb", name, version
    if kind == "wheel":
        return f"wheel/{name}-{version}-py3-none-any.whl", name, version
    if kind == "sdist":
        return f"sdist/{name}-{version}.tar.gz", name, version
    return f"file/{name}.bin", name, version


def make_artifact(kind: str, index: int, size: int, seed: int) -> tuple[str, bytes]:
    rng = random.Random(f"{seed}:{index}")
    rel, name, version = artifact_path(kind, index, rng)
    if kind == "deb":
        arch = rel.rsplit("_", 1)[1].removesuffix(".deb")
        return rel, make_deb(name, version, arch, size, rng)
    if kind == "wheel":
        return rel, make_wheel(name, version, size, rng)
    if kind == "sdist":
        return rel, make_sdist(name, version, size, rng)
    return rel, rng.randbytes(size)


def plan(spec: CorpusSpec) -> Iterator[tuple[int, str, int]]:
    """(index, kind, size) of every artifact, from the seed alone."""
    rng = random.Random(spec.seed)
    kinds = _kinds(rng, spec.n, spec.mix)
    sizes = _sizes(rng, spec.n, spec.avg_kb * 1024)
    for i, (kind, size) in enumerate(zip(kinds, sizes, strict=True), start=1):
        yield i, kind, size


def generate(out: Path, spec: CorpusSpec, *, progress: bool = False) -> Corpus:
    """Write the corpus (into an empty or missing folder) and its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        (out / kind).mkdir(exist_ok=True)
    files: list[str] = []
    total = 0
    for i, kind, size in plan(spec):
        rel, data = make_artifact(kind, i, size, spec.seed)
        (out / rel).write_bytes(data)
        files.append(rel)
        total += len(data)
        if progress and i % 500 == 0:
            print(f"  corpus: {i}/{spec.n} ({total / 1e9:.2f} GB)", file=sys.stderr, flush=True)
    files.sort()
    (out / MANIFEST).write_text(
        json.dumps({"spec": spec.key(), "files": files, "total_bytes": total}, indent=1) + "\n"
    )
    return Corpus(out, spec, files, total)


def load(out: Path, spec: CorpusSpec) -> Corpus | None:
    """The corpus in ``out`` if it was generated from ``spec`` and is intact, else None.

    Files that are not part of it (a package added by a benchmark that was killed) are removed.
    """
    try:
        doc = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if doc.get("spec") != json.loads(json.dumps(spec.key())):
        return None
    files = list(doc["files"])
    wanted = set(files)
    for kind in KINDS:
        folder = out / kind
        if not folder.is_dir():
            return None
        for entry in os.scandir(folder):
            if f"{kind}/{entry.name}" not in wanted:
                os.unlink(entry.path)
    if not all((out / f).is_file() for f in files):
        return None
    return Corpus(out, spec, files, int(doc["total_bytes"]))


def ensure(out: Path, spec: CorpusSpec, *, progress: bool = False) -> tuple[Corpus, bool]:
    """Load the cached corpus or (re)generate it. Returns (corpus, was_generated)."""
    found = load(out, spec)
    if found is not None:
        return found, False
    if out.exists():
        import shutil

        shutil.rmtree(out)
    return generate(out, spec, progress=progress), True


def add_package(corpus: Corpus | Path, kind: str = "deb", *, tag: int = 1) -> Path:
    """Write one more artifact (not in the manifest) into an existing corpus; return its path.

    The new package is named ``new{tag:05d}`` and is about the corpus's average size. Remove it
    with ``path.unlink()`` (``load`` also drops it).
    """
    if isinstance(corpus, Path):
        doc = json.loads((corpus / MANIFEST).read_text())["spec"]
        root, seed, avg_kb = corpus, int(doc["seed"]), float(doc["avg_kb"])
    else:
        root, seed, avg_kb = corpus.root, corpus.spec.seed, corpus.spec.avg_kb
    rng = random.Random(f"{seed}:new:{tag}")
    size = int(avg_kb * 1024)
    name, version = f"new{tag:05d}", "2.0.0"
    if kind == "deb":
        rel, data = f"deb/{name}_{version}_amd64.deb", make_deb(name, version, "amd64", size, rng)
    elif kind == "wheel":
        rel, data = f"wheel/{name}-{version}-py3-none-any.whl", make_wheel(name, version, size, rng)
    elif kind == "sdist":
        rel, data = f"sdist/{name}-{version}.tar.gz", make_sdist(name, version, size, rng)
    else:
        rel, data = f"file/{name}.bin", rng.randbytes(size)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, help="number of artifacts")
    ap.add_argument("--out", type=Path, required=True, help="folder to write (emptied first)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="deb=0.45,wheel=0.45,sdist=0.05,file=0.05")
    ap.add_argument("--avg-kb", type=float, default=500.0, help="average artifact size")
    args = ap.parse_args(argv)
    try:
        spec = CorpusSpec(args.n, args.seed, parse_mix(args.mix), args.avg_kb)
    except ValueError as exc:
        ap.error(str(exc))
    corpus, made = ensure(args.out, spec, progress=True)
    counts = ", ".join(f"{corpus.count(k)} {k}" for k in KINDS)
    verb = "wrote" if made else "already there:"
    print(f"{verb} {len(corpus.files)} artifacts ({counts}), {corpus.total_bytes:,} bytes "
          f"in {corpus.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
