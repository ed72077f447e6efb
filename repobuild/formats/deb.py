"""Debian binary packages: an ``ar`` archive read as a stream, control data via python-debian.

The inspector is fed the file's bytes once, in order (the same chunks that are hashed and
copied), keeps only the small control member and checks that every member is complete.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import zlib
from dataclasses import dataclass
from functools import cache

from debian.debian_support import Version

from repobuild.formats.pydist import tar_header

_AR_MAGIC = b"!<arch>\n"
_HEADER = 60
_MAX_CONTROL = 64 << 20
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class DebError(ValueError):
    """The bytes are not a valid Debian binary package."""


# not frozen (nothing changes it once parsed): a frozen dataclass is made at a third of the
# speed, and a build makes one for each of 100,000 cached artifacts
@dataclass(slots=True)
class DebInfo:
    package: str
    version: str
    architecture: str
    #: the control stanza as Packages carries it: the package's own fields in their original
    #: order, without the ones the repository sets (Filename, Size, hashes); one string, so
    #: that 100,000 packages stay small in memory and in the build cache
    control: str


class DebInspector:
    """Incremental ``ar`` parser: ``feed`` chunks in order, then ``finish``."""

    def __init__(self) -> None:
        self._buf = bytearray()  # only a partial magic or member header waits here
        self._state = "magic"
        self._remaining = 0
        self._pad = 0
        self._name = ""
        self._members: list[str] = []
        self._control: bytearray | None = None
        self._control_name = ""
        self._offset = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        """Member bodies are skipped by counting, never copied (except the control member):
        buffering a 1 MiB chunk to drop it again cost as much as hashing it."""
        view = memoryview(chunk)
        pos, end = 0, len(view)
        while pos < end:
            state = self._state
            if state == "body":
                n = min(end - pos, self._remaining)
                if self._control is not None and self._name == self._control_name:
                    self._control += view[pos : pos + n]
                pos += n
                self._offset += n
                self._remaining -= n
                if self._remaining == 0:
                    self._state = "pad" if self._pad else "header"
            elif state == "pad":
                pos += 1
                self._offset += 1
                self._state = "header"
            else:
                want = len(_AR_MAGIC) if state == "magic" else _HEADER
                if not self._buf and end - pos >= want:  # whole in this chunk: no buffering
                    head = bytes(view[pos : pos + want])
                    pos += want
                else:
                    take = min(want - len(self._buf), end - pos)
                    self._buf += view[pos : pos + take]
                    pos += take
                    if len(self._buf) < want:
                        return
                    head, self._buf = bytes(self._buf), bytearray()
                if state == "magic":
                    if head != _AR_MAGIC:
                        raise DebError("not a Debian package (no ar archive header)")
                    self._state = "header"
                else:
                    self._start_member(head)
                self._offset += want

    def _start_member(self, header: bytes) -> None:
        if header[58:60] != b"`\n":
            raise DebError(f"corrupt ar member header at byte {self._offset}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DebError(f"corrupt ar member size at byte {self._offset}") from None
        if not self._members and name != "debian-binary":
            raise DebError("first member is not debian-binary")
        self._members.append(name)
        self._name, self._remaining, self._pad = name, size, size % 2
        if name.startswith("control.tar"):
            if size > _MAX_CONTROL:
                raise DebError(f"control member is implausibly large ({size} bytes)")
            self._control, self._control_name = bytearray(), name
        self._state = "body" if size else ("pad" if self._pad else "header")

    def finish(self) -> DebInfo:
        if self._state == "magic":
            raise DebError("not a Debian package (file too short)")
        if self._state != "header" or self._buf:
            raise DebError(
                f"truncated: member {self._name!r} is cut short at byte {self._offset}"
            )
        if self._control is None:
            raise DebError("no control.tar member (not a binary package)")
        if not any(m.startswith("data.tar") for m in self._members):
            raise DebError("no data.tar member")
        return parse_control(read_control_tar(self._control_name, bytes(self._control)))


def read_control_tar(member: str, data: bytes) -> bytes:
    """Return the ``control`` file from a control.tar{,.gz,.xz,.zst} member."""
    try:
        if member.endswith(".gz"):
            data = _gunzip(data)
        elif member.endswith(".xz"):
            data = lzma.decompress(data)
        elif member.endswith(".zst"):
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        elif member != "control.tar":
            raise DebError(f"unsupported control compression {member!r}")
        control = _plain_tar_control(data)
        if control is None:
            control = _tarfile_control(data)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, _TarError) as exc:
        raise DebError(f"unreadable {member}: {exc}") from None
    except Exception as exc:  # zstandard raises its own error type
        if type(exc).__module__.startswith("zstandard"):
            raise DebError(f"unreadable {member}: {exc}") from None
        raise
    if control is None:
        raise DebError(f"{member} holds no control file")
    return control


def _gunzip(data: bytes) -> bytes:
    """``gzip.decompress(data)``: in one zlib call when ``data`` is one gzip stream (and NUL
    padding), as control.tar.gz always is; through the gzip module otherwise, for its
    reading of anything else (several members, errors)."""
    inflate = zlib.decompressobj(wbits=31)  # checks the CRC-32 and the length too
    try:
        out = inflate.decompress(data)
    except zlib.error:
        return gzip.decompress(data)
    if inflate.eof and not inflate.unused_data.lstrip(b"\0"):
        return out
    return gzip.decompress(data)


# The numeric fields of a tar header (mode, uid, gid, size, mtime, checksum, devmajor,
# devminor), and the form in which tarfile's nti() and pydist.tar_header read them alike:
# octal digits, blank-padded, then NUL and anything.
_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156),
                  (329, 337), (337, 345))
_PLAIN_NUMBER = re.compile(rb" *[0-7]* *(?:\0.*)?", re.DOTALL)


def _plain_tar_control(data: bytes) -> bytes | None:
    """The ``control`` file, found by walking the tar headers (:func:`tar_header`) as tarfile
    walks them; None where this walk might differ from tarfile's, which then reads the archive
    (its errors, pax and GNU long names, links, devices, a missing control file, ...)."""
    pos, end = 0, len(data)
    while pos + 512 <= end:
        block = data[pos : pos + 512]
        if not _plain_header(block):
            return None
        header = tar_header(block)
        size, kind = header.size, header.kind
        if size is None or header.prefix:
            return None
        if kind == b"\0" and header.name.endswith(b"/"):
            kind = b"5"  # tarfile: an old-style directory
        body = pos + 512
        if kind in (b"0", b"\0"):
            if header.name in (b"./control", b"control"):
                return data[body : body + size] if body + size <= end else None
            pos = body + (size + 511) // 512 * 512
        elif kind == b"5":
            pos = body  # tarfile skips no data after a directory, whatever its size says
        else:
            return None
    return None


def _plain_header(block: bytes) -> bool:
    """tarfile takes the header as it is: its numbers plain octal and its checksum right."""
    for start, stop in _NUMBER_FIELDS:
        if not _PLAIN_NUMBER.fullmatch(block, start, stop):
            return False
    checksum = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    return checksum == 256 + sum(block[:148]) + sum(block[156:])


def _tarfile_control(data: bytes) -> bytes | None:
    """The ``control`` file as tarfile finds it (the reading :func:`_plain_tar_control` keeps
    to), or None. tarfile is imported here: the plain walk reads nearly every package."""
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for entry in tar:
                if entry.name in ("./control", "control") and entry.isfile():
                    handle = tar.extractfile(entry)
                    assert handle is not None
                    return handle.read()
    except tarfile.TarError as exc:
        raise _TarError(str(exc)) from exc
    return None


class _TarError(Exception):
    """tarfile's own error, raised where tarfile is imported."""


@cache
def _stanza_type() -> type:
    """Deb822 parsing the control paragraph, its fields kept as a plain dict as the parser sets
    them: Deb822's own case-insensitive mapping costs more to fill and to read back than the
    parse itself. As Deb822: a field named twice (in any case) keeps its first spelling and
    place and its last value. Made when a control file is first read: python-debian's parser
    and what it imports take ~12 ms to import, which a build that reads no .deb (a rebuild)
    never needs."""
    from debian.deb822 import Deb822

    class Stanza(Deb822):
        def __init__(self, text: str) -> None:
            self.found: dict[str, tuple[str, str]] = {}
            super().__init__(text)

        def __setitem__(self, key: str, value: str) -> None:
            self.validate_input(key, value)
            lower = key.lower()
            known = self.found.get(lower)
            self.found[lower] = (known[0] if known else key, value)

    return Stanza


def parse_control(raw: bytes) -> DebInfo:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DebError("control file is not UTF-8") from None
    fields = tuple(_stanza_type()(text).found.values())
    values = dict(fields)
    for required in ("Package", "Version", "Architecture"):
        if not values.get(required, "").strip():
            raise DebError(f"control file lacks {required}")
    package = values["Package"].strip()
    version = values["Version"].strip()
    arch = values["Architecture"].strip()
    if not _PACKAGE_RE.match(package):
        raise DebError(f"invalid package name {package!r}")
    if not _ARCH_RE.match(arch):
        raise DebError(f"invalid architecture {arch!r}")
    try:
        Version(version)
    except ValueError:
        raise DebError(f"invalid version {version!r}") from None
    if any(c.isspace() for c in version):
        raise DebError(f"invalid version {version!r}")
    return DebInfo(package=package, version=version, architecture=arch,
                   control=render_control(fields))


# Fields the repository sets itself; a .deb's own control data never supplies them.
REPO_FIELDS = frozenset({"filename", "size", "md5sum", "sha1", "sha256", "sha512",
                         "description-md5"})


def _field_lines(name: str, value: str) -> str:
    if "\n" not in value:
        return f"{name}: {value.strip()}".rstrip()
    lines = value.split("\n")
    first = lines[0].strip()
    rest = [ln if ln.startswith((" ", "\t")) else f" {ln}" for ln in lines[1:] if ln.strip()]
    return "\n".join([f"{name}: {first}".rstrip(), *rest])


def render_control(fields: tuple[tuple[str, str], ...]) -> str:
    """The stanza lines of a package's own fields, for Packages."""
    return "\n".join(_field_lines(k, v) for k, v in fields if k.lower() not in REPO_FIELDS)
