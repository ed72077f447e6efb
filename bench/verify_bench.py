"""repobuild verify of a built folder against the hashing floor, in one run.

    python bench/verify_bench.py N [--avg-kb 500] [--seed 1] [--repeat 1] [--keep]

Builds the corpus of N artifacts (cached under bench/work/) into a folder with --link (the
build is timed but is not the point), then times `repobuild verify OUT --trust TRUST` against
openssl hashing every file of OUT in two processes: verify has to read and hash every byte of
the tree, so that is its floor. With --repeat R the two alternate (openssl, verify, openssl,
verify, ...), so that both see the same moments of a busy machine; the table shows the best of
each, and a note the ratio of each round. The table is appended to bench/RESULTS.md.
"""

from __future__ import annotations

import statistics
import sys

import common
from common import CommandFailed, Row, Run, best_of, rmtree, settle, timed


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__ or "")
    args = common.parse(ap, argv)
    corpus, scratch, bench = common.start(args, "verify-bench")
    out = scratch / "out"
    t = args.timeout
    try:
        build = common.repobuild_cmd("build", corpus.root, "--out", out, "--keys", args.keys,
                                     "--link")
        try:
            run = timed(build, timeout=t)
        except CommandFailed as exc:
            bench.failed("repobuild build --link (set-up)", "all", exc)
        else:
            bench.add(Row("repobuild build --link (set-up)", "all", run,
                          note=f"peak RSS {run.rss_mb:.0f} MB"))
            files, size = common.files_bytes(out)
            print(f"OUT: {files} files, {size / 1e6:,.1f} MB", flush=True)
            timed(common.openssl_cmd(out), timeout=t)  # warm the page cache; not counted
            verify = common.repobuild_cmd("verify", out, "--trust", args.trust)
            floors: list[Run] = []
            runs: list[Run] = []
            failed: CommandFailed | None = None
            for _ in range(bench.repeat):
                settle()
                floors.append(timed(common.openssl_cmd(out), timeout=t))
                if failed is None:
                    settle()
                    try:
                        runs.append(timed(verify, timeout=t))
                    except CommandFailed as exc:
                        failed = exc
            floor = best_of(floors)
            bench.add(Row(f"openssl dgst -sha256, 2 procs (OUT, {files} files)", "OUT",
                          floor))
            if failed is not None:
                bench.failed("repobuild verify", "OUT", failed)
            else:
                run = best_of(runs)
                bench.add(Row("repobuild verify", "OUT", run, "openssl OUT", floor.seconds,
                              f"peak RSS {run.rss_mb:.0f} MB"))
                ratios = [v.seconds / f.seconds for f, v in zip(floors, runs, strict=True)]
                if len(ratios) > 1:
                    bench.notes.append(
                        "verify / openssl in each round (openssl right before verify): "
                        + ", ".join(f"{r:.2f}" for r in ratios)
                        + f"; median {statistics.median(ratios):.2f}"
                    )
    finally:
        if not args.keep:
            rmtree(scratch)
    common.report("verify_bench", args, corpus, bench)
    return 1 if bench.figures_failed else 0


if __name__ == "__main__":
    sys.exit(main())
