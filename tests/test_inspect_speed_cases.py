"""The inspectors' direct readers agree with the standard modules they stand in for.

repobuild/formats reads the common case itself (a .deb's control.tar by tar headers, a plain
zip's central directory and member, METADATA's header block, Deb822 fields kept as parsed) and
hands anything else to tarfile, gzip, zipfile and email.parser. Each test here takes a case
both ways, the direct reader and the module alone, and wants the same outcome: the same bytes
or fields, or the same error with the same message. Randomly damaged inputs (seeded) check the
edges, where a direct reader has to give up rather than guess.
"""

from __future__ import annotations

import gzip
import io
import lzma
import random
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from debian.deb822 import Deb822

from repobuild.formats import deb, pydist
from repobuild.formats.deb import DebError
from repobuild.formats.pydist import DistError

Outcome = tuple[Any, ...]


def outcome(call: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return ("error", type(exc).__name__, str(exc))


# -- control.tar ---------------------------------------------------------------------------------


def tar_of(entries: list[tuple[str, bytes | None]], fmt: int = tarfile.GNU_FORMAT,
           **kinds: bytes) -> bytes:
    """A tar of (name, data) entries, None data for a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                info.type = kinds.get(name, tarfile.REGTYPE)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CONTROL = b"Package: hello\nVersion: 1.0-1\nArchitecture: amd64\nDescription: hi\n there\n"
MD5SUMS = b"".join(b"%032x  usr/share/doc/hello/file%d\n" % (i, i) for i in range(200))
DPKG_STYLE = tar_of([("./", None), ("./control", CONTROL), ("./md5sums", MD5SUMS),
                     ("./postinst", b"#!/bin/sh\nexit 0\n")])


def reference_control(member: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """read_control_tar with gzip.decompress and tarfile alone."""
    with monkeypatch.context() as m:
        m.setattr(deb, "_plain_tar_control", lambda data: None)
        m.setattr(deb, "_gunzip", gzip.decompress)
        return outcome(lambda: deb.read_control_tar(member, data))


def direct_control(member: str, data: bytes) -> Outcome:
    return outcome(lambda: deb.read_control_tar(member, data))


def set_field(tar: bytes, block: int, start: int, value: bytes, *, checksum: bool = True) -> bytes:
    """The tar with a header field overwritten (and that header's checksum redone)."""
    data = bytearray(tar)
    at = block * 512
    data[at + start : at + start + len(value)] = value
    if checksum:
        header = data[at : at + 512]
        header[148:156] = b" " * 8
        data[at + 148 : at + 156] = b"%06o\0 " % sum(header)
    return bytes(data)


def control_cases() -> Iterator[tuple[str, str, bytes]]:
    yield "dpkg-style", "control.tar", DPKG_STYLE
    yield "control-last", "control.tar", tar_of([("./", None), ("./conffiles", b"/etc/x\n"),
                                                   ("./md5sums", MD5SUMS), ("./control", CONTROL)])
    yield "no-dot-slash", "control.tar", tar_of([("control", CONTROL)])
    yield "ustar", "control.tar", tar_of([("./", None), ("./control", CONTROL)],
                                         tarfile.USTAR_FORMAT)
    yield "pax", "control.tar", tar_of([("./\u00e9", b"x"), ("./control", CONTROL)],
                                       tarfile.PAX_FORMAT)
    yield "gnu-longname", "control.tar", tar_of([("./" + "l" * 150, b"x"), ("./control", CONTROL)])
    yield "symlink-first", "control.tar", tar_of([("./link", b""), ("./control", CONTROL)],
                                                 **{"./link": tarfile.SYMTYPE})
    yield "control-is-dir", "control.tar", tar_of([("./control", None)])
    yield "control-is-fifo", "control.tar", tar_of([("./control", b"")],
                                                   **{"./control": tarfile.FIFOTYPE})
    yield "no-control", "control.tar", tar_of([("./", None), ("./md5sums", MD5SUMS)])
    yield "empty", "control.tar", b""
    yield "zeros", "control.tar", bytes(1024)
    yield "short-header", "control.tar", DPKG_STYLE[:300]
    yield "control-cut", "control.tar", DPKG_STYLE[: 512 * 2 + 40]
    yield "md5sums-cut", "control.tar", tar_of([("./md5sums", MD5SUMS), ("./control", CONTROL)])[
        : 512 + 1000]
    yield "bad-checksum-first", "control.tar", set_field(DPKG_STYLE, 0, 148, b"0000000\0",
                                                         checksum=False)
    yield "bad-checksum-later", "control.tar", set_field(DPKG_STYLE, 1, 148, b"0000000\0",
                                                         checksum=False)
    yield "old-style-file", "control.tar", set_field(DPKG_STYLE, 1, 156, b"\0")
    yield "old-style-dir", "control.tar", set_field(
        tar_of([("./x/", b"abc"), ("./control", CONTROL)]), 0, 156, b"\0")
    yield "dir-with-size", "control.tar", set_field(DPKG_STYLE, 0, 124, b"00000001000\0")
    yield "base256-size", "control.tar", set_field(
        tar_of([("./md5sums", MD5SUMS), ("./control", CONTROL)]), 0, 124,
        b"\x80" + len(MD5SUMS).to_bytes(11, "big"))
    yield "size-garbage-after-nul", "control.tar", set_field(DPKG_STYLE, 1, 124, b"00000000137\0")
    yield "size-blank-padded", "control.tar", set_field(DPKG_STYLE, 1, 124, b"   137     \0")
    yield "size-plus-sign", "control.tar", set_field(DPKG_STYLE, 1, 124, b"+0000000137\0")
    yield "mode-garbage", "control.tar", set_field(DPKG_STYLE, 1, 100, b"06x4\0\0\0\0")
    yield "uid-underscore", "control.tar", set_field(DPKG_STYLE, 1, 108, b"0_0\0\0\0\0\0")
    yield "prefix-set", "control.tar", set_field(DPKG_STYLE, 1, 345, b".")
    yield "name-after-nul", "control.tar", set_field(DPKG_STYLE, 1, 9, b"\0junk")
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    plain_gz = gz.compress(DPKG_STYLE) + gz.flush()
    yield "gz", "control.tar.gz", plain_gz
    yield "gz-two-members", "control.tar.gz", gzip.compress(DPKG_STYLE[:700]) + gzip.compress(
        DPKG_STYLE[700:])
    yield "gz-nul-padding", "control.tar.gz", plain_gz + bytes(100)
    yield "gz-trailing-junk", "control.tar.gz", plain_gz + b"junk"
    yield "gz-cut", "control.tar.gz", plain_gz[:-3]
    yield "gz-crc", "control.tar.gz", plain_gz[:-8] + b"\0\0\0\0" + plain_gz[-4:]
    yield "gz-corrupt-deflate", "control.tar.gz", plain_gz[:20] + bytes(20) + plain_gz[40:]
    flags = bytearray(plain_gz)
    flags[3] = 0x02 | 0x08 | 0x10  # FHCRC (a wrong one), FNAME, FCOMMENT
    yield "gz-header-fields", "control.tar.gz", bytes(flags[:10]) + b"name\0comment\0\xff\xff" + \
        bytes(flags[10:])
    yield "gz-reserved-flag", "control.tar.gz", plain_gz[:3] + b"\x20" + plain_gz[4:]
    yield "gz-not-gzip", "control.tar.gz", b"not gzip at all"
    yield "xz", "control.tar.xz", lzma.compress(DPKG_STYLE)
    yield "xz-cut", "control.tar.xz", lzma.compress(DPKG_STYLE)[:-10]
    yield "bz2", "control.tar.bz2", DPKG_STYLE


@pytest.mark.parametrize("member,data", [(m, d) for _, m, d in control_cases()],
                         ids=[c for c, _, _ in control_cases()])
def test_control_tar_as_tarfile_reads_it(member: str, data: bytes,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    got = direct_control(member, data)
    want = reference_control(member, data, monkeypatch)
    if want[:2] == ("error", "error"):  # zlib's own error escaped before; a DebError now
        assert got[:2] == ("error", "DebError") and "unreadable" in got[2], got
    else:
        assert got == want


def test_control_tar_common_case_is_read_directly() -> None:
    assert deb._plain_tar_control(DPKG_STYLE) == CONTROL
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    assert deb._gunzip(gz.compress(DPKG_STYLE) + gz.flush()) == DPKG_STYLE


def test_corrupt_control_tar_gz_is_a_deb_error() -> None:
    data = gzip.compress(DPKG_STYLE)
    with pytest.raises(DebError, match="unreadable control.tar.gz"):
        deb.read_control_tar("control.tar.gz", data[:20] + bytes(20) + data[40:])


def test_control_tar_damaged_at_random(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1)
    base = tar_of([("./", None), ("./md5sums", MD5SUMS[:900]), ("./control", CONTROL)])
    headers = [0, 512, 512 * 2 + 1024]
    for _ in range(600):
        data = bytearray(base)
        for _ in range(rng.choice((1, 1, 2, 3))):
            block = rng.choice(headers)
            spot = block + rng.choice((rng.randrange(512), rng.randrange(100, 160),
                                       rng.randrange(124, 136), 156))
            data[spot] = rng.choice((0, 32, 48, 55, 56, 0x80, 0xFF, rng.randrange(256)))
        if rng.random() < 0.5:  # a right checksum, so that the change itself is looked at
            for block in headers:
                header = data[block : block + 512]
                header[148:156] = b" " * 8
                data[block + 148 : block + 156] = b"%06o\0 " % sum(header)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        got = direct_control("control.tar", bytes(data))
        want = reference_control("control.tar", bytes(data), monkeypatch)
        assert got == want, bytes(data[:600])


# -- control paragraph -----------------------------------------------------------------------------


def reference_fields(text: str) -> tuple[tuple[str, str], ...]:
    """The fields as Deb822's own mapping gives them back."""
    return tuple((k, v) for k, v in Deb822(text).items())


CONTROL_TEXTS = [
    CONTROL.decode(),
    "Package: a\nVersion: 1\nArchitecture: all\npackage: b\nVERSION: 2\n",
    "# a comment\n\n\nPackage: a\nVersion: 1\nArchitecture: all\n",
    "Package: a\nVersion: 1\nArchitecture: all\nDescription:\n first\n .\n second\n\n"
    "Package: other\n",
    "Package:a\nVersion :1\nArchitecture:\tall  \nDepends: x,\n  y  \n\tz\n",
    "Package: a\r\nVersion: 1\r\nArchitecture: all\r\nDescription: crlf\r\n more\r\n",
    "Package: a\nVersion: 1\x0cArchitecture: all\nX: y\x1cZ: w\n",
    "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nPackage: a\nVersion: 1\n"
    "Architecture: all\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n",
    "Package: a\nVersion: 1\nArchitecture: all\n   \nAfter: blank-ish\n",
    "Package: a\nnot a field\nVersion: 1\nArchitecture: all\n",
    "   \n\nPackage: a\n#Version: 2\nVersion: 1\nArchitecture: all\nSize: 3\nMD5sum: x\n",
    "Package: \u00e9t\u00e9\nVersion: 1\nArchitecture: all\nMaintainer: J\u00f6rg\n",
    "",
    "\n\n",
    "Version: 1\nArchitecture: all\n",
    "Package: a\nVersion: 1:2.0~rc1+dfsg-3\nArchitecture: any-amd64\nEmpty:\n",
]


@pytest.mark.parametrize("text", CONTROL_TEXTS)
def test_control_fields_as_deb822_gives_them(text: str) -> None:
    assert tuple(deb._stanza_type()(text).found.values()) == reference_fields(text)


def test_control_fields_at_random() -> None:
    rng = random.Random(2)
    pieces = ["Package: a", "package: b", "Version: 1.0", "Architecture: all", "X-Y:z",
              " cont", "\tcont2", " .", "", "   ", "# c", "bad line", ": empty", "A:", "a:  b  ",
              "-----BEGIN PGP SIGNED MESSAGE-----", "Description: d\u00e9j\u00e0", "K:v\x0bw"]
    ends = ["\n", "\r\n", "\r", "\x85"]
    for _ in range(800):
        text = "".join(rng.choice(pieces) + rng.choice(ends) for _ in range(rng.randrange(9)))
        assert tuple(deb._stanza_type()(text).found.values()) == reference_fields(text), text


# -- zip: wheels -----------------------------------------------------------------------------------

METADATA = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nSummary: s\n\nbody\n"


def wheel_bytes(*, compression: int = zipfile.ZIP_DEFLATED, comment: bytes = b"",
                metadata: bytes = METADATA, extra_files: int = 3, zip64: bool = False,
                names: tuple[str, ...] = ("demo-1.0.dist-info/METADATA",),
                stream: bool = False) -> bytes:
    buf = io.BytesIO()
    target: Any = buf
    if stream:  # not seekable: zipfile writes data descriptors
        class Unseekable(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b: Any) -> int:
                return buf.write(b)

        target = Unseekable()
    with warnings.catch_warnings(), zipfile.ZipFile(target, "w", compression=compression) as zf:
        warnings.simplefilter("ignore")  # a duplicate name, on purpose
        for i in range(extra_files):
            zf.writestr(f"demo/m{i}.py", f"x = {i}\n" * 50)
        for name in names:
            with zf.open(name, "w", force_zip64=zip64) as fh:
                fh.write(metadata)
        zf.writestr("demo-1.0.dist-info/RECORD", "demo/m0.py,,\n")
        zf.comment = comment
    return buf.getvalue()


def tail_of(data: bytes, chunk: int = 1 << 20) -> pydist._TailFile:
    inspector = pydist.TailInspector()
    for at in range(0, len(data), chunk):
        inspector.feed(data[at : at + chunk])
    return inspector.tail_file()


@contextmanager
def zipfile_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as m:
        m.setattr(pydist._PlainZip, "of", classmethod(lambda cls, fileobj, suffix: None))
        yield


def both_ways(data: bytes, monkeypatch: pytest.MonkeyPatch, *, chunk: int = 1 << 20,
              filename: str = "demo-1.0-py3-none-any.whl") -> tuple[Outcome, Outcome]:
    def call() -> tuple[Any, ...]:
        info = pydist.wheel_info(filename, tail_of(data, chunk))
        return (info.name, info.version, info.requires_python, info.summary, info.metadata)

    got = outcome(call)
    with zipfile_only(monkeypatch):
        want = outcome(call)
    return got, want


def zip_cases() -> Iterator[tuple[str, bytes]]:
    yield "deflated", wheel_bytes()
    yield "stored", wheel_bytes(compression=zipfile.ZIP_STORED)
    yield "bzip2", wheel_bytes(compression=zipfile.ZIP_BZIP2)
    yield "lzma", wheel_bytes(compression=zipfile.ZIP_LZMA)
    yield "comment", wheel_bytes(comment=b"a comment")
    yield "zip64", wheel_bytes(zip64=True)
    yield "data-descriptors", wheel_bytes(stream=True)
    yield "prepended", b"#!/bin/sh\nexec something\n" + wheel_bytes()
    yield "no-metadata", wheel_bytes(names=("demo-1.0.dist-info/WHEEL",))
    yield "two-metadata", wheel_bytes(names=("a-1.0.dist-info/METADATA",
                                             "b-1.0.dist-info/METADATA"))
    yield "same-name-twice", wheel_bytes(names=("demo-1.0.dist-info/METADATA",) * 2)
    yield "nested-metadata", wheel_bytes(names=("x/demo-1.0.dist-info/METADATA",))
    yield "utf8-name", wheel_bytes(names=("d\u00e9mo-1.0.dist-info/METADATA",))
    yield "empty-metadata", wheel_bytes(metadata=b"")
    yield "not-a-zip", b"PK\x03\x04" + bytes(range(256)) * 4
    yield "tiny", b"PK\x05\x06" + bytes(18)
    data = wheel_bytes()
    cd = data.rindex(b"PK\x01\x02")  # the last central entry: RECORD
    meta_cd = data.rindex(b"PK\x01\x02", 0, cd)
    meta_local = struct.unpack_from("<L", data, meta_cd + 42)[0]
    yield "bad-crc", data[: meta_cd + 16] + b"\0\0\0\0" + data[meta_cd + 20 :]
    yield "cp437-name", data[: meta_cd + 8] + b"\0\0" + data[meta_cd + 10 :]
    yield "encrypted-flag", data[: meta_cd + 8] + b"\x01\0" + data[meta_cd + 10 :]
    yield "version-too-new", data[: meta_cd + 6] + b"\x64" + data[meta_cd + 7 :]
    yield "local-name-differs", data[: meta_local + 30] + b"X" + data[meta_local + 31 :]
    yield "local-sig", data[:meta_local] + b"PK\x03\x05" + data[meta_local + 4 :]
    yield "metadata-cut", data[: meta_local + 40] + data[meta_local + 60 :]
    utf8 = wheel_bytes(names=("d\u00e9mo-1.0.dist-info/METADATA",))
    utf8_local = struct.unpack_from("<L", utf8, utf8.rindex(b"PK\x01\x02", 0, utf8.rindex(
        b"PK\x01\x02")) + 42)[0]
    yield "local-flag-differs", utf8[: utf8_local + 7] + b"\0" + utf8[utf8_local + 8 :]
    for label, extra in (("timestamp-extra", struct.pack("<HHB", 0x5455, 1, 0)),
                         ("zip64-extra", struct.pack("<HH", 1, 0)),
                         ("corrupt-extra", struct.pack("<HH", 0x5455, 10) + b"\0")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo("demo-1.0.dist-info/METADATA")
            info.extra = extra
            zf.writestr(info, METADATA)
        yield label, buf.getvalue()
    nul = data.replace(b"demo-1.0.dist-info/METADATA", b"demo-1.0.dist-info/METADATA\0")
    yield "nul-in-name", nul
    with_extra = bytearray(data)
    struct.pack_into("<H", with_extra, meta_cd + 30, 2)  # an extra field too short to parse
    yield "short-extra", bytes(with_extra)


@pytest.mark.parametrize("data", [d for _, d in zip_cases()], ids=[c for c, _ in zip_cases()])
def test_wheel_as_zipfile_reads_it(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    got, want = both_ways(data, monkeypatch)
    assert got == want


def test_wheel_common_case_is_read_directly() -> None:
    tail = tail_of(wheel_bytes())
    plain = pydist._PlainZip.of(tail, pydist._WHEEL_METADATA)
    assert plain is not None and plain.names == ["demo-1.0.dist-info/METADATA"]
    assert plain.read(plain.hits[0]) == METADATA


def test_wheel_across_chunks_and_beyond_the_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    data = wheel_bytes(extra_files=400)
    for chunk in (7, 512, 4096, 65536):
        got, want = both_ways(data, monkeypatch, chunk=chunk)
        assert got == want and got[0] == "ok"
    # METADATA before the kept tail: both ask for the whole file
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w") as zf:
        zf.writestr("demo-1.0.dist-info/METADATA", METADATA)
        zf.writestr("demo/big.bin", random.Random(3).randbytes(pydist.TAIL_BYTES + 1000))
    got, want = both_ways(big.getvalue(), monkeypatch, chunk=1 << 20)
    assert got == want == ("error", "NeedsFullFile", "")


def test_wheel_damaged_at_random(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(4)
    base = wheel_bytes(extra_files=2)
    meta_cd = base.rindex(b"PK\x01\x02", 0, base.rindex(b"PK\x01\x02"))
    meta_local = struct.unpack_from("<L", base, meta_cd + 42)[0]
    spots = [range(len(base) - 22, len(base)), range(meta_cd, meta_cd + 80),
             range(meta_local, meta_local + 60), range(len(base) - 200, len(base))]
    for _ in range(500):
        data = bytearray(base)
        for _ in range(rng.choice((1, 1, 2))):
            data[rng.choice(rng.choice(spots))] = rng.choice((0, 1, 0xFF, rng.randrange(256)))
        if rng.random() < 0.1:
            del data[rng.randrange(len(data)) :]
        got, want = both_ways(bytes(data), monkeypatch)
        assert got == want


def test_zip_sdist_as_zipfile_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def sdist(*names: str) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("demo-1.0/setup.py", "")
            for name in names:
                zf.writestr(name, METADATA)
        return buf.getvalue()

    for data in (sdist("demo-1.0/PKG-INFO"), sdist(), sdist("a/PKG-INFO", "b/PKG-INFO"),
                 sdist("demo-1.0/x/PKG-INFO"), b"PK\x03\x04 not a zip"):
        def call(data: bytes = data) -> Any:
            return pydist.zip_sdist_info(tail_of(data))

        got = outcome(call)
        with zipfile_only(monkeypatch):
            assert got == outcome(call)


# -- METADATA / PKG-INFO headers -------------------------------------------------------------------


def metadata_both_ways(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Outcome, Outcome]:
    got = outcome(lambda: pydist.parse_metadata(raw, "METADATA"))
    with monkeypatch.context() as m:
        m.setattr(pydist, "_plain_headers", lambda raw: None)
        want = outcome(lambda: pydist.parse_metadata(raw, "METADATA"))
    return got, want


METADATA_CASES = [
    METADATA,
    b"Name: a\nVersion: 1\nname: b\nVERSION: 2\nSummary:   spaced  \n",
    b"Name: a\nVersion: 1\nSummary: first\n  second\n\tthird\n \nLicense: x\n",
    b"Name: a\nVersion: 1\nSummary:\n  only continued\n",
    b"Name: a\r\nVersion: 1\r\nSummary: crlf\r\n",
    b"Name: a\nVersion: 1\rSummary: cr\n",
    b"From someone\nName: a\nVersion: 1\n",
    b"Name: a\nFrom nobody\nVersion: 1\n",
    b" leading continuation\nName: a\nVersion: 1\n",
    b"Name: a\n: no name\nVersion: 1\n",
    b"Name: a\nVersion: 1\nSummary: caf\xc3\xa9\n",
    b"Name: a\nVersion: 1\nAuthor: J\xc3\xb6rg\n\nbody \xff\n",
    b"Name: a\nVersion: 1\nRequires-Python: >=3.8\nrequires-python: junk\n",
    b"Name: a\nVersion: 1\nRequires-Python: not a specifier\n",
    b"Name: a\nVersion: not.a.version!\n",
    b"Name: a\nbroken line\nVersion: 1\n",
    b"Name: a\nVersion: 1",
    b"Name : a\nVersion: 1\n",
    b"Name:a\nVersion:\t1\n",
    b"",
    b"\n\nName: a\n",
]


@pytest.mark.parametrize("raw", METADATA_CASES)
def test_metadata_as_email_parser_reads_it(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    got, want = metadata_both_ways(raw, monkeypatch)
    assert got == want


def test_metadata_at_random(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    pieces = [b"Name: demo", b"name:x", b"Version: 1.0", b"VERSION:2", b"Summary: s",
              b"Summary:", b"Requires-Python: >=3.8", b" cont", b"\tcont", b" ", b"", b"From x",
              b":x", b"bad", b"X-A: \xc3\xa9", b"Summary: \xff", b"K:v\x0bw", b"From: y"]
    ends = [b"\n", b"\n", b"\r\n", b"\r", b""]
    for _ in range(1500):
        raw = b"".join(rng.choice(pieces) + rng.choice(ends) for _ in range(rng.randrange(8)))
        got, want = metadata_both_ways(raw, monkeypatch)
        assert got == want, raw


# -- .tar.gz sdists --------------------------------------------------------------------------------


def sdist_tgz(entries: list[tuple[str, bytes | None]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    return gzip.compress(tar_of(entries, fmt), mtime=0)


def scan(data: bytes, chunk: int) -> bytes | None:
    inspector = pydist.TarGzSdistInspector()
    for at in range(0, len(data), chunk):
        inspector.feed(data[at : at + chunk])
    info = inspector.finish()
    return None if info is None else info.metadata


PAYLOAD = random.Random(6).randbytes(300_000)


@pytest.mark.parametrize("entries,fmt,found", [
    ([("demo-1.0/", None), ("demo-1.0/PKG-INFO", METADATA), ("demo-1.0/big", PAYLOAD)],
     tarfile.GNU_FORMAT, True),
    ([("demo-1.0/big", PAYLOAD), ("demo-1.0/src/x.py", b"x"), ("demo-1.0/PKG-INFO", METADATA)],
     tarfile.GNU_FORMAT, True),
    ([("./demo-1.0/PKG-INFO", METADATA)], tarfile.USTAR_FORMAT, True),
    ([("demo-1.0/" + "d" * 120 + "/f", b"x"), ("demo-1.0/PKG-INFO", METADATA)],
     tarfile.GNU_FORMAT, True),
    ([("d\u00e9mo-1.0/x", b"x"), ("d\u00e9mo-1.0/PKG-INFO", METADATA)], tarfile.PAX_FORMAT, True),
    ([("demo-1.0/sub/PKG-INFO", METADATA), ("PKG-INFO", METADATA)], tarfile.GNU_FORMAT, False),
])
def test_sdist_scan_finds_pkg_info_whatever_the_chunks(
        entries: list[tuple[str, bytes | None]], fmt: int, found: bool) -> None:
    data = sdist_tgz(entries, fmt)
    results = {scan(data, chunk) for chunk in (1, 100, 512, 4096, 1 << 20)}
    assert results == {METADATA if found else None}


def test_sdist_scan_inflates_only_up_to_pkg_info() -> None:
    data = sdist_tgz([("demo-1.0/", None), ("demo-1.0/PKG-INFO", METADATA),
                      ("demo-1.0/big", PAYLOAD)])
    damaged = data[: len(data) // 2] + bytes(1000) + data[len(data) // 2 + 1000 :]
    assert scan(damaged, 1 << 20) == METADATA  # the damage lies past PKG-INFO, never inflated
    early = sdist_tgz([("demo-1.0/big", PAYLOAD), ("demo-1.0/PKG-INFO", METADATA)])
    early = early[:2000] + bytes(1000) + early[3000:]
    assert scan(early, 1 << 20) is None  # before it: not an sdist


def test_sdist_scan_unreadable_header_is_not_an_sdist() -> None:
    tar = tar_of([("demo-1.0/x", b"x"), ("demo-1.0/PKG-INFO", METADATA)])
    bad = set_field(tar, 0, 124, b"\x80" + bytes(11))
    assert scan(gzip.compress(bad), 1 << 20) is None


def test_tar_header_fields() -> None:
    block = tar_of([("demo-1.0/PKG-INFO", METADATA)], tarfile.USTAR_FORMAT)[:512]
    header = pydist.tar_header(block)
    assert header == pydist.TarHeader(b"demo-1.0/PKG-INFO", b"", True, b"0", len(METADATA))
    with pytest.raises(DistError):
        pydist.parse_metadata(b"Version: 1\n", "PKG-INFO")
