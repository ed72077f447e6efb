"""Consistency rules between index.json and the indices it lists: pure, no I/O.

Every function takes the parsed manifest and the bytes of files whose hashes were already
checked against it, and returns failures as (path, reason) pairs.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable
from html import unescape
from typing import Any
from urllib.parse import unquote, urldefrag

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
    from debian.deb822 import Release

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
    from debian.deb822 import Deb822

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


def _links(data: bytes) -> list[dict[str, str | None]]:
    """The attributes of every <a> start tag, as ``html.parser`` reads them."""
    text = data.decode("utf-8", "replace")
    links = _plain_links(text)
    if links is not None:
        return links
    from html.parser import HTMLParser

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                found.append(dict(attrs))

    found: list[dict[str, str | None]] = []
    Links().feed(text)
    return found


# A page made only of complete, plainly written tags (<name attr="value" ...>, </name>,
# <!DOCTYPE html>) and text without "<" (what repobuild writes) is read here several times
# faster than by html.parser, with the same result; anything else (comments, other quoting, a
# stray "<", raw-text elements with markup inside) returns None, and html.parser reads it.
_WS = "[ \t\n\r\f]"
_NEXT_TAG = re.compile(
    r'[^<]*(?:<!DOCTYPE html>|<(/?)([a-zA-Z][a-zA-Z0-9]*)'
    rf'((?:{_WS}+[a-zA-Z][-a-zA-Z0-9:_.]*="[^"<>]*")*){_WS}*>)'
)
_ATTR = re.compile(rf'{_WS}+([a-zA-Z][-a-zA-Z0-9:_.]*)="([^"<>]*)"')
# elements whose content some html.parser versions read as text: allowed with plain text only
_RAW_TEXT = {"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes"}
_REFUSED = {"plaintext", "noscript"}


def _plain_links(text: str) -> list[dict[str, str | None]] | None:
    links: list[dict[str, str | None]] = []
    match = _NEXT_TAG.match
    raw: str | None = None  # inside this raw-text element
    pos = 0
    while m := match(text, pos):
        pos = m.end()
        closing, name, attrs = m.groups()
        if name is None:  # <!DOCTYPE html>
            if raw is not None:
                return None
            continue
        name = name.lower()
        if raw is not None and not (closing and name == raw):
            return None
        raw = None
        if closing:
            if attrs:
                return None
        elif name in _REFUSED:
            return None
        elif name in _RAW_TEXT:
            raw = name
        elif name == "a":
            links.append({k.lower(): unescape(v) if v else v for k, v in _ATTR.findall(attrs)})
    if raw is not None or text.find("<", pos) >= 0:
        return None
    return links


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


def check_products(
    index: Manifest,
    products: dict[str, str],
    reserved: Iterable[str],
    *,
    listed: dict[str, tuple[int, str]] | None = None,
) -> list[Failure]:
    """The in-toto build link's products against the files index.json lists (``listed``:
    ``index.listed()`` when the caller has it already)."""
    out: list[Failure] = []
    if listed is None:
        listed = index.listed()
    skip = tuple(reserved)
    for path, (_size, digest) in listed.items():
        if path.startswith(skip):
            continue
        got = products.get(path)
        if got is None:
            out.append((path, "not among the in-toto build link's products"))
        elif got != digest:
            out.append((path, "hash differs from the in-toto build link"))
    for path in products:
        if path not in listed:
            out.append((path, "an in-toto product index.json does not list"))
    return out
