"""repobuild build against its floors and its peers, side by side in one run.

    python bench/build_bench.py N [--keep] [--avg-kb 500] [--seed 1] [--repeat 1] [--profile]

Generates (or reuses, under bench/work/) a corpus of N artifacts, then times on the same,
page-cache-warm files: the hashing floor (openssl, 2 processes), cp -r, repobuild cold builds
(copy and --link), repobuild rebuilds (nothing changed; one .deb added), apt-ftparchive,
aptly and reprepro (debs only; each unsigned and signed with the demo key in its default
configuration, and signed in one that writes what repobuild writes: reprepro with .xz, aptly
with by-hash), simple503 and dumb-pypi (wheels only). Each figure is printed with its ratio
to the floor of the same work, and the table is appended to bench/RESULTS.md. See
bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import common
import corpus as corpus_mod
from common import Bench, CommandFailed, Peers, Row, Run, Scratch, best_of, rmtree, settle, timed


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__ or "")
    ap.add_argument("--no-install", action="store_true",
                    help="use the peers that are there; install nothing")
    ap.add_argument("--peers-venv", type=Path, default=common.PEERS_VENV,
                    help="venv for simple503, dumb-pypi, py-spy (default bench/work/peers-venv)")
    ap.add_argument("--profile", action="store_true",
                    help="one more cold build under py-spy; print its hot spots")
    args = common.parse(ap, argv)
    corpus, scratch, bench = common.start(args, "build-bench")
    peers = common.find_peers(install=not args.no_install, venv=args.peers_venv)
    for name, why in sorted(peers.missing.items()):
        print(f"peer missing: {name}: {why}", flush=True)
    added: list[Path] = []
    space = Scratch(scratch)
    gpg = PeerGpg(scratch, args.keys, args.timeout)
    try:
        if peers.has("aptly") or peers.has("reprepro"):
            gpg.setup()
        run_all(bench, corpus, peers, space, gpg, args, added)
    finally:
        gpg.close()
        for path in added:
            path.unlink(missing_ok=True)
        space.empty()  # after the last timed step, never before one (see common.Scratch)
        if not args.keep:
            rmtree(scratch)
    common.report("build_bench", args, corpus, bench,
                  notes=bench.notes + space.notes
                  + [f"{k}: {v}" for k, v in sorted(peers.missing.items())])
    return 1 if bench.figures_failed else 0


def run_all(
    bench: Bench,
    corpus: corpus_mod.Corpus,
    peers: Peers,
    space: Scratch,
    gpg: PeerGpg,
    args: argparse.Namespace,
    added: list[Path],
) -> None:
    src = corpus.root
    scratch = space.path
    deb_dir, wheel_dir = src / "deb", src / "wheel"
    t = args.timeout
    size = {"all": corpus.total_bytes, "deb": corpus.bytes_of("deb"),
            "wheel": corpus.bytes_of("wheel")}
    bench.notes.append(
        "Every timed run writes into a folder name never used before; replaced trees are "
        "renamed aside and deleted after the last timed step (ext4 skips inodes freed in the "
        "last 60-300 s: a build right after rm -rf of a 40,000-file tree ran 2-3x slower)."
    )

    # ---- floors ---------------------------------------------------------------------------
    timed(common.openssl_cmd(src), timeout=t)  # warm the page cache; not counted
    floor: dict[str, float] = {}
    floors = Bench(max(3, bench.repeat))  # cheap and noisy: always best of 3 at least
    for subset, folder in (("all", src), ("deb", deb_dir), ("wheel", wheel_dir)):
        run = floors.measure(None, partial(timed, common.openssl_cmd(folder), timeout=t))
        floor[f"openssl {subset}"] = run.seconds
        bench.add(Row(f"openssl dgst -sha256, 2 procs ({subset})", subset, run))
        run, dest = floors.measure_fresh(space, f"cp-{subset}", copier("-r", folder, t),
                                         need=size[subset])
        space.discard(dest)
        floor[f"cp {subset}"] = run.seconds
        bench.add(Row(f"cp -r ({subset})", subset, run))
    run, dest = floors.measure_fresh(space, "cp-link", copier("-rl", src, t))
    space.discard(dest)
    floor["cp -rl all"] = run.seconds
    bench.add(Row("cp -rl (all; hard links)", "all", run))
    full = floor["openssl all"] + floor["cp all"]
    full_name = "openssl + cp -r"
    link_floor = floor["openssl all"] + floor["cp -rl all"]
    deb_floor, deb_copy = floor["openssl deb"], floor["openssl deb"] + floor["cp deb"]
    whl_floor, whl_copy = floor["openssl wheel"], floor["openssl wheel"] + floor["cp wheel"]
    print(f"{'floor: openssl + cp -r (all)':<46} {full:>7.2f} s", flush=True)

    # ---- repobuild cold -------------------------------------------------------------------
    keys = str(args.keys)

    def build(out: Path, *extra: str) -> Run:
        return timed(common.repobuild_cmd("build", src, "--out", out, "--keys", keys, *extra),
                     timeout=t)

    try:
        run, out_copy = bench.measure_fresh(space, "out-copy", build, need=size["all"])
        bench.add(Row("repobuild build, cold (copy)", "all", run, full_name, full,
                      f"peak RSS {run.rss_mb:.0f} MB"))
    except CommandFailed as exc:
        bench.failed("repobuild build, cold (copy)", "all", exc)
        return
    try:
        run, out_link = bench.measure_fresh(space, "out-link", lambda o: build(o, "--link"),
                                            need=size["all"] // 20)
        space.discard(out_link)
        bench.add(Row("repobuild build --link, cold", "all", run, "openssl + cp -rl",
                      link_floor, f"peak RSS {run.rss_mb:.0f} MB"))
    except CommandFailed as exc:
        bench.failed("repobuild build --link, cold", "all", exc)
    try:
        run = bench.measure(None, lambda: build(out_copy))
        bench.add(Row("repobuild rebuild, nothing changed", "all", run, full_name, full,
                      f"peak RSS {run.rss_mb:.0f} MB"))
    except CommandFailed as exc:
        bench.failed("repobuild rebuild, nothing changed", "all", exc)

    # ---- peers, initial state (the N debs / wheels) ----------------------------------------
    # Each repeat into a folder never used before; the last one is the one "+1" adds to.
    # repobuild's rule: every architecture of the debs but "all" (amd64 if none), the "all"
    # packages listed under each
    arches = sorted({p.stem.rsplit("_", 1)[-1] for p in corpus.paths("deb")} - {"all"}) or [
        "amd64"]
    ftp = scratch / "apt-ftparchive"
    ftp.mkdir()
    ftp_cmd = (f"cd {shlex.quote(str(src))} && apt-ftparchive packages deb > "
               f"{ftp}/Packages && apt-ftparchive release {ftp} > {ftp}/Release.new")

    def db_cmd(db: Path) -> str:
        return (f"cd {shlex.quote(str(src))} && apt-ftparchive --db {shlex.quote(str(db))} "
                f"packages deb > {ftp}/Packages.db && apt-ftparchive release {ftp} > "
                f"{ftp}/Release.new")

    ftp_db = ftp / "cache.db"
    if peers.has("apt-ftparchive"):
        peer(bench, "apt-ftparchive packages + release", "deb", deb_floor, "openssl deb",
             lambda: bench.measure(None, lambda: timed(ftp_cmd, timeout=t)))

        def ftp_db_cold() -> Run:
            nonlocal ftp_db
            run, ftp_db = bench.measure_fresh(space, "apt-ftparchive-cache.db",
                                              lambda db: timed(db_cmd(db), timeout=t))
            return run

        peer(bench, "apt-ftparchive --db, cold", "deb", deb_floor, "openssl deb", ftp_db_cold)
    else:
        bench.missing("apt-ftparchive", "deb", peers.missing["apt-ftparchive"])

    # aptly and reprepro, unsigned (as they are often benchmarked) and signed with the demo key,
    # as repobuild always signs; each over the same architectures as repobuild's apt index.
    # Their default configurations write less than repobuild (Packages, .gz, .xz and by-hash
    # copies in each binary-<arch>), so each is also run signed in the configuration that comes
    # closest to it ("matched"): reprepro with .xz (it has no by-hash), aptly with by-hash (it
    # writes .bz2, never .xz)
    apt_tools: list[AptPeer] = []
    for kind in ("unsigned", "signed", "matched"):
        for exe in ("aptly", "reprepro"):
            cls = AptlyPeer if exe == "aptly" else RepreproPeer
            if not peers.has(exe):
                if kind == "unsigned":
                    bench.missing(exe, "deb", peers.missing[exe])
            elif kind != "unsigned" and not gpg.ok:
                match = f", {cls.MATCH}" if kind == "matched" else ""
                bench.missing(f"{exe}, signed{match}", "deb", gpg.why)
            else:
                apt_tools.append(cls(peers.tools[exe], deb_dir, arches,
                                     None if kind == "unsigned" else gpg,
                                     matched=kind == "matched"))
    apt_tools.sort(key=lambda p: p.order)  # each tool's signed rows right below its unsigned
    apt_repos: list[tuple[AptPeer, Path]] = []  # the ones that took the N debs, and where
    for tool in apt_tools:
        try:
            run, root = bench.measure_fresh(space, tool.folder, partial(tool.cold, timeout=t),
                                            need=size["deb"], prepare=tool.prepare)
        except CommandFailed as exc:
            bench.failed(tool.cold_label, "deb", exc)
            continue
        bench.add(Row(tool.cold_label, "deb", run, "openssl + cp -r deb", deb_copy, tool.note))
        apt_repos.append((tool, root))

    if peers.has("simple503"):
        def s503_cmd(out: Path) -> list[str]:
            return [peers.tools["simple503"], "--copy", "--extract-metadata", str(wheel_dir),
                    str(out)]

        def s503_cold() -> Run:
            run, out = bench.measure_fresh(space, "simple503",
                                           lambda o: timed(s503_cmd(o), timeout=t),
                                           need=size["wheel"])
            space.discard(out)
            return run

        peer(bench, "simple503 --copy --extract-metadata", "wheel", whl_copy,
             "openssl + cp -r wheel", s503_cold)
    else:
        bench.missing("simple503", "wheel", peers.missing["simple503"])

    if peers.has("dumb-pypi"):
        listing = scratch / "wheels.txt"
        listing.write_text("".join(p.name + "\n" for p in corpus.paths("wheel")))

        def dp_cmd(out: Path) -> list[str]:
            return [peers.tools["dumb-pypi"], "--package-list", str(listing), "--output-dir",
                    str(out), "--packages-url", "../../wheel/", "--no-generate-timestamp"]

        def dp_cold() -> Run:
            run, out = bench.measure_fresh(space, "dumb-pypi",
                                           lambda o: timed(dp_cmd(o), timeout=t))
            space.discard(out)
            return run

        peer(bench, "dumb-pypi (names only, reads no file)", "wheel", whl_floor,
             "openssl wheel", dp_cold)
    else:
        bench.missing("dumb-pypi", "wheel", peers.missing["dumb-pypi"])

    # ---- one package more -------------------------------------------------------------------
    # Round k adds the .deb new0000k to the corpus; then each tool takes it in, so that every
    # tool sees exactly one new package per round. Best of the rounds (--repeat).
    incremental: list[tuple[str, str, float, str, Callable[[Path], Run]]] = []
    if out_copy.exists():
        incremental.append(("repobuild rebuild, +1 deb", "all", full, full_name,
                            lambda _new: build(out_copy)))
    if peers.has("apt-ftparchive"):
        incremental.append(("apt-ftparchive --db, +1 deb", "deb", deb_floor, "openssl deb",
                            lambda _new: timed(db_cmd(ftp_db), timeout=t)))
    for tool, root in apt_repos:
        incremental.append((tool.add_label, "deb", deb_copy, "openssl + cp -r deb",
                            partial(tool.add, root, timeout=t)))
    runs: dict[str, list[Run]] = {label: [] for label, *_ in incremental}
    broken: set[str] = set()
    for k in range(1, bench.repeat + 1):
        new = corpus_mod.add_package(corpus, "deb", tag=k)
        added.append(new)
        for label, subset, _floor, _name, fn in incremental:
            if label in broken:
                continue
            settle()
            try:
                runs[label].append(fn(new))
            except CommandFailed as exc:
                broken.add(label)
                bench.failed(label, subset, exc)
    for label, subset, fl, fl_name, _fn in incremental:
        if runs[label] and label not in broken:
            run = best_of(runs[label])
            note = f"peak RSS {run.rss_mb:.0f} MB" if label.startswith("repobuild") else ""
            note += next((tool.note for tool, _ in apt_repos if tool.add_label == label), "")
            bench.add(Row(label, subset, run, fl_name, fl, note))
    if runs.get("repobuild rebuild, +1 deb"):
        bench.check("repobuild verify after the rebuilds",
                    common.repobuild_cmd("verify", out_copy, "--trust", args.trust), t)
    # untimed: the peers indexed what repobuild did (same architectures, same packages), the
    # signed ones made signatures that gpgv accepts with the demo public key, and repobuild and
    # the matched peers wrote the .xz / by-hash files they are there for
    checks_before = bench.checks_failed
    deb_arch = [p.stem.rsplit("_", 1)[-1] for p in corpus.paths("deb") + added]
    want = {f"main/binary-{a}": sum(1 for d in deb_arch if d in (a, "all")) for a in arches}
    trees = [("repobuild", out_copy / "dists" / "stable", False, True, True)]
    trees += [(tool.name, tool.dists(root), tool.gpg is not None, tool.writes_xz,
               tool.by_hash) for tool, root in apt_repos]
    for name, dists, signed, xz, by_hash in trees:
        found = apt_index(dists)
        bench.verdict(f"{name}: indexes {', '.join(f'{v} in {k}' for k, v in want.items())}",
                      None if found == want else f"indexes {found}")
        if signed:
            for what, files in (("InRelease", [dists / "InRelease"]),
                                ("Release.gpg", [dists / "Release.gpg", dists / "Release"])):
                bench.check(f"{name}: gpgv {what}",
                            ["gpgv", "--keyring", str(gpg.keyring), *map(str, files)], t)
        if xz:
            bench.verdict(f"{name}: Packages.xz in each binary-<arch>", xz_missing(dists, want))
        if by_hash:
            bench.verdict(f"{name}: by-hash in each binary-<arch>", by_hash_missing(dists, want))
    matched = [tool for tool, _ in apt_repos if tool.matched]
    if bench.checks_failed == checks_before and apt_repos:
        bench.notes.append(
            "Checked (untimed) after the +1 rounds: repobuild and each apt peer list the same "
            f"packages under the same architectures ({', '.join(want)}); the signed peers' "
            "InRelease and Release.gpg pass gpgv with keys.example/gpg/public.asc; repobuild "
            "wrote Packages.xz and by-hash copies" + "".join(
                f", \"{tool.name}\" its {'Packages.xz' if tool.writes_xz else 'by-hash copies'}"
                for tool in matched)
            + " (.xz listed in Release and the same list as Packages; by-hash copies identical "
            "to the current files).")
    if matched:
        bench.notes.append(
            "Outputs: repobuild writes Packages, Packages.gz, Packages.xz (xz preset 6) and "
            "by-hash copies in each binary-<arch> and signs InRelease + Release.gpg; the "
            "default-config aptly/reprepro rows write less (no .xz, no by-hash; the unsigned ones "
            "no signature). The rows \"…, signed, .xz like repobuild\" (reprepro: Packages, .gz, "
            ".xz; it has no by-hash) and \"…, signed, by-hash like repobuild\" (aptly: by-hash, "
            "but .gz + .bz2, no .xz) come closest to repobuild's outputs; compare repobuild with "
            "those.")
    space.discard(out_copy)

    if args.profile:
        profile(bench, peers, space, src, keys, t)


class PeerGpg:
    """The demo OpenPGP key (KEYS/gpg/secret.asc) in a throwaway GNUPGHOME, for the peers that
    sign; its public key, dearmored, is ``keyring`` (for gpgv)."""

    def __init__(self, scratch: Path, keys: Path, timeout: float) -> None:
        self.home = scratch / "gnupg"
        self.own_tmp = False
        self.keys, self.timeout = keys, timeout
        self.keyring = scratch / "demo-public.gpg"
        self.fingerprint = ""
        self.why = "not set up"

    @property
    def ok(self) -> bool:
        return bool(self.fingerprint)

    @property
    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}

    def setup(self) -> None:
        if len(str(self.home)) > 80:  # gpg-agent's sockets go in GNUPGHOME: keep it short
            self.home, self.own_tmp = Path(tempfile.mkdtemp(prefix="bench-gpg-")), True
        self.home.mkdir(mode=0o700, exist_ok=True)
        t, env = self.timeout, self.env
        try:
            timed(["gpg", "--batch", "--import", str(self.keys / "gpg" / "secret.asc")],
                  env=env, timeout=t)
            listing = timed(["gpg", "--batch", "--with-colons", "--list-secret-keys"],
                            env=env, timeout=t)
            fprs = [line.split(":")[9] for line in listing.stdout.splitlines()
                    if line.startswith("fpr:")]
            if not fprs:
                self.why = f"no secret key in {self.keys / 'gpg' / 'secret.asc'}"
                return
            timed(["gpg", "--batch", "--yes", "--output", str(self.keyring), "--dearmor",
                   str(self.keys / "gpg" / "public.asc")], env=env, timeout=t)
            # start gpg-agent now: no timed run pays for it (repobuild starts its own each build)
            timed(f"echo warm-up | gpg --batch --local-user {fprs[0]} --clearsign > /dev/null",
                  env=env, timeout=t)
        except CommandFailed as exc:
            self.why = f"gpg: {exc.run.why()}"
            return
        except FileNotFoundError:
            self.why = "gpg is not installed (apt-get install gnupg)"
            return
        self.fingerprint = fprs[0]

    def close(self) -> None:
        """Stop the gpg-agent of this home (and remove the home if it is not in scratch)."""
        if self.home.exists():
            timed(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                  check=False, timeout=60)
        if self.own_tmp:
            rmtree(self.home)


class _AptPeerBase:
    """What the apt peers share: in the default configuration, unsigned or signed with the
    demo key (``gpg``), or ``matched`` (signed, writing what repobuild writes); each peer
    names its labels, notes and folders."""

    TOOL: str
    RANK: int  # the peer's place in the table
    MATCH: str
    FOLDERS: tuple[str, str, str]  # unsigned, signed, matched
    COLD: str
    ADD: str
    NOTES: tuple[str, str, str]  # unsigned, signed, and what matched adds to signed
    XZ_WHEN_MATCHED: bool
    BY_HASH_WHEN_MATCHED: bool

    def __init__(self, exe: str, deb_dir: Path, arches: list[str], gpg: PeerGpg | None, *,
                 matched: bool = False) -> None:
        assert gpg is not None or not matched, "the matched variant signs, as repobuild does"
        self.exe, self.deb_dir, self.arches, self.gpg = exe, deb_dir, arches, gpg
        self.matched = matched
        self.writes_xz = matched and self.XZ_WHEN_MATCHED
        self.by_hash = matched and self.BY_HASH_WHEN_MATCHED
        variant = 2 if matched else int(gpg is not None)
        kind = "signed" if gpg else "unsigned"
        if matched:
            kind += f", {self.MATCH}"
        self.name = f"{self.TOOL}, {kind}"
        self.order = (self.RANK, variant)
        self.folder = self.FOLDERS[variant]
        self.cold_label = f"{self.COLD}, {kind}"
        self.add_label = f"{self.ADD}, {kind}"
        self.note = self.NOTES[int(gpg is not None)]
        if matched:
            self.note += f"; {self.NOTES[2]}"


class AptlyPeer(_AptPeerBase):
    """aptly: ``repo create`` + ``repo add`` of the deb folder + ``publish repo``, then
    ``repo add`` + ``publish update`` of one more; signed with the demo key when ``gpg``;
    ``matched``: signed, and published with ``-acquire-by-hash`` (by-hash copies, as repobuild
    writes; aptly writes Packages, .gz and .bz2, never .xz)."""

    TOOL, RANK = "aptly", 0
    MATCH = "by-hash like repobuild"
    FOLDERS = ("aptly", "aptly-signed", "aptly-by-hash")
    COLD = "aptly repo create + add N + publish"
    ADD = "aptly repo add 1 + publish update"
    NOTES = ("-skip-signing: no InRelease, no Release.gpg", "InRelease + Release.gpg (gpg)",
             "-acquire-by-hash: by-hash copies; aptly writes Packages, .gz and .bz2, not .xz")
    XZ_WHEN_MATCHED, BY_HASH_WHEN_MATCHED = False, True

    def _cmd(self, root: Path, *a: str) -> str:
        return shlex.join([self.exe, f"-config={root / 'aptly.conf'}", *a])

    def _sign(self) -> list[str]:
        if self.gpg is None:
            return ["-skip-signing"]
        return ["-batch", f"-gpg-key={self.gpg.fingerprint}"]

    def prepare(self, root: Path) -> None:
        root.mkdir()
        conf = {"rootDir": str(root / "root"), "gpgDisableSign": self.gpg is None,
                "gpgDisableVerify": True, "gpgProvider": "gpg"}
        (root / "aptly.conf").write_text(json.dumps(conf) + "\n")

    def cold(self, root: Path, *, timeout: float) -> Run:
        return timed(" && ".join([
            self._cmd(root, "repo", "create", "-distribution=stable", "-component=main", "bench"),
            self._cmd(root, "repo", "add", "bench", str(self.deb_dir)),
            self._cmd(root, "publish", "repo", *self._sign(), "-skip-contents",
                      *(["-acquire-by-hash"] if self.by_hash else []),
                      f"-architectures={','.join(self.arches)}", "bench"),
        ]), timeout=timeout, env=self.gpg.env if self.gpg else None)

    def add(self, root: Path, new: Path, *, timeout: float) -> Run:
        # aptly 1.5's publish update has no -acquire-by-hash: the published repository keeps
        # the one given to publish repo (the untimed checks make sure the new by-hash is there)
        return timed(" && ".join([
            self._cmd(root, "repo", "add", "bench", str(new)),
            self._cmd(root, "publish", "update", *self._sign(), "-skip-contents", "stable"),
        ]), timeout=timeout, env=self.gpg.env if self.gpg else None)

    def dists(self, root: Path) -> Path:
        return root / "root" / "public" / "dists" / "stable"


class RepreproPeer(_AptPeerBase):
    """reprepro: ``includedeb`` of every .deb (through xargs), then of one more; its
    conf/distributions has ``SignWith: <the demo key>`` when ``gpg``; ``matched``: signed, and
    ``DebIndices: Packages Release . .gz .xz`` (Packages.xz too, as repobuild writes; the
    default exports Packages and .gz only, and reprepro 5.3 writes no by-hash)."""

    TOOL, RANK = "reprepro", 1
    MATCH = ".xz like repobuild"
    DEB_INDICES = "Packages Release . .gz .xz"
    FOLDERS = ("reprepro", "reprepro-signed", "reprepro-xz")
    COLD = "reprepro includedeb N (+ export)"
    ADD = "reprepro includedeb 1 (+ export)"
    NOTES = ("no SignWith: no InRelease, no Release.gpg", "InRelease + Release.gpg (SignWith)",
             f"DebIndices: {DEB_INDICES} (no by-hash in reprepro)")
    XZ_WHEN_MATCHED, BY_HASH_WHEN_MATCHED = True, False

    def prepare(self, base: Path) -> None:
        (base / "conf").mkdir(parents=True)
        sign = f"SignWith: {self.gpg.fingerprint}\n" if self.gpg else ""
        indices = f"DebIndices: {self.DEB_INDICES}\n" if self.matched else ""
        (base / "conf" / "distributions").write_text(
            "Codename: stable\nSuite: stable\nComponents: main\n"
            f"Architectures: {' '.join(self.arches)}\n{sign}{indices}"
        )

    def cold(self, base: Path, *, timeout: float) -> Run:
        return timed(f"find {shlex.quote(str(self.deb_dir))} -name '*.deb' -print0 | xargs -0 -r "
                     f"{shlex.quote(self.exe)} -b {shlex.quote(str(base))} --silent "
                     "includedeb stable", timeout=timeout, env=self.gpg.env if self.gpg else None)

    def add(self, base: Path, new: Path, *, timeout: float) -> Run:
        return timed([self.exe, "-b", str(base), "--silent", "includedeb", "stable", str(new)],
                     timeout=timeout, env=self.gpg.env if self.gpg else None)

    def dists(self, base: Path) -> Path:
        return base / "dists" / "stable"


AptPeer = AptlyPeer | RepreproPeer


def apt_index(dists: Path) -> dict[str, int]:
    """``{"main/binary-amd64": number of packages}`` for each Packages file below ``dists``."""
    found = {}
    for packages in sorted(dists.glob("*/binary-*/Packages")):
        text = packages.read_text(encoding="utf-8", errors="replace")
        found[f"{packages.parent.parent.name}/{packages.parent.name}"] = sum(
            1 for line in text.splitlines() if line.startswith("Package:"))
    return found


def xz_missing(dists: Path, folders: Iterable[str]) -> str | None:
    """None when each ``<folder>/Packages.xz`` below ``dists`` is there, lists what Packages
    does and is listed in Release; else what is wrong."""
    release = _release_text(dists)
    wrong = []
    for folder in folders:
        xz, plain = dists / folder / "Packages.xz", dists / folder / "Packages"
        if not xz.is_file():
            wrong.append(f"no {folder}/Packages.xz")
            continue
        try:
            same = lzma.decompress(xz.read_bytes()) == plain.read_bytes()
        except (lzma.LZMAError, OSError) as exc:
            wrong.append(f"{folder}/Packages.xz: {exc}")
            continue
        if not same:
            wrong.append(f"{folder}/Packages.xz is not Packages, compressed")
        if not _release_lists(release, f"{folder}/Packages.xz"):
            wrong.append(f"Release does not list {folder}/Packages.xz")
    return "; ".join(wrong) or None


def by_hash_missing(dists: Path, folders: Iterable[str]) -> str | None:
    """None when Release says ``Acquire-By-Hash: yes`` and each Packages file (plain and
    compressed) of each folder below ``dists`` has its identical ``by-hash/SHA256/<sha256>``
    copy; else what is wrong."""
    wrong = []
    if "Acquire-By-Hash: yes" not in _release_text(dists).splitlines():
        wrong.append("Release has no 'Acquire-By-Hash: yes'")
    for folder in folders:
        indexes = sorted(p for p in (dists / folder).glob("Packages*") if p.is_file())
        if not indexes:
            wrong.append(f"no {folder}/Packages*")
        for index in indexes:
            data = index.read_bytes()
            copy = dists / folder / "by-hash" / "SHA256" / hashlib.sha256(data).hexdigest()
            if not copy.is_file() or copy.read_bytes() != data:
                wrong.append(f"no by-hash/SHA256 copy of {folder}/{index.name}")
    return "; ".join(wrong) or None


def _release_text(dists: Path) -> str:
    try:
        return (dists / "Release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _release_lists(release: str, path: str) -> bool:
    """Does Release list ``path`` (a `` <hash> <size> <path>`` line)?"""
    return any(line.startswith(" ") and line.split()[-1:] == [path]
               for line in release.splitlines())


def copier(flag: str, folder: Path, t: float) -> Callable[[Path], Run]:
    """``cp FLAG folder DEST`` for a DEST given later."""
    return lambda dest: timed(["cp", flag, str(folder), str(dest)], timeout=t)


def peer(bench: Bench, label: str, subset: str, floor: float, floor_name: str,
         fn: Callable[[], Run]) -> bool:
    try:
        run = fn()
    except CommandFailed as exc:
        bench.failed(label, subset, exc)
        return False
    bench.add(Row(label, subset, run, floor_name, floor))
    return True


def profile(bench: Bench, peers: Peers, space: Scratch, src: Path, keys: str, t: float) -> None:
    """One more cold build (copy) under py-spy; the hot spots go to the notes."""
    if not peers.has("py-spy"):
        bench.notes.append(f"no profile: py-spy {peers.missing.get('py-spy', 'missing')}")
        return
    out, raw = space.fresh("out-profile"), space.path / "profile.txt"
    settle()
    cmd = [peers.tools["py-spy"], "record", "--threads", "--rate", "100", "--format", "raw",
           "--output", str(raw), "--",
           *common.repobuild_cmd("build", src, "--out", out, "--keys", keys)]
    try:
        timed(cmd, timeout=t)
    except CommandFailed as exc:
        bench.notes.append(f"py-spy failed: {exc.run.why()}")
        return
    finally:
        space.discard(out)
    prof = common.read_py_spy_raw(raw)
    lines = ["py-spy, one more cold build (copy), 100 samples/s, innermost repobuild frame "
             "(→ the function it waits in): " + line for line in prof.lines()]
    print("\n".join(lines), flush=True)
    bench.notes.extend(lines)


if __name__ == "__main__":
    sys.exit(main())
