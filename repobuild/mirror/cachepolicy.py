"""How long a file of the tree may be cached, and what it is: one policy for every host.

A repobuild tree has two kinds of files. Blobs (``blobs/sha256/<hh>/<hex>/<file>`` and their
``.metadata``) and apt's ``by-hash`` indices are named by their content and never rewritten:
caches may keep them for a year. Everything else (index.json and its signatures, InRelease,
Release, Packages, the simple pages, the landing page, keys, in-toto metadata) is rewritten at
every build and must be revalidated soon; ``stale-if-error`` lets a cache keep serving the last
good copy while the origin is down, which is safe because every mutable index is signed and
carries its own expiry (``Valid-Until``, ``expires``).

The same table drives ``repobuild serve``, the S3 uploader (``storage.py``), the ``_headers``
file of Netlify / Cloudflare Pages style hosts and an nginx configuration, so that a tree
behaves alike wherever it is hosted. Everything here is pure: no file is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "public, max-age=60, stale-while-revalidate=300, stale-if-error=86400"

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
PEP691_JSON = "application/vnd.pypi.simple.v1+json"
OCTET = "application/octet-stream"

# apt's indices and signatures have no extension.
_BY_NAME: dict[str, str] = {
    "InRelease": TEXT,
    "Release": TEXT,
    "Packages": TEXT,
    "Sources": TEXT,
    "Release.gpg": "application/pgp-signature",
}

# Longest suffix first: ".tar.gz" before ".gz".
_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    (".tar.gz", "application/gzip"),
    (".deb", "application/vnd.debian.binary-package"),
    (".whl", "application/zip"),
    (".zip", "application/zip"),
    (".gz", "application/gzip"),
    (".xz", "application/x-xz"),
    (".bz2", "application/x-bzip2"),
    (".zst", "application/zstd"),
    (".json", "application/json"),
    (".html", HTML),
    (".asc", "application/pgp-signature"),
    (".metadata", "text/plain"),
    (".sig", "text/plain"),
    (".layout", "application/json"),
    (".link", "application/json"),
    (".gpg", "application/pgp-keys"),  # keys/repo.gpg: a binary keyring (Release.gpg above)
    (".pub", TEXT),  # PEM public keys
    (".sources", TEXT),  # keys/repo.sources: a deb822 apt source
    (".txt", TEXT),
)


def _parts(rel_path: str) -> list[str]:
    return [p for p in rel_path.replace("\\", "/").split("/") if p not in ("", ".")]


def is_immutable(rel_path: str) -> bool:
    """Whether the file is content-addressed: a blob, or an apt ``by-hash`` index."""
    parts = _parts(rel_path)
    return bool(parts) and (parts[0] == "blobs" or "by-hash" in parts[:-1])


def cache_control(rel_path: str) -> str:
    """The ``Cache-Control`` value for a path relative to the tree's root."""
    return IMMUTABLE if is_immutable(rel_path) else MUTABLE


def content_type(rel_path: str) -> str:
    """The ``Content-Type`` for a path relative to the tree's root."""
    parts = _parts(rel_path)
    if not parts:
        return HTML  # the root folder: its index.html
    name = parts[-1]
    if name in _BY_NAME:
        return _BY_NAME[name]
    if parts[0] == "simple" and name == "index.json":
        return PEP691_JSON
    lower = name.lower()
    for suffix, ctype in _BY_SUFFIX:
        if lower.endswith(suffix):
            return ctype
    return OCTET


# -- static hosts --------------------------------------------------------------------------
# Cloudflare Pages joins the values of a header that several matching rules set with a comma
# (and Netlify's choice between them is its own), so no path matches two rules that set the
# same header: each Cache-Control rule covers its own paths, and the Content-Type rules (for
# files whose extension tells a host nothing) do not overlap either. ":name" matches one path
# segment, "*" anything (once per pattern).
_HEADER_RULES: tuple[tuple[str, str | None, str | None], ...] = (
    ("/blobs/*", IMMUTABLE, None),
    ("/dists/:suite/:component/:arch/by-hash/*", IMMUTABLE, None),
    ("/dists/:suite/:file", MUTABLE, None),
    ("/dists/:suite/InRelease", None, TEXT),
    ("/dists/:suite/Release", None, TEXT),
    ("/dists/:suite/Release.gpg", None, "application/pgp-signature"),
    ("/dists/:suite/:component/:arch/:file", MUTABLE, None),
    ("/dists/:suite/:component/:arch/Packages", None, TEXT),
    ("/simple/*", MUTABLE, None),
    ("/", MUTABLE, None),
    ("/:file", MUTABLE, None),
    ("/index.json.sig", None, "text/plain"),
    ("/keys/*", MUTABLE, None),
    ("/in-toto/*", MUTABLE, None),
)


def header_rules() -> tuple[tuple[str, str | None, str | None], ...]:
    """(URL pattern, Cache-Control or None, Content-Type or None) of the ``_headers`` file."""
    return _HEADER_RULES


def _rule_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if p == "*" else "[^/]+" if p.startswith(":") else re.escape(p)
             for p in re.split(r"(\*|:[a-z]+)", pattern) if p]
    return re.compile("^" + "".join(parts) + "$")


def header_rules_for(url_path: str) -> list[tuple[str, str | None, str | None]]:
    """The ``_headers`` rules whose pattern matches a URL path (``/dists/stable/InRelease``)."""
    return [rule for rule in _HEADER_RULES if _rule_regex(rule[0]).match(url_path)]


def render_headers_file(paths: Iterable[str] | None = None) -> bytes:
    """A ``_headers`` file (Netlify, Cloudflare Pages and hosts of their style).

    The rules are patterns, so the file does not depend on the tree; given the tree's
    ``paths`` (relative to its root), it also checks that each one gets exactly the
    Cache-Control of :func:`cache_control` from exactly one rule (ValueError otherwise).
    """
    for rel in paths or ():
        url = "/" + "/".join(_parts(rel))
        got = [cache for _, cache, _ in header_rules_for(url) if cache is not None]
        if got != [cache_control(rel)]:
            raise ValueError(f"_headers: {url} gets Cache-Control {got}, "
                             f"not [{cache_control(rel)!r}]")
    lines = [
        "# _headers for a repobuild tree (Netlify, Cloudflare Pages and hosts of that style).",
        "# Generated by repobuild.mirror.cachepolicy: blobs and by-hash files are immutable,",
        "# every index is revalidated after a minute.",
        "#",
        "# These hosts serve files and cannot negotiate content: they cannot answer",
        "# 'Accept: application/vnd.pypi.simple.v1+json' on /simple/<name>/ with index.json",
        "# (PEP 691). pip and uv then read the PEP 503 HTML pages, which say the same; the JSON",
        "# stays reachable at /simple/<name>/index.json.",
        "#",
        "# No path matches two rules that set the same header (Cloudflare would join the values",
        "# with a comma). If the tree lives under a prefix, put it in front of every pattern.",
        "# Never upload .repobuild/ (local state): these hosts cannot hide dot-folders.",
        "",
    ]
    for pattern, cache, ctype in _HEADER_RULES:
        lines.append(pattern)
        if cache is not None:
            lines.append(f"  Cache-Control: {cache}")
            lines.append("  X-Content-Type-Options: nosniff")
        if ctype is not None:
            lines.append(f"  Content-Type: {ctype}")
        lines.append("")
    return "\n".join(lines).encode()


def _nginx_types(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """nginx maps the text after the last dot: ".tar.gz" is "gz"."""
    table: dict[str, str] = {}
    for suffix, ctype in reversed(_BY_SUFFIX):
        table[suffix.rsplit(".", 1)[1]] = ctype
    table.update(overrides or {})
    return dict(sorted(table.items()))


def _nginx_location(head: str, cache: str, types: dict[str, str], default_type: str,
                    extra: tuple[str, ...] = ()) -> list[str]:
    out = [f"    location {head} {{"]
    out += [f"        {line}" for line in extra]
    out.append(f'        add_header Cache-Control "{cache}";')
    out.append("        add_header X-Content-Type-Options nosniff;")
    out.append("        types {")
    out += [f'            "{ctype}" {ext};' for ext, ctype in types.items()]
    out.append("        }")
    out.append(f'        default_type "{default_type}";')
    out.append("    }")
    return out


# PEP 691 negotiation with a regular expression: JSON when the client lists the JSON type
# first (pip and uv do) with a q-value above 0, or when it lists no type that HTML satisfies.
# A full q-value comparison needs a program (repobuild serve does one).
_JSON_RE = r"application/vnd\.pypi\.simple\.v1\+json"
_Q_ZERO = r"\s*q\s*=\s*0(\.0{0,3})?\s*(,|$)"
_HTML_RE = r"(text/html|application/vnd\.pypi\.simple\.v1\+html|\*/\*|text/\*)"
_PEP691_MAP = "\n".join([
    "map $http_accept $pep691_index {",
    "    default index.html;",
    f'    "~*^\\s*{_JSON_RE}\\s*(,|$|;(?!{_Q_ZERO}))" index.json;',
    f'    "~*^(?!.*{_HTML_RE}).*{_JSON_RE}" index.json;',
    "}",
])


def render_nginx_snippet(root: str = "/srv/repobuild", listen: str = "80",
                         server_name: str = "_") -> bytes:
    """An nginx configuration for the ``http {}`` context (e.g. ``conf.d/repobuild.conf``):
    the PEP 691 ``map`` and a ``server`` whose locations carry this module's policy."""
    lines = [
        "# nginx configuration for a repobuild tree; generated by repobuild.mirror.cachepolicy.",
        "# Include it in the http {} context (Debian: /etc/nginx/conf.d/repobuild.conf) and set",
        "# root, listen and server_name. The tree is served at the site root.",
        "",
        "# PEP 691: /simple/ and /simple/<name>/ answer index.json to clients that ask for",
        "# application/vnd.pypi.simple.v1+json first, index.html to everyone else.",
        _PEP691_MAP,
        "",
        "server {",
        f"    listen {listen};",
        f"    server_name {server_name};",
        f"    root {root};",
        "    autoindex off;",
        "    index index.html;",
        "    etag on;",
        "    charset off;",
        "    # A tree holds no symlinks: never follow one (out of the tree) below the root.",
        "    disable_symlinks on from=$document_root;",
        "",
        "    # Dot-files and dot-folders (.repobuild/: local state) are never served.",
        "    location ~ /\\. {",
        "        deny all;",
        "    }",
        "",
        "    # Content-addressed: apt's by-hash indices and the blobs.",
    ]
    lines += _nginx_location("~ ^/dists/.+/by-hash/", IMMUTABLE, {}, OCTET)
    lines += _nginx_location("/blobs/", IMMUTABLE, _nginx_types(), OCTET)
    lines += ["", "    # Rewritten at every build."]
    lines += _nginx_location("/dists/", MUTABLE,
                             _nginx_types({"gpg": "application/pgp-signature"}), TEXT)
    lines += _nginx_location("/simple/", MUTABLE, _nginx_types({"json": PEP691_JSON}), HTML,
                             ("index $pep691_index index.html;", "add_header Vary Accept;"))
    lines += _nginx_location("/", MUTABLE, _nginx_types(), OCTET)
    lines.append("}")
    return ("\n".join(lines) + "\n").encode()
