"""Consistency rules between index.json and the indices it lists: pure, no I/O.

Every function takes the parsed manifest and the bytes of files whose hashes were already
checked against it, and returns failures as (path, reason) pairs.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urldefrag

from debian.deb822 import Deb822, Release

from repobuild.formats.manifest import Manifest

Failure = tuple[str, str]
_BY_HASH = re.compile(r"^dists/.+/by-hash/SHA256/([0-9a-f]{64})$")


def is_kept(path: str) -> bool:
    """Files whose bytes the cross-checks need (small indices, never blobs)."""
    if path.startswith("blobs/") or "/by-hash/" in path:
        return False
    name = path.rsplit("/", 1)[-1]
    return (
        path.startswith("dists/") and name in ("Release", "InRelease", "Release.gpg", "Packages")
    ) or (path.startswith("simple/") and name in ("index.html", "index.json")) or (
        path.startswith("in-toto/")
    )


def check_by_hash(index: Manifest) -> list[Failure]:
    out = []
    for path, entry in index.files.items():
        m = _BY_HASH.match(path)
        if m and m.group(1) != entry.sha256:
            out.append((path, "by-hash name disagrees with the hash index.json lists"))
    return out


def check_release(index: Manifest, suite_dir: str, release: bytes) -> list[Failure]:
    """Release's SHA256 lines against index.json, and every listed index named in Release."""
    out: list[Failure] = []
    path = f"{suite_dir}/Release"
    rel = Release(release.decode("utf-8", "replace"))
    entries = rel.get("SHA256") or []
    if not entries:
        return [(path, "Release has no SHA256 list")]
    named = set()
    for e in entries:
        full = f"{suite_dir}/{e['name']}"
        named.add(full)
        listed = index.files.get(full)
        if listed is None:
            out.append((full, "named in Release but not listed in index.json"))
        elif (listed.size, listed.sha256) != (int(e["size"]), e["sha256"]):
            out.append((full, "Release's size or SHA-256 disagrees with the file"))
    for p in index.files:
        if p.startswith(suite_dir + "/") and "/by-hash/" not in p and re.search(
            r"/binary-[^/]+/Packages(\.gz|\.xz)?$", p
        ) and p not in named:
            out.append((p, "index not named in Release"))
    return out


def check_packages(index: Manifest, path: str, data: bytes) -> list[Failure]:
    """Each stanza names a listed .deb blob with its size and SHA-256."""
    out: list[Failure] = []
    blobs = index.by_blob
    for stanza in Deb822.iter_paragraphs(data.decode("utf-8", "replace")):
        fn = stanza.get("Filename", "")
        art = blobs.get(fn)
        pkg = f"{stanza.get('Package')} {stanza.get('Version')}"
        if art is None:
            out.append((path, f"stanza {pkg} names {fn or 'no file'}, not an artifact"))
            continue
        if str(art["size"]) != stanza.get("Size") or art["sha256"] != stanza.get("SHA256"):
            out.append((path, f"stanza {pkg} disagrees with index.json about {fn}"))
        if art.get("kind") == "deb" and (
            art.get("name") != stanza.get("Package") or art.get("version") != stanza.get("Version")
        ):
            out.append((path, f"stanza {pkg} does not match the package in {fn}"))
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def _links(data: bytes) -> list[dict[str, str | None]]:
    parser = _Links()
    parser.feed(data.decode("utf-8", "replace"))
    return parser.links


def check_simple_project(
    index: Manifest, folder: str, html: bytes, json_bytes: bytes | None
) -> list[Failure]:
    """A project page's links, hashes and metadata against index.json, and its JSON twin."""
    out: list[Failure] = []
    path = f"{folder}/index.html"
    arts = index.by_blob
    seen: dict[str, dict[str, Any]] = {}
    for attrs in _links(html):
        href = attrs.get("href") or ""
        url, frag = urldefrag(href)
        target = posixpath.normpath(posixpath.join(folder, unquote(url)))
        art = arts.get(target)
        if art is None:
            out.append((path, f"link {url} is not an artifact of index.json"))
            continue
        if frag != f"sha256={art['sha256']}":
            out.append((path, f"link to {posixpath.basename(target)} has a wrong hash"))
        meta = attrs.get("data-core-metadata")
        listed_meta = index.files.get(target + ".metadata")
        if meta is not None:
            if listed_meta is None or meta != f"sha256={listed_meta.sha256}":
                out.append((path, f"{posixpath.basename(target)}: core metadata hash is wrong"))
        seen[posixpath.basename(target)] = {
            "sha256": art["sha256"],
            "requires-python": attrs.get("data-requires-python"),
            "yanked": attrs.get("data-yanked"),
            "metadata": meta,
        }
    if json_bytes is not None:
        out += _compare_json(folder, seen, json_bytes)
    return out


def _compare_json(
    folder: str, seen: dict[str, dict[str, Any]], json_bytes: bytes
) -> list[Failure]:
    path = f"{folder}/index.json"
    try:
        doc = json.loads(json_bytes)
        files = {f["filename"]: f for f in doc["files"]}
    except (ValueError, KeyError, TypeError):
        return [(path, "not a PEP 691 project page")]
    if set(files) != set(seen):
        return [(path, "lists other files than index.html")]
    out = []
    for name, html in seen.items():
        f = files[name]
        meta = f.get("core-metadata")
        json_meta = f"sha256={meta['sha256']}" if isinstance(meta, dict) else None
        yanked = f.get("yanked")
        json_yanked = None if yanked is False else ("" if yanked is True else yanked)
        if (
            f.get("hashes", {}).get("sha256") != html["sha256"]
            or f.get("requires-python") != html["requires-python"]
            or json_yanked != html["yanked"]
            or json_meta != html["metadata"]
        ):
            out.append((path, f"{name}: JSON and HTML pages disagree"))
    return out


def check_simple_root(html: bytes, json_bytes: bytes | None, projects: Iterable[str]) -> list[
    Failure
]:
    out: list[Failure] = []
    names = {(a.get("href") or "").rstrip("/") for a in _links(html)}
    expected = set(projects)
    if names != expected:
        out.append(("simple/index.html", "project list disagrees with the project pages"))
    if json_bytes is not None:
        try:
            listed = {p["name"] for p in json.loads(json_bytes)["projects"]}
        except (ValueError, KeyError, TypeError):
            return out + [("simple/index.json", "not a PEP 691 root page")]
        if listed != expected:
            out.append(("simple/index.json", "project list disagrees with index.html"))
    return out


def check_products(index: Manifest, products: dict[str, str], reserved: Iterable[str]) -> list[
    Failure
]:
    """The in-toto build link's products against the files index.json lists."""
    out: list[Failure] = []
    listed = {p: h for p, (_s, h) in index.listed().items()}
    skip = tuple(reserved)
    for path, digest in listed.items():
        if path.startswith(skip):
            continue
        if path not in products:
            out.append((path, "not among the in-toto build link's products"))
        elif products[path] != digest:
            out.append((path, "hash differs from the in-toto build link"))
    for path in products:
        if path not in listed:
            out.append((path, "an in-toto product index.json does not list"))
    return out
