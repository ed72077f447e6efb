"""index.json is written piece by piece (manifest.render_to); the pieces must make exactly the
canonical JSON of the whole document, whatever the paths hold."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from unittest.mock import patch

from repobuild.formats import manifest
from repobuild.formats.deb import DebInfo
from repobuild.formats.pydist import DistInfo
from repobuild.model import Artifact, FileEntry


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _artifacts() -> list[Artifact]:
    deb = Artifact("debs/hello_1.0_amd64.deb", "hello_1.0_amd64.deb", "deb", 10, _sha("a"),
                   deb=DebInfo("hello", "1.0", "amd64", "Package: hello"), uploaded="x")
    wheel = Artifact("py/ünï-1.0-py3-none-any.whl", "ünï-1.0-py3-none-any.whl", "wheel", 20,
                     _sha("b"), dist=DistInfo("ünï", "1.0", ">=3.9", "s", b""),
                     uploaded="y", yanked="", metadata_sha256=_sha("m"))
    odd = Artifact('files/a "quoted" name.txt', 'a "quoted" name.txt', "file", 0,
                   _sha("c"), sha512="f" * 128, uploaded="z", yanked="broken")
    # each string that needs escaping, alone in an entry: a backslash, a control character,
    # DEL and a line separator (printed by JSON as they are, but not printable to Python)
    sdist = Artifact("py/slash-2.0.tar.gz", "slash-2.0.tar.gz", "sdist", 30, _sha("d"),
                     dist=DistInfo("slash", "2.0", None, "s", b""), uploaded="w",
                     yanked="back\\slash")
    tab = Artifact("files/tab\there", "tab\there", "file", 1, _sha("e"), uploaded="v")
    odd_deb = Artifact("debs/x.deb", "x.deb", "deb", 2, _sha("f"), component="con\x7ftrib",
                       deb=DebInfo("x\u2028y", "1:2.0~rc1", "all", "Package: x"),
                       uploaded="u", yanked="why\nnot")
    return [wheel, odd, deb, sdist, tab, odd_deb]


def _canonical_whole(version: int, when: datetime, arts: list[Artifact],
                     files: dict[str, FileEntry], meta: dict[str, str]) -> bytes:
    """The whole document as one dict, encoded at once: what the streamed index must be."""
    whole = {
        "type": manifest.MANIFEST_TYPE,
        "spec_version": manifest.SPEC_VERSION,
        "version": version,
        "generated": manifest.rfc3339(when),
        "expires": manifest.rfc3339(when),
        **meta,
        "artifacts": [manifest.artifact_entry(a) for a in sorted(arts, key=lambda a: a.path)],
        "files": {p: manifest.file_entry(f) for p, f in files.items()},
    }
    return json.dumps(whole, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_streamed_index_is_the_canonical_json_of_the_whole() -> None:
    arts = _artifacts()
    files = {
        "dists/stable/Release": FileEntry(5, _sha("r")),
        'simple/ünï/"index".html': FileEntry(7, _sha("p")),
        "dists/stable/main/binary-amd64/by-hash/SHA256/" + _sha("old"):
            FileEntry(9, _sha("old"), retired="2026-01-01T00:00:00Z"),
        "tab\tand\u2028line": FileEntry(1, _sha("t")),
        "del\x7f": FileEntry(3, _sha("x")),
    }
    when = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    meta = {"origin": "O", "label": "L", "suite": "stable", "codename": "stable"}
    streamed = manifest.render(version=3, generated=when, expires=when, artifacts=arts,
                               files=files, meta=meta)
    assert streamed == _canonical_whole(3, when, arts, files, meta)
    parsed = manifest.parse(streamed)
    assert parsed.files == files
    assert manifest.previous(streamed).kept_files[
        "dists/stable/main/binary-amd64/by-hash/SHA256/" + _sha("old")] == (
        9, _sha("old"), "2026-01-01T00:00:00Z")


def test_summary_is_the_previous_of_the_index_whatever_the_strings_hold() -> None:
    """The summary (marshal frames) says what manifest.previous says of the index rendered from
    the same data, whatever its strings hold, and only under the key it was saved with."""
    arts = [a for a in _artifacts() if "\\" not in a.path]
    for a in arts:
        a.uploaded = f"2026-11-27T00:00:0{len(a.path) % 10}Z"
    arts[1].uploaded = 'odd "ü"\t\\ time'  # as a summary must carry whatever the index holds
    files = {
        "blobs/sha256/aa/" + _sha("k") + '/ké "x".txt': FileEntry(4, _sha("k"), "2026-01-01T0Z"),
        "dists/stable/main/binary-amd64/by-hash/SHA256/" + _sha("h"): FileEntry(6, _sha("h")),
        "dists/stable/Release": FileEntry(5, _sha("r")),
    }
    when = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    index = manifest.render(version=7, generated=when, expires=when, artifacts=arts,
                            files=files, meta={})
    pieces: list[bytes] = []
    with patch.object(manifest, "_FRAME_ENTRIES", 2):  # several frames of each kind
        manifest.write_summary(pieces.append, 7, arts, files, "12 34 56 78")
    data = b"".join(pieces)
    summary = manifest.read_summary(data, "12 34 56 78")
    assert summary is not None
    assert summary.uploaded[arts[1].sha256] == 'odd "ü"\t\\ time'
    assert summary == manifest.previous(index)
    assert len(summary.kept_files) > 4
    assert manifest.read_summary(data, "12 34 56 79") is None  # another index's
    for bad in (data[:-3], data[:40], b"", b"{}", data.replace(b"summary\n3", b"summary\n2"),
                data[:60] + bytes(len(data) - 60)):
        assert manifest.read_summary(bad, "12 34 56 78") is None
    # a kept file's entry of the wrong shape or type: the summary is not used
    for odd in (FileEntry("6", _sha("h")), FileEntry(6, None),  # type: ignore[arg-type]
                FileEntry(6, _sha("h"), 5)):  # type: ignore[arg-type]
        pieces = []
        manifest.write_summary(pieces.append, 7, arts, {**files, "blobs/x/y": odd}, "k")
        assert manifest.read_summary(b"".join(pieces), "k") is None


def test_many_entries_in_chunks_with_odd_ones_hidden_among_them() -> None:
    """Entries are written and checked a chunk at a time: one that needs escaping, anywhere
    among thousands, sends its chunk entry by entry, and the document is still exactly the
    canonical JSON of the whole (more than one chunk of each, odd ones in several)."""
    odd = _artifacts()
    plain = [Artifact(f"debs/p{i:05d}_1.0_all.deb", f"p{i:05d}_1.0_all.deb", "deb", i,
                      _sha(f"p{i}"), deb=DebInfo(f"p{i:05d}", "1.0", "all", "Package: p"),
                      uploaded="2026-01-01T00:00:00Z") for i in range(5000)]
    arts = plain[:100] + odd[:3] + plain[100:3000] + odd[3:] + plain[3000:]
    files = {f"simple/p{i:05d}/index.html": FileEntry(i, _sha(f"f{i}")) for i in range(5000)}
    files["simple/p00007/a\\b"] = FileEntry(1, _sha("bs"))
    files["simple/p04000/\u2028"] = FileEntry(2, _sha("ls"))
    files["simple/p01000/\x7f"] = FileEntry(4, _sha("del"))  # ASCII, unprintable
    files["simple/p03000/\x01"] = FileEntry(5, _sha("soh"))
    files["simple/p02500/retired"] = FileEntry(3, _sha("rt"), retired="2026-01-01T00:00:00Z")
    when = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    streamed = manifest.render(version=3, generated=when, expires=when, artifacts=arts,
                               files=files, meta={})
    assert streamed == _canonical_whole(3, when, arts, files, {})
    assert len(arts) > 2 * manifest._CHUNK and len(files) > 2 * manifest._CHUNK


def test_printable_check_is_isprintable() -> None:
    """The check of a chunk's text gives what ``str.isprintable`` gives, ASCII or not."""
    for code in [*range(0x300), 0x2028, 0x3000, 0xFEFF, 0x1F600]:
        for text in (f"a{chr(code)}b", chr(code), f"é{chr(code)}"):
            assert manifest.printable(text) == text.isprintable(), hex(code)
    assert manifest.printable("")


def test_the_usual_entries_are_written_as_any_entry_is() -> None:
    """The f-strings for the usual shapes (a .deb; a wheel with its .metadata, with or without
    Requires-Python) give what the general writer gives, and every other shape goes to it."""
    import itertools

    debs = [None, DebInfo("p", "1.0", "amd64", "Package: p")]
    dists = [None, DistInfo("P", "1.0", None, "s", b""), DistInfo("Q", "2.0", ">=3.8", "s", b"")]
    count = 0
    for deb, dist, meta, sha512, yanked, kind in itertools.product(
            debs, dists, [None, _sha("m")], [None, "c" * 128], [None, "", "bad"],
            ("deb", "wheel", "sdist", "file")):
        art = Artifact(f"x/{kind}.f", f"{kind}.f", kind, 12, _sha("a"), sha512, deb=deb,
                       dist=dist, component="main", uploaded="2026-01-01T00:00:00Z",
                       yanked=yanked, metadata_sha256=meta)
        assert manifest._artifact_raw(art) == manifest._artifact_raw_any(art), art
        count += 1
    assert count == 2 * 3 * 2 * 2 * 3 * 4
