"""index.json: the canonical, signed manifest of a whole output tree."""

from __future__ import annotations

import io
import json
import marshal
import re
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from operator import attrgetter
from typing import Any

from repobuild.model import Artifact, FileEntry

MANIFEST_TYPE = "repobuild-index"
SPEC_VERSION = 1


class ManifestError(ValueError):
    """index.json is malformed."""


# one encoder for every call: json.dumps with options builds a new one each time (~2 µs)
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical(obj: object) -> bytes:
    """Sorted keys, UTF-8, no insignificant white space: the bytes that are signed."""
    return _encode(obj).encode()


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ManifestError(f"not an RFC 3339 time: {text!r}") from None
    if when.tzinfo is None:
        raise ManifestError(f"time without a zone: {text!r}")
    return when.astimezone(UTC)


def artifact_entry(art: Artifact) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": art.path,
        "blob": art.blob,
        "kind": art.kind,
        "size": art.size,
        "sha256": art.sha256,
        "uploaded": art.uploaded,
    }
    if art.sha512:
        entry["sha512"] = art.sha512
    if art.name is not None:
        entry["name"] = art.name
        entry["version"] = art.version
    if art.deb is not None:
        entry["architecture"] = art.deb.architecture
        entry["component"] = art.component
    if art.dist is not None and art.dist.requires_python:
        entry["requires_python"] = art.dist.requires_python
    if art.metadata_sha256:
        entry["metadata"] = {"path": art.blob + ".metadata", "sha256": art.metadata_sha256}
    if art.yanked is not None:
        entry["yanked"] = art.yanked
    return entry


def file_entry(entry: FileEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"size": entry.size, "sha256": entry.sha256}
    if entry.retired:
        out["retired"] = entry.retired
    return out


@dataclass
class Manifest:
    version: int
    generated: datetime
    expires: datetime
    artifacts: list[dict[str, Any]]
    files: dict[str, FileEntry]
    meta: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def by_blob(self) -> dict[str, dict[str, Any]]:
        """Artifact entries by blob path (computed once)."""
        return {a["blob"]: a for a in self.artifacts}

    def listed(self) -> dict[str, tuple[int, str]]:
        """Every path the manifest lists (blobs and files) with its size and SHA-256."""
        out = {a["blob"]: (int(a["size"]), str(a["sha256"])) for a in self.artifacts}
        out.update({p: (f.size, f.sha256) for p, f in self.files.items()})
        return out


def render(
    *,
    version: int,
    generated: datetime,
    expires: datetime,
    artifacts: list[Artifact],
    files: dict[str, FileEntry],
    meta: dict[str, Any],
) -> bytes:
    """The canonical document (see :func:`render_to`) as bytes."""
    out = io.BytesIO()
    render_to(out.write, version=version, generated=generated, expires=expires,
              artifacts=artifacts, files=files, meta=meta)
    return out.getvalue()


def render_to(
    write: Callable[[bytes], object],
    *,
    version: int,
    generated: datetime,
    expires: datetime,
    artifacts: list[Artifact],
    files: dict[str, FileEntry],
    meta: dict[str, Any],
) -> None:
    """The canonical document, written entry by entry: the same bytes as ``canonical`` of the
    whole, without ever holding the whole, as Python objects or as bytes (100,000 artifacts
    make ~70 MB of it)."""
    writer = IndexWriter(write, version=version, generated=generated, expires=expires, meta=meta)
    writer.artifacts(artifacts)
    writer.files(files)


class IndexWriter:
    """:func:`render_to` in two steps, in the order of the document's sorted keys: first the
    artifacts and what comes before "files", then the files and the rest. A build writes the
    first part while the files are still to come (the project pages, the in-toto link)."""

    def __init__(self, write: Callable[[bytes], object], *, version: int, generated: datetime,
                 expires: datetime, meta: dict[str, Any]) -> None:
        self._write = write
        self._top: dict[str, Any] = {
            "type": MANIFEST_TYPE,
            "spec_version": SPEC_VERSION,
            "version": version,
            "generated": rfc3339(generated),
            "expires": rfc3339(expires),
            **meta,
        }
        if self._top.keys() & {"artifacts", "files"}:
            raise ValueError("meta must not name artifacts or files")
        self._keys = sorted(self._top.keys() | {"artifacts", "files"})
        self._split = self._keys.index("files")
        self._buf = bytearray(b"{")
        self._step = 0

    def _flush(self, always: bool = False) -> None:
        if always or len(self._buf) >= 1 << 16:
            self._write(bytes(self._buf))
            self._buf.clear()

    def artifacts(self, artifacts: list[Artifact]) -> None:
        """Everything before "files": the artifacts (sorted by path) and the header keys."""
        if self._step != 0:
            raise RuntimeError("artifacts are written first, once")
        self._step = 1
        self._keys_from(0, self._split, artifacts, None)

    def files(self, files: dict[str, FileEntry]) -> None:
        """"files" (sorted by path) and everything after it; the document is then complete."""
        if self._step != 1:
            raise RuntimeError("files are written after the artifacts, once")
        self._step = 2
        self._keys_from(self._split, len(self._keys), None, files)
        self._buf += b"}"
        self._flush(always=True)

    def _keys_from(self, first: int, stop: int, artifacts: list[Artifact] | None,
                   files: dict[str, FileEntry] | None) -> None:
        buf = self._buf
        for n in range(first, stop):
            key = self._keys[n]
            if n:
                buf += b","
            buf += canonical(key)
            if key == "artifacts":
                assert artifacts is not None
                buf += b":["
                ordered = sorted(artifacts, key=_by_path)
                for start in range(0, len(ordered), _CHUNK):
                    if start:
                        buf += b","
                    buf += _artifact_items(ordered[start:start + _CHUNK]).encode()
                    self._flush()
                del ordered
                buf += b"]"
            elif key == "files":
                assert files is not None
                buf += b":{"
                paths = sorted(files)
                for start in range(0, len(paths), _CHUNK):
                    if start:
                        buf += b","
                    buf += _file_items(paths[start:start + _CHUNK], files)
                    self._flush()
                del paths
                buf += b"}"
            else:
                buf += b":"
                buf += canonical(self._top[key])


_CHUNK = 2048  # entries written, then checked, at once
_CONTROLS = bytes(range(32)) + b"\x7f"


def printable(text: str) -> bool:
    """``text.isprintable()``: for ASCII text (whether a string is ASCII is known without
    reading it) its control characters are looked for in its bytes, at a third of the cost
    (~2.5 ms, not ~8 ms, for index.json's entries of 10,000 artifacts)."""
    if not text.isascii():
        return text.isprintable()
    data = text.encode("ascii")
    return len(data.translate(None, _CONTROLS)) == len(data)


def _artifact_items(arts: list[Artifact]) -> str:
    """The entries of these artifacts, comma-separated, as :func:`_artifact_item` writes each:
    written as they are and checked all at once (their quotes counted, backslashes and
    characters to escape looked for, in the joined text); if the check fails, entry by entry."""
    raws: list[str] = []
    quotes = 0
    for art in arts:
        raw, count = _artifact_raw(art)
        raws.append(raw)
        quotes += count
    text = ",".join(raws)
    if text.count('"') == quotes and "\\" not in text and printable(text):
        return text
    return ",".join([_artifact_item(art) for art in arts])


_retired_of = attrgetter("retired")


def _file_items(paths: list[str], files: dict[str, FileEntry]) -> bytes:
    """The entries of these files (``"path":{...}``), comma-separated, checked at once as
    :func:`_artifact_items` checks its own; a retired file's entry goes through the encoder."""
    entries = [files[path] for path in paths]
    if not any(map(_retired_of, entries)):  # no Python call per entry
        text = ",".join([f'"{path}":{{"sha256":"{entry.sha256}","size":{int(entry.size)}}}'
                         for path, entry in zip(paths, entries, strict=True)])
        if text.count('"') == 8 * len(paths) and "\\" not in text and printable(text):
            return text.encode()
    return b",".join([_file_item(path, entry) for path, entry in zip(paths, entries, strict=True)])


def _artifact_item(art: Artifact) -> str:
    """``canonical(artifact_entry(art))``, written directly: the dict and the encoder cost 5 ×
    as much, and index.json is written at every build. The strings are put in as they are; if
    one needed escaping (a quote, a backslash, a control character: then the entry holds more
    quotes than its keys and values make, or one of the others), the entry is encoded instead.
    """
    raw, quotes = _artifact_raw(art)
    if raw.count('"') == quotes and "\\" not in raw and raw.isprintable():
        return raw
    return canonical(artifact_entry(art)).decode()


def _artifact_raw(art: Artifact) -> tuple[str, int]:
    """An artifact's entry with its strings put in as they are, and the number of quotes it
    holds when none of them holds one. The usual shapes (a .deb; a wheel with its .metadata)
    are written by one f-string each, at half the cost of the general case."""
    deb, dist, blob = art.deb, art.dist, art.blob
    if not art.sha512 and art.yanked is None:
        if deb is not None and dist is None and not art.metadata_sha256:
            return (f'{{"architecture":"{deb.architecture}","blob":"{blob}","component":'
                    f'"{art.component}","kind":"{art.kind}","name":"{deb.package}","path":'
                    f'"{art.path}","sha256":"{art.sha256}","size":{int(art.size)},"uploaded":'
                    f'"{art.uploaded}","version":"{deb.version}"}}', 38)
        if dist is not None and deb is None and art.metadata_sha256:
            requires = dist.requires_python
            if requires:
                return (f'{{"blob":"{blob}","kind":"{art.kind}","metadata":{{"path":"{blob}'
                        f'.metadata","sha256":"{art.metadata_sha256}"}},"name":"{dist.name}",'
                        f'"path":"{art.path}","requires_python":"{requires}","sha256":'
                        f'"{art.sha256}","size":{int(art.size)},"uploaded":"{art.uploaded}",'
                        f'"version":"{dist.version}"}}', 44)
            return (f'{{"blob":"{blob}","kind":"{art.kind}","metadata":{{"path":"{blob}'
                    f'.metadata","sha256":"{art.metadata_sha256}"}},"name":"{dist.name}",'
                    f'"path":"{art.path}","sha256":"{art.sha256}","size":{int(art.size)},'
                    f'"uploaded":"{art.uploaded}","version":"{dist.version}"}}', 40)
    return _artifact_raw_any(art)


def _artifact_raw_any(art: Artifact) -> tuple[str, int]:
    """:func:`_artifact_raw` for any artifact."""
    deb, dist, blob = art.deb, art.dist, art.blob
    name = deb.package if deb is not None else dist.name if dist is not None else None
    quotes = 22  # blob, kind, path, sha256, uploaded: 4 each; size: 2
    if deb is not None:
        quotes += 8
    if name is not None:
        quotes += 8
    requires = dist.requires_python if dist is not None else None
    for value in (art.metadata_sha256, art.sha512, requires):
        if value:
            quotes += 4
    if art.metadata_sha256:
        quotes += 6
    if art.yanked is not None:
        quotes += 4
    raw = "".join((
        f'{{"architecture":"{deb.architecture}",' if deb is not None else "{",
        f'"blob":"{blob}",',
        f'"component":"{art.component}",' if deb is not None else "",
        f'"kind":"{art.kind}",',
        f'"metadata":{{"path":"{blob}.metadata","sha256":"{art.metadata_sha256}"}},'
        if art.metadata_sha256 else "",
        f'"name":"{name}",' if name is not None else "",
        f'"path":"{art.path}",',
        f'"requires_python":"{requires}",' if requires else "",
        f'"sha256":"{art.sha256}",',
        f'"sha512":"{art.sha512}",' if art.sha512 else "",
        f'"size":{int(art.size)},"uploaded":"{art.uploaded}"',
        f',"version":"{art.version}"' if name is not None else "",
        f',"yanked":"{art.yanked}"}}' if art.yanked is not None else "}",
    ))
    return raw, quotes


def _file_item(path: str, entry: FileEntry) -> bytes:
    """``"path":{...}`` of one file, as ``canonical`` writes it (keys in sorted order)."""
    if entry.retired:
        return canonical({path: file_entry(entry)})[1:-1]
    raw = f'"{path}":{{"sha256":"{entry.sha256}","size":{int(entry.size)}}}'
    if raw.count('"') == 8 and "\\" not in raw and raw.isprintable():
        return raw.encode()
    return canonical({path: file_entry(entry)})[1:-1]


def _by_path(art: Artifact) -> str:
    return art.path


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{what} is not a non-negative integer")
    return value


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _hex(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ManifestError(f"{what} is not a SHA-256 hex digest")
    return value


def _safe_path(path: object) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise ManifestError(f"unsafe path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0].startswith("."):
        raise ManifestError(f"unsafe path {path!r}")
    return path


def _load(data: bytes) -> tuple[dict[str, Any], int, list[Any], dict[str, Any]]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != MANIFEST_TYPE:
        raise ManifestError("not a repobuild index")
    version = _int(doc.get("version"), "version")
    arts = doc.get("artifacts")
    files = doc.get("files")
    if not isinstance(arts, list) or not isinstance(files, dict):
        raise ManifestError("artifacts must be a list and files an object")
    for a in arts:
        if not isinstance(a, dict):
            raise ManifestError("an artifact entry is not an object")
        _safe_path(a.get("blob"))
        _int(a.get("size"), f"size of {a.get('blob')}")
        _hex(a.get("sha256"), f"sha256 of {a.get('blob')}")
    return doc, version, arts, files


def _file_entry(path: str, f: object) -> FileEntry:
    _safe_path(path)
    if not isinstance(f, dict):
        raise ManifestError(f"entry of {path} is not an object")
    retired = f.get("retired")
    return FileEntry(
        size=_int(f.get("size"), f"size of {path}"),
        sha256=_hex(f.get("sha256"), f"sha256 of {path}"),
        retired=retired if isinstance(retired, str) else None,
    )


def parse(data: bytes) -> Manifest:
    doc, version, arts, files = _load(data)
    generated = parse_time(doc.get("generated"))  # type: ignore[arg-type]
    expires = parse_time(doc.get("expires"))  # type: ignore[arg-type]
    parsed = {path: _file_entry(path, f) for path, f in files.items()}
    meta = {k: v for k, v in doc.items() if k not in ("artifacts", "files")}
    return Manifest(version, generated, expires, arts, parsed, meta)


@dataclass
class Previous:
    """What a build needs of the index it replaces, without the index's 100,000 dicts."""

    version: int
    uploaded: dict[str, str]  # SHA-256 -> when that content first entered the repository
    #: every blob, .metadata and by-hash file it listed (the candidates to keep as retired),
    #: as (size, sha256, retired): a build drops nearly all of them (they are still current),
    #: so no FileEntry is made for each (~4 ms at 10,000 artifacts)
    kept_files: dict[str, Kept]


Kept = tuple[int, str, "str | None"]  # a FileEntry's fields, in its order


#: the summary's format: a header line, marshal frames of entries, then the head frame (the
#: index's key and version) and its length (see :func:`write_summary`)
_SUMMARY_MAGIC = b"repobuild-summary\n3 %d\n" % marshal.version
_FRAME = struct.Struct("<I")  # the length of the marshal data that follows (the head's: after)
_FRAME_ENTRIES = 4096


def write_summary(write: Callable[[bytes], object], version: int, artifacts: list[Artifact],
                  files: dict[str, FileEntry], key: str) -> None:
    """The :class:`Previous` of the index that :func:`render_to` writes from the same data (what
    :func:`previous` gives for it), to be saved beside it in OUT/.repobuild/ under ``key`` (what
    identifies that index file). Local state, written and read by this tool only: ``marshal``
    frames of a few thousand entries, never the whole at once (150,000 entries at 100,000
    artifacts); it loads in a fifth of the time of the same as JSON.

    In two steps, :func:`start_summary` and :func:`end_summary`: the entries are known before
    the index is in place, its key only after (a build writes them while the in-toto link is
    signed)."""
    start_summary(write, artifacts, files)
    end_summary(write, version, key)


def _frame(write: Callable[[bytes], object], obj: tuple[Any, ...]) -> None:
    data = marshal.dumps(obj, 4)
    write(_FRAME.pack(len(data)))
    write(data)


def start_summary(write: Callable[[bytes], object], artifacts: list[Artifact],
                  files: dict[str, FileEntry]) -> None:
    """The header and the entries of :func:`write_summary`."""
    write(_SUMMARY_MAGIC)
    # frames of dicts: marshal makes them, and they are merged without a Python call per entry
    for start in range(0, len(artifacts), _FRAME_ENTRIES):
        _frame(write, (
            "u", {a.sha256: a.uploaded for a in artifacts[start:start + _FRAME_ENTRIES]}))
    kept = [(path, (f.size, f.sha256, f.retired)) for path, f in files.items()
            if path.startswith("blobs/") or "/by-hash/" in path]
    # Files listed under "files" win over the artifacts' entries, as in previous(); an entry
    # read later replaces one read earlier, so the artifacts' entries go first.
    for start in range(0, len(artifacts), _FRAME_ENTRIES):
        own: dict[str, Kept] = {}
        for a in artifacts[start:start + _FRAME_ENTRIES]:
            blob = a.blob
            own[blob] = (a.size, a.sha256, None)
            if a.metadata_sha256:
                own[blob + ".metadata"] = (-1, a.metadata_sha256, None)
        _frame(write, ("k", own))
    for start in range(0, len(kept), _FRAME_ENTRIES):
        _frame(write, ("k", dict(kept[start:start + _FRAME_ENTRIES])))


def end_summary(write: Callable[[bytes], object], version: int, key: str) -> None:
    """The head of :func:`write_summary`, after its entries: the frame, then its length."""
    data = marshal.dumps((key, int(version)), 4)
    write(data)
    write(_FRAME.pack(len(data)))


def read_summary(data: bytes, key: str) -> Previous | None:
    """The saved summary, when it is one saved under this ``key``; else None (then the index
    itself is read: :func:`previous`). The head (at the end) is read first: a summary of another
    index is not read further."""
    if not data.startswith(_SUMMARY_MAGIC) or len(data) < len(_SUMMARY_MAGIC) + _FRAME.size:
        return None
    view = memoryview(data)
    at = len(_SUMMARY_MAGIC)
    uploaded: dict[str, str] = {}
    kept: dict[str, Kept] = {}
    try:
        (head_size,) = _FRAME.unpack_from(data, len(data) - _FRAME.size)
        end = len(data) - _FRAME.size - head_size  # where the entries end and the head begins
        if end < at:
            return None
        head = marshal.loads(view[end:len(data) - _FRAME.size])
        if type(head) is not tuple or len(head) != 2 or head[0] != key:
            return None
        while at < end:  # frame by frame: never all of them and their entries at once
            (length,) = _FRAME.unpack_from(data, at)
            at += _FRAME.size
            if at + length > end:
                return None
            frame = marshal.loads(view[at:at + length])
            at += length
            kind, items = frame
            if type(items) is not dict:
                return None
            if kind == "u":
                uploaded.update(items)
            elif kind == "k":
                if items and not _kept_entries(items.values()):
                    return None
                kept.update(items)
            else:
                return None
            del frame, items
        return Previous(_int(head[1], "version"), uploaded, kept)
    except (ValueError, EOFError, TypeError, IndexError, struct.error, ManifestError):
        return None


def _kept_entries(values: Collection[Any]) -> bool:
    """Each value is a (size, sha256, retired) tuple of the right types: checked column by
    column, without a Python call per entry."""
    if set(map(type, values)) != {tuple} or set(map(len, values)) != {3}:
        return False
    sizes, digests, retired = zip(*values, strict=True)
    return (set(map(type, sizes)) == {int} and set(map(type, digests)) == {str}
            and set(map(type, retired)) <= {str, type(None)})


def previous(data: bytes) -> Previous:
    """What a build needs of the index it replaces; only the entries it keeps are checked
    further than :func:`parse`'s artifact checks (a third of the time of a whole parse)."""
    _doc, version, arts, files = _load(data)
    uploaded = {str(a["sha256"]): str(a["uploaded"]) for a in arts
                if isinstance(a.get("uploaded"), str)}
    kept: dict[str, Kept] = {}
    for p, f in files.items():
        if p.startswith("blobs/") or "/by-hash/" in p:
            entry = _file_entry(p, f)
            kept[p] = (entry.size, entry.sha256, entry.retired)
    for a in arts:
        kept.setdefault(a["blob"], (int(a["size"]), str(a["sha256"]), None))
        meta = a.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("path"), str):
            kept.setdefault(meta["path"], (-1, str(meta.get("sha256", "")), None))
    return Previous(version, uploaded, kept)
