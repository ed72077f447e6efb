"""repobuild sync over loopback: a full mirror, a no-op and a repair, next to their floors.

    python bench/sync_bench.py N [--avg-kb 500] [--seed 1] [--repeat 1] [--keep]

Builds the corpus of N artifacts (cached under bench/work/) into a folder with --link (set-up),
serves it with `repobuild serve --port 0 --quiet` on 127.0.0.1 and times, end to end (process
start included), `repobuild sync URL --to MIRROR --trust TRUST`:

- full: into an empty MIRROR; its floor is what any mirror has to do with the same bytes here,
  hashing them (openssl, two processes) and writing them (cp -r);
- no-op: again, upstream unchanged (best of max(3, R)); its floor is starting Python and one
  stat of every file of MIRROR (find -printf %s). The issue's target at N=10,000: < 1 s;
- repair: one blob deleted from MIRROR and one page cut in half, then sync (both fetched again).

`repobuild verify MIRROR` runs once, untimed, as a check. The table is appended to
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import common
from common import CommandFailed, Row, rmtree, timed

NOOP_TARGET_N = 10_000
NOOP_TARGET_S = 1.0


def serve(out: Path, timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """`repobuild serve OUT --port 0 --quiet` and the URL it prints once it listens."""
    log = out.parent / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            common.repobuild_cmd("serve", out, "--port", "0", "--quiet"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r" at (http://\S+/) ", log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"repobuild serve did not start: {log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sync_report(run: common.Run) -> dict[str, object]:
    try:
        doc = json.loads(run.stdout)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def damage(mirror: Path) -> None:
    """Delete the largest blob and cut simple/index.html in half."""
    index = json.loads((mirror / "index.json").read_bytes())
    blob = max(index["artifacts"], key=lambda a: a["size"])["blob"]
    (mirror / blob).unlink()
    page = mirror / "simple" / "index.html"
    with open(page, "r+b") as fh:
        fh.truncate(page.stat().st_size // 2)


def main(argv: list[str] | None = None) -> int:
    ap = common.arg_parser(__doc__ or "")
    args = common.parse(ap, argv)
    corpus, scratch, bench = common.start(args, "sync-bench")
    out, mirror = scratch / "out", scratch / "mirror"
    t = args.timeout
    server: subprocess.Popen[bytes] | None = None
    try:
        build = common.repobuild_cmd("build", corpus.root, "--out", out, "--keys", args.keys,
                                     "--link")
        try:  # signed now (not at a $SOURCE_DATE_EPOCH long past): the mirror checks expiry
            run = timed(build, timeout=t, env={"SOURCE_DATE_EPOCH": ""})
        except CommandFailed as exc:
            bench.failed("repobuild build --link (set-up)", "all", exc)
            raise SystemExit(1) from None
        bench.add(Row("repobuild build --link (set-up)", "all", run,
                      note=f"peak RSS {run.rss_mb:.0f} MB"))
        files, size = common.files_bytes(out)
        print(f"OUT: {files} files, {size / 1e6:,.1f} MB", flush=True)
        server, url = serve(out)
        print(f"serving OUT at {url}", flush=True)

        # floors: hashing and writing the bytes; starting Python and a stat per file
        timed(common.openssl_cmd(out), timeout=t)  # warm the page cache; not counted
        hashing = bench.measure(None, partial(timed, common.openssl_cmd(out), timeout=t))
        copy_to = scratch / "copy"
        copying = bench.measure(
            lambda: rmtree(copy_to),
            partial(timed, f"cp -r {shlex.quote(str(out))} {shlex.quote(str(copy_to))}",
                    timeout=t))
        rmtree(copy_to)
        full_floor = hashing.seconds + copying.seconds
        bench.add(Row(f"openssl dgst -sha256, 2 procs (OUT, {files} files)", "OUT", hashing))
        bench.add(Row("cp -r (OUT)", "OUT", copying))

        sync = common.repobuild_cmd("sync", url, "--to", mirror, "--trust", args.trust,
                                    "--json")
        try:
            run = bench.measure(lambda: rmtree(mirror), partial(timed, sync, timeout=t))
        except CommandFailed as exc:
            bench.failed("repobuild sync, full", "OUT", exc)
            raise SystemExit(1) from None
        got = sync_report(run)
        moved = got.get("bytes")
        moved = moved if isinstance(moved, int) else 0
        bench.add(Row("repobuild sync, full (empty MIRROR)", "OUT", run, "openssl + cp -r",
                      full_floor, f"{moved / 1e6 / run.seconds:,.1f} MB/s, "
                      f"{got.get('fetched')} files, peak RSS {run.rss_mb:.0f} MB"))

        start = bench.measure(None, partial(timed, [sys.executable, "-I", "-c", "pass"]))
        stat_all = f"find {shlex.quote(str(mirror))} -type f -printf '%s\\n' > /dev/null"
        stats = bench.measure(None, partial(timed, stat_all, timeout=t))
        noop_floor = start.seconds + stats.seconds
        bench.add(Row("python -c pass", "-", start))
        bench.add(Row(f"find -printf %s (a stat per file, {files} files)", "MIRROR", stats))
        try:
            runs = []
            for _ in range(max(3, args.repeat)):
                common.settle()
                runs.append(timed(sync, timeout=t))
            run = common.best_of(runs)
        except CommandFailed as exc:
            bench.failed("repobuild sync, no-op", "MIRROR", exc)
        else:
            got = sync_report(run)
            note = f"noop={got.get('noop')}, peak RSS {run.rss_mb:.0f} MB"
            if args.n >= NOOP_TARGET_N:
                verdict = "met" if run.seconds < NOOP_TARGET_S else "MISSED"
                note += f"; target < {NOOP_TARGET_S:g} s at N={NOOP_TARGET_N:,}: {verdict}"
            bench.add(Row("repobuild sync, no-op (upstream unchanged)", "MIRROR", run,
                          "python + find", noop_floor, note))

        try:
            run = bench.measure(partial(damage, mirror), partial(timed, sync, timeout=t))
        except CommandFailed as exc:
            bench.failed("repobuild sync, repair", "MIRROR", exc)
        else:
            got = sync_report(run)
            bench.add(Row("repobuild sync, repair (1 blob deleted, 1 page cut)", "MIRROR",
                          run, "python + find", noop_floor,
                          f"fetched {got.get('fetched')} files"))
        bench.check("repobuild verify MIRROR",
                    common.repobuild_cmd("verify", mirror, "--trust", args.trust), t)
    finally:
        if server is not None:
            stop(server)
        if not args.keep:
            rmtree(scratch)
    common.report("sync_bench", args, corpus, bench,
                  title_extra=f"; no-op best of {max(3, bench.repeat)}")
    return 1 if bench.figures_failed or bench.checks_failed else 0


if __name__ == "__main__":
    sys.exit(main())
