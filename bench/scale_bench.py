"""repobuild at scale: many tiny artifacts. Does a build complete, how long, how much memory?

    python bench/scale_bench.py [N=100000] [--avg-kb 2] [--timeout 3600] [--keep]

With tiny files the hashing floor is near zero, so what shows is the per-artifact cost (Python
work, metadata, index rendering, signing of the whole index) and how memory grows with N. Times
a cold build (copy), a rebuild with nothing changed (the build cache) and a verify, each with
its peak RSS, against openssl + cp -r over the same files. The table is appended to
bench/RESULTS.md.
"""

from __future__ import annotations

import sys
from functools import partial

import common
from common import CommandFailed, Row, rmtree, timed


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__ or "", default_n=100_000, default_kb=2.0)
    args = common.parse(ap, argv)
    corpus, scratch, bench = common.start(args, "scale-bench")
    out = scratch / "out"
    t = args.timeout
    completed = False
    try:
        src = corpus.root
        timed(common.openssl_cmd(src), timeout=t)  # warm the page cache; not counted
        ossl = bench.measure(None, partial(timed, common.openssl_cmd(src), timeout=t))
        bench.add(Row("openssl dgst -sha256, 2 procs", "all", ossl))
        dest = scratch / "cp"
        cp = bench.measure(partial(rmtree, dest),
                           partial(timed, ["cp", "-r", str(src), str(dest)], timeout=t))
        rmtree(dest)
        bench.add(Row("cp -r", "all", cp))
        floor, floor_name = ossl.seconds + cp.seconds, "openssl + cp -r"
        build = common.repobuild_cmd("build", src, "--out", out, "--keys", args.keys)
        try:
            run = bench.measure(partial(rmtree, out), partial(timed, build, timeout=t))
        except CommandFailed as exc:
            bench.failed("repobuild build, cold (copy)", "all", exc)
        else:
            completed = True
            per = 1000 * run.seconds / args.n
            bench.add(Row("repobuild build, cold (copy)", "all", run, floor_name, floor,
                          f"completed; peak RSS {run.rss_mb:.0f} MB; {per:.2f} ms/artifact"))
            verify = common.repobuild_cmd("verify", out, "--trust", args.trust)
            try:
                run = bench.measure(None, partial(timed, verify, timeout=t))
                bench.add(Row("repobuild verify", "OUT", run, "openssl all", ossl.seconds,
                              f"peak RSS {run.rss_mb:.0f} MB"))
            except CommandFailed as exc:
                bench.failed("repobuild verify", "OUT", exc)
            try:
                run = bench.measure(None, partial(timed, build, timeout=t))
                bench.add(Row("repobuild rebuild, nothing changed", "all", run, floor_name,
                              floor, f"peak RSS {run.rss_mb:.0f} MB"))
            except CommandFailed as exc:
                bench.failed("repobuild rebuild, nothing changed", "all", exc)
            else:
                bench.check("verify after the rebuild", verify, t)
    finally:
        if not args.keep:
            rmtree(scratch)
    if not completed:
        bench.notes.insert(0, f"the cold build of {args.n} artifacts did NOT complete")
    common.report("scale_bench", args, corpus, bench)
    return 0 if completed and not bench.figures_failed else 1


if __name__ == "__main__":
    sys.exit(main())
