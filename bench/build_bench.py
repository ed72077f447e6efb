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
from common import Bench, CommandFailed, Peers, Row, Run, best_of, rmtree, settle, timed


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
    try:
        run_all(bench, corpus, peers, scratch, args, added)
    finally:
        for path in added:
            path.unlink(missing_ok=True)
        if not args.keep:
            rmtree(scratch)
    common.report("build_bench", args, corpus, bench,
                  notes=bench.notes + [f"{k}: {v}" for k, v in sorted(peers.missing.items())])
    return 1 if bench.figures_failed else 0


def run_all(
    bench: Bench,
    corpus: corpus_mod.Corpus,
    peers: Peers,
    scratch: Path,
    args: argparse.Namespace,
    added: list[Path],
) -> None:
    src = corpus.root
    deb_dir, wheel_dir = src / "deb", src / "wheel"
    t = args.timeout

    # ---- floors ---------------------------------------------------------------------------
    timed(common.openssl_cmd(src), timeout=t)  # warm the page cache; not counted
    floor: dict[str, float] = {}
    floors = Bench(max(3, bench.repeat))  # cheap and noisy: always best of 3 at least
    for subset, folder in (("all", src), ("deb", deb_dir), ("wheel", wheel_dir)):
        run = floors.measure(None, partial(timed, common.openssl_cmd(folder), timeout=t))
        floor[f"openssl {subset}"] = run.seconds
        bench.add(Row(f"openssl dgst -sha256, 2 procs ({subset})", subset, run))
        dest = scratch / f"cp-{subset}"
        run = floors.measure(partial(rmtree, dest),
                             partial(timed, ["cp", "-r", str(folder), str(dest)], timeout=t))
        rmtree(dest)
        floor[f"cp {subset}"] = run.seconds
        bench.add(Row(f"cp -r ({subset})", subset, run))
    dest = scratch / "cp-link"
    run = floors.measure(lambda: rmtree(dest),
                         lambda: timed(["cp", "-rl", str(src), str(dest)], timeout=t))
    rmtree(dest)
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
    out_copy, out_link = scratch / "out-copy", scratch / "out-link"

    def build(out: Path, *extra: str) -> Run:
        return timed(common.repobuild_cmd("build", src, "--out", out, "--keys", keys, *extra),
                     timeout=t)

    try:
        run = bench.measure(lambda: rmtree(out_copy), lambda: build(out_copy))
        bench.add(Row("repobuild build, cold (copy)", "all", run, full_name, full,
                      f"peak RSS {run.rss_mb:.0f} MB"))
    except CommandFailed as exc:
        bench.failed("repobuild build, cold (copy)", "all", exc)
        return
    try:
        run = bench.measure(lambda: rmtree(out_link), lambda: build(out_link, "--link"))
        bench.add(Row("repobuild build --link, cold", "all", run, "openssl + cp -rl",
                      link_floor, f"peak RSS {run.rss_mb:.0f} MB"))
    except CommandFailed as exc:
        bench.failed("repobuild build --link, cold", "all", exc)
    finally:
        rmtree(out_link)
    try:
        run = bench.measure(None, lambda: build(out_copy))
        bench.add(Row("repobuild rebuild, nothing changed", "all", run, full_name, full,
                      f"peak RSS {run.rss_mb:.0f} MB"))
    except CommandFailed as exc:
        bench.failed("repobuild rebuild, nothing changed", "all", exc)

    # ---- peers, initial state (the N debs / wheels) ----------------------------------------
    ftp = scratch / "apt-ftparchive"
    ftp.mkdir()
    ftp_cmd = (f"cd {shlex.quote(str(src))} && apt-ftparchive packages deb > "
               f"{ftp}/Packages && apt-ftparchive release {ftp} > {ftp}/Release.new")
    db_cmd = (f"cd {shlex.quote(str(src))} && apt-ftparchive --db {ftp}/cache.db packages deb > "
              f"{ftp}/Packages.db && apt-ftparchive release {ftp} > {ftp}/Release.new")
    if peers.has("apt-ftparchive"):
        peer(bench, "apt-ftparchive packages + release", "deb", deb_floor, "openssl deb",
             lambda: bench.measure(None, lambda: timed(ftp_cmd, timeout=t)))
        peer(bench, "apt-ftparchive --db, cold", "deb", deb_floor, "openssl deb",
             lambda: bench.measure(lambda: rmtree(ftp / "cache.db"),
                                   lambda: timed(db_cmd, timeout=t)))
    else:
        bench.missing("apt-ftparchive", "deb", peers.missing["apt-ftparchive"])

    aptly_root = scratch / "aptly"
    aptly_conf = aptly_root / "aptly.conf"

    def aptly(*a: str) -> str:
        return shlex.join([peers.tools["aptly"], f"-config={aptly_conf}", *a])

    aptly_ok = False
    if peers.has("aptly"):
        aptly_cmd = " && ".join([
            aptly("repo", "create", "-distribution=stable", "-component=main", "bench"),
            aptly("repo", "add", "bench", str(deb_dir)),
            aptly("publish", "repo", "-skip-signing", "-skip-contents",
                  "-architectures=amd64", "bench"),
        ])

        def aptly_reset() -> None:
            rmtree(aptly_root)
            aptly_root.mkdir()
            aptly_conf.write_text(
                '{"rootDir": "%s", "gpgDisableSign": true, "gpgDisableVerify": true}\n'
                % (aptly_root / "root")
            )

        aptly_ok = peer(bench, "aptly repo create + add N + publish", "deb", deb_copy,
                        "openssl + cp -r deb",
                        lambda: bench.measure(aptly_reset, lambda: timed(aptly_cmd, timeout=t)))
    else:
        bench.missing("aptly", "deb", peers.missing["aptly"])

    repre = scratch / "reprepro"
    reprepro_ok = False
    if peers.has("reprepro"):
        def reprepro_reset() -> None:
            rmtree(repre)
            (repre / "conf").mkdir(parents=True)
            (repre / "conf" / "distributions").write_text(
                "Codename: stable\nSuite: stable\nComponents: main\nArchitectures: amd64\n"
            )

        rp_cmd = (f"find {shlex.quote(str(deb_dir))} -name '*.deb' -print0 | xargs -0 -r "
                  f"{shlex.quote(peers.tools['reprepro'])} -b {shlex.quote(str(repre))} "
                  "--silent includedeb stable")
        reprepro_ok = peer(bench, "reprepro includedeb N (+ export)", "deb", deb_copy,
                           "openssl + cp -r deb",
                           lambda: bench.measure(reprepro_reset,
                                                 lambda: timed(rp_cmd, timeout=t)))
    else:
        bench.missing("reprepro", "deb", peers.missing["reprepro"])

    if peers.has("simple503"):
        s503 = scratch / "simple503"
        cmd = [peers.tools["simple503"], "--copy", "--extract-metadata", str(wheel_dir),
               str(s503)]
        peer(bench, "simple503 --copy --extract-metadata", "wheel", whl_copy,
             "openssl + cp -r wheel",
             lambda: bench.measure(lambda: rmtree(s503), lambda: timed(cmd, timeout=t)))
        rmtree(s503)
    else:
        bench.missing("simple503", "wheel", peers.missing["simple503"])

    if peers.has("dumb-pypi"):
        dp = scratch / "dumb-pypi"
        listing = scratch / "wheels.txt"
        listing.write_text("".join(p.name + "\n" for p in corpus.paths("wheel")))
        cmd = [peers.tools["dumb-pypi"], "--package-list", str(listing), "--output-dir",
               str(dp), "--packages-url", "../../wheel/", "--no-generate-timestamp"]
        peer(bench, "dumb-pypi (names only, reads no file)", "wheel", whl_floor,
             "openssl wheel",
             lambda: bench.measure(lambda: rmtree(dp), lambda: timed(cmd, timeout=t)))
        rmtree(dp)
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
                            lambda _new: timed(db_cmd, timeout=t)))
    if aptly_ok:
        def aptly_add(new: Path) -> Run:
            return timed(aptly("repo", "add", "bench", str(new)) + " && " + aptly(
                "publish", "update", "-skip-signing", "-skip-contents", "stable"), timeout=t)

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
    rmtree(out_copy)

    if args.profile:
        profile(bench, peers, scratch, src, keys, t)


def peer(bench: Bench, label: str, subset: str, floor: float, floor_name: str,
         fn: Callable[[], Run]) -> bool:
    try:
        run = fn()
    except CommandFailed as exc:
        bench.failed(label, subset, exc)
        return False
    bench.add(Row(label, subset, run, floor_name, floor))
    return True


def profile(bench: Bench, peers: Peers, scratch: Path, src: Path, keys: str, t: float) -> None:
    """One more cold build (copy) under py-spy; the hot spots go to the notes."""
    if not peers.has("py-spy"):
        bench.notes.append(f"no profile: py-spy {peers.missing.get('py-spy', 'missing')}")
        return
    out, raw = scratch / "out-profile", scratch / "profile.txt"
    rmtree(out)
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
        rmtree(out)
    prof = common.read_py_spy_raw(raw)
    lines = ["py-spy, one more cold build (copy), 100 samples/s, innermost repobuild frame "
             "(→ the function it waits in): " + line for line in prof.lines()]
    print("\n".join(lines), flush=True)
    bench.notes.extend(lines)


if __name__ == "__main__":
    sys.exit(main())
