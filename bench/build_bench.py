"""repobuild build against its floors and its peers, side by side in one run.

    python bench/build_bench.py N [--keep] [--avg-kb 500] [--seed 1] [--repeat 1] [--profile]

Generates (or reuses, under bench/work/) a corpus of N artifacts, then times on the same,
page-cache-warm files: the hashing floor (openssl, 2 processes), cp -r, repobuild cold builds
(copy and --link), repobuild rebuilds (nothing changed; one .deb added), apt-ftparchive,
aptly, reprepro (debs only), simple503 and dumb-pypi (wheels only). Each figure is printed with
its ratio to the floor of the same work, and the table is appended to bench/RESULTS.md.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
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
    try:
        run_all(bench, corpus, peers, space, args, added)
    finally:
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
    args: argparse.Namespace,
    added: list[Path],
) -> None:
    src = corpus.root
    scratch = space.path
    deb_dir, wheel_dir = src / "deb", src / "wheel"
    t = args.timeout
    size = {"all": corpus.total_bytes, "deb": common.files_bytes(deb_dir)[1],
            "wheel": common.files_bytes(wheel_dir)[1]}
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

    aptly_root = scratch / "aptly"

    def aptly(root: Path, *a: str) -> str:
        return shlex.join([peers.tools["aptly"], f"-config={root / 'aptly.conf'}", *a])

    aptly_ok = False
    if peers.has("aptly"):
        def aptly_cmd(root: Path) -> str:
            return " && ".join([
                aptly(root, "repo", "create", "-distribution=stable", "-component=main",
                      "bench"),
                aptly(root, "repo", "add", "bench", str(deb_dir)),
                aptly(root, "publish", "repo", "-skip-signing", "-skip-contents",
                      "-architectures=amd64", "bench"),
            ])

        def aptly_prepare(root: Path) -> None:
            root.mkdir()
            (root / "aptly.conf").write_text(
                '{"rootDir": "%s", "gpgDisableSign": true, "gpgDisableVerify": true}\n'
                % (root / "root")
            )

        def aptly_cold() -> Run:
            nonlocal aptly_root
            run, aptly_root = bench.measure_fresh(
                space, "aptly", lambda r: timed(aptly_cmd(r), timeout=t), need=size["deb"],
                prepare=aptly_prepare)
            return run

        aptly_ok = peer(bench, "aptly repo create + add N + publish", "deb", deb_copy,
                        "openssl + cp -r deb", aptly_cold)
    else:
        bench.missing("aptly", "deb", peers.missing["aptly"])

    repre = scratch / "reprepro"
    reprepro_ok = False
    if peers.has("reprepro"):
        def reprepro_prepare(base: Path) -> None:
            (base / "conf").mkdir(parents=True)
            (base / "conf" / "distributions").write_text(
                "Codename: stable\nSuite: stable\nComponents: main\nArchitectures: amd64\n"
            )

        def rp_cmd(base: Path) -> str:
            return (f"find {shlex.quote(str(deb_dir))} -name '*.deb' -print0 | xargs -0 -r "
                    f"{shlex.quote(peers.tools['reprepro'])} -b {shlex.quote(str(base))} "
                    "--silent includedeb stable")

        def reprepro_cold() -> Run:
            nonlocal repre
            run, repre = bench.measure_fresh(
                space, "reprepro", lambda b: timed(rp_cmd(b), timeout=t), need=size["deb"],
                prepare=reprepro_prepare)
            return run

        reprepro_ok = peer(bench, "reprepro includedeb N (+ export)", "deb", deb_copy,
                           "openssl + cp -r deb", reprepro_cold)
    else:
        bench.missing("reprepro", "deb", peers.missing["reprepro"])

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
    if aptly_ok:
        def aptly_add(new: Path) -> Run:
            return timed(aptly(aptly_root, "repo", "add", "bench", str(new)) + " && " + aptly(
                aptly_root, "publish", "update", "-skip-signing", "-skip-contents", "stable"),
                timeout=t)

        incremental.append(("aptly repo add 1 + publish update", "deb", deb_copy,
                            "openssl + cp -r deb", aptly_add))
    if reprepro_ok:
        def reprepro_add(new: Path) -> Run:
            return timed([peers.tools["reprepro"], "-b", str(repre), "--silent", "includedeb",
                          "stable", str(new)], timeout=t)

        incremental.append(("reprepro includedeb 1 (+ export)", "deb", deb_copy,
                            "openssl + cp -r deb", reprepro_add))
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
            bench.add(Row(label, subset, run, fl_name, fl, note))
    if runs.get("repobuild rebuild, +1 deb"):
        bench.check("repobuild verify after the rebuilds",
                    common.repobuild_cmd("verify", out_copy, "--trust", args.trust), t)
    space.discard(out_copy)

    if args.profile:
        profile(bench, peers, space, src, keys, t)


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
