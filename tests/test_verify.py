"""`repobuild verify` end to end, through the real command line.

A fresh build passes as a folder and over HTTP; every kind of tampering fails with exit 1 and
the failing file named on standard error and in the --json report: a changed blob, a changed
simple page, a missing or an unlisted file, a Packages stanza that disagrees with index.json in
a tree re-signed with the demo keys (so that only the cross-check can catch it), a foreign
signing key, an expired index.json, a replayed older index.json (--state), and too few
signatures for the trust root's threshold.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from repobuild.formats.manifest import canonical
from repobuild.signing import intoto
from repobuild.signing.cosign import load_cosign_private_key
from repobuild.signing.gpg import GpgSigner
from repobuild.signing.sigstore_bundle import make_key_bundle
from tests.clients import DEMO_KEYS, FIXTURES, http_server, repobuild

TRUST = DEMO_KEYS / "trust.json"
SUITE = "dists/stable"
PACKAGES = f"{SUITE}/main/binary-amd64/Packages"
DAY = 86400


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    rc: int
    stderr: str  # of the plain run
    report: dict[str, Any]  # the --json run's document
    json_rc: int

    @property
    def failed_paths(self) -> set[str]:
        return {f["path"] for f in self.report["failures"]}

    def reasons(self, path: str) -> list[str]:
        return [f["reason"] for f in self.report["failures"] if f["path"] == path]


def verify(target: str | Path, trust: Path = TRUST, *extra: str | Path) -> Verdict:
    """Run `repobuild verify` twice (plain and --json) and parse the one JSON document."""
    plain = repobuild("verify", target, "--trust", trust, *extra)
    as_json = repobuild("verify", target, "--trust", trust, "--json", *extra)
    for proc in (plain, as_json):
        assert "Traceback" not in proc.stderr, proc.stderr
    try:
        report = json.loads(as_json.stdout)  # the whole of stdout: exactly one document
    except json.JSONDecodeError as exc:
        raise AssertionError(f"--json printed no single JSON document ({exc}):\n"
                             f"{as_json.stdout[:2000]}") from None
    return Verdict(plain.returncode, plain.stderr, report, as_json.returncode)


def assert_fails(verdict: Verdict, path: str, reason: str) -> None:
    """Exit 1, ``path: ...reason...`` on stderr and in the JSON report's failures."""
    assert verdict.rc == 1 and verdict.json_rc == 1, (verdict.rc, verdict.stderr)
    assert verdict.report["ok"] is False
    prefix = f"repobuild: verify: {path}: "
    lines = [ln for ln in verdict.stderr.splitlines() if ln.startswith(prefix)]
    assert any(reason in ln for ln in lines), verdict.stderr
    assert any(reason in r for r in verdict.reasons(path)), verdict.report["failures"]


def assert_passes(verdict: Verdict) -> None:
    assert verdict.rc == 0 and verdict.json_rc == 0, verdict.stderr
    assert verdict.report["ok"] is True and verdict.report["failures"] == [], verdict.report
    assert "repobuild: verify:" not in verdict.stderr


def build(source: Path, out: Path, keys: Path = DEMO_KEYS, *, epoch: int | None = None) -> None:
    env = {"SOURCE_DATE_EPOCH": str(int(time.time()) if epoch is None else epoch)}
    repobuild("build", source, "--out", out, "--keys", keys, env=env, check=True)


def copy_tree(src: Path, dest: Path) -> Path:
    """A copy of a built tree without its local state (never served)."""
    shutil.copytree(src, dest, ignore=lambda d, names: [".repobuild"] if Path(d) == src else [])
    return dest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def a_deb_blob(tree: Path) -> str:
    index = json.loads((tree / "index.json").read_bytes())
    return sorted(a["blob"] for a in index["artifacts"] if a["kind"] == "deb")[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify")


@pytest.fixture(scope="module")
def source(base: Path) -> Path:
    """A private copy of the fixture release (others may regenerate fixtures/release)."""
    return shutil.copytree(FIXTURES, base / "release")


@pytest.fixture(scope="module")
def out(base: Path, source: Path) -> Path:
    """One fresh build for the module; tests tamper with copies of it, never with it."""
    build(source, base / "out")
    return base / "out"


# --- a tree re-signed with the demo keys (an attacker holding the keys, or a buggy build) -----


def resign(tree: Path, changed: dict[str, bytes]) -> None:
    """Write ``changed`` files into ``tree``, list them in index.json and in the in-toto build
    link, and re-sign the link and index.json with the demo keys: every signature and every
    hash then agrees, and only the cross-checks of index contents can object."""
    for rel, data in changed.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)

    [link_path] = sorted((tree / "in-toto").glob("build.*.link"))
    link = json.loads(link_path.read_bytes())["signed"]
    products = {p: h["sha256"] for p, h in link["products"].items()}
    products.update({rel: sha256(data) for rel, data in changed.items()})
    materials = {p: h["sha256"] for p, h in link["materials"].items()}
    name, link_bytes = intoto.make_link(
        (DEMO_KEYS / "intoto" / "builder.key").read_bytes(),
        materials=materials, products=products, command=link["command"],
    )
    assert f"in-toto/{name}" == link_path.relative_to(tree).as_posix()
    link_path.write_bytes(link_bytes)

    doc = json.loads((tree / "index.json").read_bytes())
    for rel, data in {**changed, f"in-toto/{name}": link_bytes}.items():
        doc["files"][rel] = {"size": len(data), "sha256": sha256(data)}
    index = canonical(doc)
    (tree / "index.json").write_bytes(index)

    gpg = GpgSigner(DEMO_KEYS / "gpg" / "secret.asc")
    try:
        (tree / "index.json.asc").write_bytes(gpg.sign(index))
    finally:
        gpg.close()
    cosign = load_cosign_private_key((DEMO_KEYS / "cosign.key").read_bytes(), b"")
    der = cosign.sign(index)
    (tree / "index.json.sig").write_bytes(base64.b64encode(der))
    (tree / "index.json.sigstore.json").write_bytes(
        make_key_bundle(index, der, cosign.public_key_pem())
    )


def forge_packages(tree: Path, edit: Callable[[str], str]) -> None:
    """Rewrite binary-amd64/Packages (and .gz, .xz, by-hash) with ``edit``, list the new
    hashes in Release, re-sign Release (InRelease, Release.gpg), then ``resign`` the tree."""
    folder = PACKAGES.rsplit("/", 1)[0]
    text = edit((tree / PACKAGES).read_text())
    variants = {
        "Packages": text.encode(),
        "Packages.gz": gzip.compress(text.encode(), mtime=0),
        "Packages.xz": lzma.compress(text.encode()),
    }
    changed = {f"{folder}/{name}": data for name, data in variants.items()}
    changed.update({f"{folder}/by-hash/SHA256/{sha256(d)}": d for d in variants.values()})

    release = (tree / SUITE / "Release").read_text()
    sub = folder.removeprefix(SUITE + "/")
    for name, data in variants.items():
        pattern = re.compile(rf"^ [0-9a-f]{{64}} +\d+ {re.escape(sub)}/{re.escape(name)}$", re.M)
        release, n = pattern.subn(f" {sha256(data)} {len(data)} {sub}/{name}", release)
        assert n == 1, f"Release does not list {sub}/{name} once"
    gpg = GpgSigner(DEMO_KEYS / "gpg" / "secret.asc")
    try:
        changed[f"{SUITE}/Release"] = release.encode()
        changed[f"{SUITE}/InRelease"] = gpg.clearsign(release.encode())
        changed[f"{SUITE}/Release.gpg"] = gpg.sign(release.encode())
    finally:
        gpg.close()
    resign(tree, changed)


def _wrong_sha256_for_hello(text: str) -> str:
    """The rbdemo-hello 1.0-1 stanza claims another SHA-256 (its blob is untouched)."""
    stanzas = text.split("\n\n")
    hits = [i for i, s in enumerate(stanzas)
            if "Package: rbdemo-hello\n" in s and "Version: 1.0-1\n" in s]
    assert len(hits) == 1, "the fixture release lost rbdemo-hello 1.0-1"
    stanzas[hits[0]] = re.sub(r"(?m)^SHA256: [0-9a-f]{64}$",
                              f"SHA256: {sha256(b'something else')}", stanzas[hits[0]])
    return "\n\n".join(stanzas)


# --- a fresh build passes ---------------------------------------------------------------------


def test_fresh_build_passes_as_a_folder(out: Path) -> None:
    verdict = verify(out)
    assert_passes(verdict)
    report = verdict.report
    assert report["version"] == 1
    for check in ("signatures", "files", "unlisted", f"apt:{SUITE}", "simple", "in-toto"):
        assert check in report["checks"], report["checks"]
    assert {(s["kind"], s["ok"]) for s in report["signatures"]} == {
        ("gpg", True), ("cosign", True), ("sigstore-key", True)}
    index = json.loads((out / "index.json").read_bytes())
    assert report["files_checked"] == len(index["files"]) + len(index["artifacts"])


def test_fresh_build_passes_over_http(out: Path) -> None:
    with http_server(out) as server:
        verdict = verify(server.url)
        requested = set(server.log)
    assert_passes(verdict)
    assert verdict.report["target"] == server.url
    assert verdict.report["version"] == 1
    assert "/index.json" in requested and f"/{a_deb_blob(out)}" in requested
    assert "in-toto" in verdict.report["checks"]


def test_json_report_is_one_document(out: Path) -> None:
    proc = repobuild("verify", out, "--trust", TRUST, "--json")
    assert proc.returncode == 0, proc.stderr
    decoder = json.JSONDecoder()
    doc, end = decoder.raw_decode(proc.stdout.lstrip())
    assert proc.stdout.lstrip()[end:].strip() == "", "more than one JSON document on stdout"
    assert isinstance(doc, dict)
    assert doc["ok"] is True and isinstance(doc["version"], int) and doc["failures"] == []


# --- tampering with a copy of the fresh build -------------------------------------------------


def _flip_blob(tree: Path) -> tuple[str, str]:
    blob = a_deb_blob(tree)
    flip(tree / blob)
    return blob, "SHA-256 does not match index.json"


def _change_simple_page(tree: Path) -> tuple[str, str]:
    page = "simple/rbdemo-lib/index.html"
    html = (tree / page).read_text()
    assert "#sha256=" in html
    (tree / page).write_text(re.sub(r"#sha256=[0-9a-f]{64}", "#sha256=" + "0" * 64, html))
    return page, "SHA-256 does not match index.json"


def _remove_listed_file(tree: Path) -> tuple[str, str]:
    rel = f"{PACKAGES}.xz"
    (tree / rel).unlink()
    return rel, "missing"


def _add_unlisted_file(tree: Path) -> tuple[str, str]:
    rel = "simple/evil/index.html"
    (tree / rel).parent.mkdir()
    (tree / rel).write_text("<a href='https://evil.invalid/evil-1.0.tar.gz'>evil</a>\n")
    return rel, "not listed in index.json"


def _forge_packages_stanza(tree: Path) -> tuple[str, str]:
    forge_packages(tree, _wrong_sha256_for_hello)
    return PACKAGES, "stanza rbdemo-hello 1.0-1 disagrees with index.json"


@pytest.mark.parametrize(
    "tamper",
    [_flip_blob, _change_simple_page, _remove_listed_file, _add_unlisted_file,
     _forge_packages_stanza],
    ids=["blob-byte", "simple-page", "missing-file", "unlisted-file", "packages-stanza-resigned"],
)
def test_tampered_copy_fails_naming_the_file(
    out: Path, tmp_path: Path, tamper: Callable[[Path], tuple[str, str]]
) -> None:
    tree = copy_tree(out, tmp_path / "tree")
    path, reason = tamper(tree)
    verdict = verify(tree)
    assert_fails(verdict, path, reason)
    # the failing file alone is named: nothing untouched is blamed
    assert verdict.failed_paths == {path}, verdict.report["failures"]


def test_resigned_tree_passes_when_nothing_disagrees(out: Path, tmp_path: Path) -> None:
    """Control for the forged-Packages case: the forger's own output verifies when the
    Packages edit changes no stanza, so the failure above is the stanza cross-check's alone."""
    tree = copy_tree(out, tmp_path / "tree")
    forge_packages(tree, lambda text: text)  # new .gz/.xz bytes, Release and signatures
    resign(tree, {"index.html": (tree / "index.html").read_bytes() + b"<!-- re-signed -->\n"})
    assert_passes(verify(tree))


def test_tampered_blob_fails_over_http(out: Path, tmp_path: Path) -> None:
    tree = copy_tree(out, tmp_path / "tree")
    blob, reason = _flip_blob(tree)
    with http_server(tree) as server:
        verdict = verify(server.url)
    assert_fails(verdict, blob, reason)
    assert verdict.failed_paths == {blob}


# --- signatures, expiry, rollback, threshold --------------------------------------------------


def test_index_signed_by_an_untrusted_key_fails(base: Path, source: Path) -> None:
    other = base / "other-keys"
    repobuild("keys", "generate", other, "--name", "Someone Else",
              "--email", "else@example.invalid", check=True)
    tree = base / "out-other-keys"
    build(source, tree, other)
    assert_passes(verify(tree, other / "trust.json"))  # control: valid under its own root
    verdict = verify(tree)
    assert_fails(verdict, "index.json", "not signed by enough trusted keys")
    assert verdict.failed_paths == {"index.json"}
    assert not any(s["ok"] for s in verdict.report["signatures"])


def test_expired_index_fails(base: Path, source: Path) -> None:
    tree = base / "out-expired"
    build(source, tree, epoch=int(time.time()) - 30 * DAY)
    verdict = verify(tree)
    assert_fails(verdict, "index.json", "expired at")
    assert verdict.report["expires"] < time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _replace_tree(dest: Path, src: Path) -> None:
    """Make ``dest`` serve exactly what ``src`` holds (keeping dest's local state)."""
    for child in dest.iterdir():
        if child.name == ".repobuild":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    shutil.copytree(src, dest, dirs_exist_ok=True)


def test_replayed_older_index_fails_against_state(base: Path, tmp_path: Path) -> None:
    source = shutil.copytree(FIXTURES, tmp_path / "release")
    tree, state = tmp_path / "out", tmp_path / "state.json"
    build(source, tree)
    assert_passes(verify(tree, TRUST, "--state", state))
    assert json.loads(state.read_text())["version"] == 1
    v1 = copy_tree(tree, tmp_path / "v1")

    (source / "files" / "NEWS.txt").write_text("version 2 of the release\n")
    build(source, tree)
    assert_passes(verify(tree, TRUST, "--state", state))
    assert json.loads(state.read_text())["version"] == 2

    # A mirror replays v1: index.json, its valid signatures and all of v1's files.
    _replace_tree(tree, v1)
    assert (tree / "index.json").read_bytes() == (v1 / "index.json").read_bytes()
    assert_passes(verify(tree))  # control: without the state, v1 is a valid tree
    verdict = verify(tree, TRUST, "--state", state)
    assert_fails(verdict, "index.json", "rollback")
    assert verdict.failed_paths == {"index.json"}
    assert json.loads(state.read_text())["version"] == 2  # the state never goes back


def _trust(tmp: Path, *, threshold: int, cosign: bool = True) -> Path:
    doc = json.loads(TRUST.read_bytes())
    doc["threshold"] = threshold
    if not cosign:
        doc["cosign"] = []
    path = tmp / f"trust-{threshold}-{'cosign' if cosign else 'gpg'}.json"
    path.write_text(json.dumps(doc))
    return path


def test_threshold_two_fails_without_the_cosign_signature(out: Path, tmp_path: Path) -> None:
    two = _trust(tmp_path, threshold=2)
    assert json.loads(TRUST.read_bytes())["threshold"] == 2  # the demo root asks for two

    tree = copy_tree(out, tmp_path / "tree")
    (tree / "index.json.sig").unlink()
    # the Sigstore bundle still carries the same cosign key's signature: two distinct keys
    assert_passes(verify(tree, two))

    (tree / "index.json.sigstore.json").unlink()
    verdict = verify(tree, two)
    assert_fails(verdict, "index.json", "not signed by enough trusted keys")
    assert verdict.failed_paths == {"index.json"}
    assert {(s["kind"], s["ok"]) for s in verdict.report["signatures"]} == {
        ("gpg", True), ("cosign", False)}


def test_gpg_only_trust_root_passes_with_threshold_one(out: Path, tmp_path: Path) -> None:
    gpg_only = _trust(tmp_path, threshold=1, cosign=False)
    tree = copy_tree(out, tmp_path / "tree")
    for name in ("index.json.sig", "index.json.sigstore.json"):
        (tree / name).unlink()
    verdict = verify(tree, gpg_only)
    assert_passes(verdict)
    assert [(s["kind"], s["ok"]) for s in verdict.report["signatures"]] == [("gpg", True)]
    # and the same root refuses the tree once the one signature it counts is gone
    (tree / "index.json.asc").unlink()
    assert_fails(verify(tree, gpg_only), "index.json", "not signed by enough trusted keys")


def test_usage_error_is_exit_2(tmp_path: Path) -> None:
    proc = repobuild("verify", tmp_path / "nope", "--trust", TRUST)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "nope" in proc.stderr


# --- the two ways a folder is verified agree, tampering included ------------------------------
#
# A folder is hashed by forked worker processes (each takes tasks from a pipe and answers only
# what failed; the in-toto check runs in a helper forked early); where there is no fork, by
# threads, as a URL is. Both must find the same failures, in the same order, for a tampered
# file of every kind of task: a plain batch (blob), a project page, a Packages, a suite
# (Release), the simple root, the in-toto link, a missing and an unlisted file.


def _verify_in_process(tree: Path, *, fork: bool, monkeypatch: pytest.MonkeyPatch,
                       **kwargs: Any) -> dict[str, Any]:
    from repobuild import verify as verify_mod
    from repobuild.sources import FolderSource
    from repobuild.trust import load_trust

    with monkeypatch.context() as m:
        m.setattr(verify_mod, "FORK", fork)
        m.setattr(verify_mod, "TASK_FILES", 2)  # many small tasks: many trips through the pipe
        done: list[tuple[int, int]] = []
        report = verify_mod.verify(FolderSource(tree), load_trust(TRUST),
                                   progress=lambda d, t: done.append((d, t)), **kwargs)
    doc = report.to_json()
    assert done and done[-1] == (doc["files_checked"], doc["files_checked"])
    return doc


def _flip_file(rel: str) -> Callable[[Path], tuple[str, str]]:
    def tamper(tree: Path) -> tuple[str, str]:
        path = rel if "*" not in rel else sorted(
            p.relative_to(tree).as_posix() for p in tree.glob(rel))[0]
        flip(tree / path)
        return path, "SHA-256 does not match index.json"
    return tamper


@pytest.mark.parametrize(
    "tamper",
    [None, _flip_blob, _change_simple_page, _remove_listed_file, _add_unlisted_file,
     _flip_file(f"{SUITE}/Release"), _flip_file(PACKAGES), _flip_file("simple/index.html"),
     _flip_file("in-toto/build.*.link"), _flip_file("in-toto/root.layout")],
    ids=["untouched", "blob-byte", "simple-page", "missing-file", "unlisted-file", "release",
         "packages", "simple-root", "intoto-link", "intoto-layout"],
)
def test_worker_processes_and_threads_report_the_same(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[Path], tuple[str, str]] | None,
) -> None:
    tree = copy_tree(out, tmp_path / "tree")
    path = reason = None
    if tamper is not None:
        path, reason = tamper(tree)
    forked = _verify_in_process(tree, fork=True, monkeypatch=monkeypatch, workers=2)
    threaded = _verify_in_process(tree, fork=False, monkeypatch=monkeypatch)
    assert forked == threaded
    if path is None:
        assert forked["ok"] is True and forked["failures"] == []
        assert "in-toto" in forked["checks"] and "simple" in forked["checks"]
    else:
        assert forked["ok"] is False
        assert any(f["path"] == path and reason in f["reason"] for f in forked["failures"]), (
            forked["failures"])


def test_forged_packages_found_by_worker_processes(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = copy_tree(out, tmp_path / "tree")
    path, reason = _forge_packages_stanza(tree)
    forked = _verify_in_process(tree, fork=True, monkeypatch=monkeypatch, workers=3)
    assert forked == _verify_in_process(tree, fork=False, monkeypatch=monkeypatch)
    assert [(f["path"], reason in f["reason"]) for f in forked["failures"]] == [(path, True)]


def test_a_dead_worker_leaves_no_file_unchecked(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies (killed, out of memory) takes tasks with it: the parent checks them
    itself, so that a tampered file in them is still found."""
    from repobuild import verify as verify_mod

    tree = copy_tree(out, tmp_path / "tree")
    blob, reason = _flip_blob(tree)
    parent = os.getpid()
    run_task = verify_mod._run_task

    def dying(plan: Any, task: Any) -> Any:
        if os.getpid() != parent:
            os._exit(9)  # every worker dies at its first task
        return run_task(plan, task)

    monkeypatch.setattr(verify_mod, "_run_task", dying)
    report = _verify_in_process(tree, fork=True, monkeypatch=monkeypatch, workers=2)
    assert [(f["path"], reason in f["reason"]) for f in report["failures"]] == [(blob, True)]
    assert {"files", "unlisted", "simple", "in-toto"} <= set(report["checks"])


def test_plain_link_reader_agrees_with_html_parser(out: Path) -> None:
    """checks._plain_links (the fast reader of plainly written pages) returns what
    html.parser returns, or None (then html.parser reads the page), for mutated pages."""
    import random
    from html.parser import HTMLParser

    from repobuild.checks import _plain_links

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.links: list[dict[str, str | None]] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                self.links.append(dict(attrs))

    def parsed(text: str) -> list[dict[str, str | None]]:
        parser = Links()
        parser.feed(text)
        return parser.links

    pages = [p.read_text() for p in sorted((out / "simple").rglob("index.html"))]
    for page in pages:
        assert _plain_links(page) == parsed(page), page
    pieces = list('<>/"\'=&; \t\nazAZ!-#') + [
        "<a ", "</a>", "<!--", "-->", "<script>", "</script>", "<title>", "</TITLE >", "&gt;",
        "&amp", ' href="', '<A HREF="y">', "<br/>", "<textarea>", "<plaintext>", "\x0b",
        "\xa0", "&#62;", "<!DOCTYPE html>", '<a href="1" href="2">', ' Data-Y=""', "&notit;",
    ]
    rng = random.Random(5)
    fast = 0
    for _ in range(4000):
        text = rng.choice(pages)
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(text) + 1)
            cut = rng.choice((0, 0, 1, rng.randint(1, 5)))
            text = text[:k] + rng.choice(pieces + [""]) + text[k + cut:]
        links = _plain_links(text)
        if links is not None:
            fast += 1
            assert links == parsed(text), text
    assert fast > 500  # the mutations left many pages plainly written
