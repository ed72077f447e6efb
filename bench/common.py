"""Shared pieces of the benchmark scripts: machine line, timed children, peers, results file."""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import corpus as corpus_mod

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
RESULTS = BENCH / "RESULTS.md"
KEYS = ROOT / "keys.example"
TRUST = KEYS / "trust.json"
PEERS_VENV = WORK / "peers-venv"


# -- the machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_line() -> str:
    return (
        f"{nproc()} cores ({cpu_model()}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def load_line() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


# -- running things -------------------------------------------------------------------------


@dataclass
class Run:
    """One child process: wall time, its peak RSS (and its waited-for children's), exit code."""

    cmd: str
    seconds: float
    max_rss_kb: int
    returncode: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def rss_mb(self) -> float:
        return self.max_rss_kb / 1024

    def why(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-3:]
        return f"exit {self.returncode}: " + " | ".join(tail)


class CommandFailed(RuntimeError):
    def __init__(self, run: Run) -> None:
        super().__init__(f"{run.cmd}: {run.why()}")
        self.run = run


def timed(
    cmd: Sequence[str] | str,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> Run:
    """Run ``cmd`` (a list, or a string for ``bash -c``) and measure it.

    The wall time is taken around fork and ``wait4``; the peak RSS is the ``ru_maxrss`` that
    ``wait4`` reports for that very child (the largest of it and the children it waited for),
    so it is exact per command, unlike deltas of ``getrusage(RUSAGE_CHILDREN)``, a maximum over
    every child this process ever had. ``stdout`` sends the output to a file (else kept, cut to
    the last 64 KB); a timeout kills the child's whole process group.
    """
    argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    shown = cmd if isinstance(cmd, str) else shlex.join(argv)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out_tmp:
        out_fh = open(stdout, "wb") if stdout is not None else out_tmp  # noqa: SIM115
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(
                argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=out_fh,
                stderr=err, start_new_session=True,
            )
            expired = threading.Event()

            def kill() -> None:
                expired.set()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            timer = threading.Timer(timeout, kill) if timeout else None
            if timer is not None:
                timer.start()
            try:
                _pid, status, usage = os.wait4(proc.pid, 0)
            finally:
                if timer is not None:
                    timer.cancel()
            seconds = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if stdout is not None:
                out_fh.close()
        err.seek(0)
        errors = err.read()[-65536:].decode("utf-8", "replace")
        output = ""
        if stdout is None:
            out_tmp.seek(0, os.SEEK_END)
            size = out_tmp.tell()
            out_tmp.seek(max(0, size - 65536))
            output = out_tmp.read().decode("utf-8", "replace")
    run = Run(shown, seconds, int(usage.ru_maxrss), proc.returncode, output, errors,
              expired.is_set())
    if check and not run.ok:
        raise CommandFailed(run)
    return run


def best_of(runs: list[Run]) -> Run:
    """The fastest run, carrying the largest peak RSS of all of them."""
    best = min(runs, key=lambda r: r.seconds)
    return Run(best.cmd, best.seconds, max(r.max_rss_kb for r in runs), best.returncode,
               best.stdout, best.stderr, best.timed_out)


def rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


class Scratch:
    """A bench run's scratch folder, where no big tree is deleted right before a timed step.

    ext4's inode allocator skips inodes freed in the last 60-300 s (``find_inode_bit`` →
    ``recently_deleted``): creating 40,000 files right after ``rm -rf`` of 40,000 others spent
    97 % of its time in the kernel (a ``repobuild build --link`` took 13-15 s, not 5.5 s), and
    ``cp -r`` is hit the same way. So every measured run writes into a folder name never used
    before (:meth:`fresh`), trees done with are renamed into ``.trash`` (:meth:`discard`, one
    rename) and the trash is deleted only after the last timed step (:meth:`empty`). When the
    disk runs short (:meth:`room`), the trash's files are cut to 0 bytes: that frees their
    blocks but not their inodes.
    """

    TRASH = ".trash"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trash = path / self.TRASH
        self._used: dict[str, int] = {}
        self.notes: list[str] = []

    def fresh(self, name: str) -> Path:
        """``<scratch>/<name>-<k>`` for the next k never used in this run (not created)."""
        while True:
            k = self._used[name] = self._used.get(name, 0) + 1
            path = self.path / f"{name}-{k}"
            if not os.path.lexists(path):
                return path

    def discard(self, path: Path) -> None:
        """Move ``path`` (if there) into the trash: a rename, nothing freed yet."""
        if not os.path.lexists(path):
            return
        self.trash.mkdir(exist_ok=True)
        k = 0
        while os.path.lexists(dest := self.trash / f"{path.name}.{k}"):
            k += 1
        os.rename(path, dest)

    def shrink(self) -> int:
        """Cut every regular file in the trash that has no other name to 0 bytes; return the
        bytes freed. Files with more than one link (hard links into the corpus: ``cp -rl``,
        ``--link``, aptly's pool) are left alone."""
        freed = 0
        for dirpath, _dirs, files in os.walk(self.trash):
            for name in files:
                try:
                    fd = os.open(os.path.join(dirpath, name), os.O_WRONLY | os.O_NOFOLLOW)
                except OSError:  # a symlink, a socket…
                    continue
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size:
                        os.ftruncate(fd, 0)
                        freed += st.st_blocks * 512
                finally:
                    os.close(fd)
        return freed

    def room(self, need: int, what: str = "") -> None:
        """Before a timed step that writes about ``need`` bytes: if the disk lacks them (plus
        10 % and 1 GiB), shrink the trash (untimed; then sync). Noted in :attr:`notes`."""
        want = need + need // 10 + (1 << 30)
        free = shutil.disk_usage(self.path).free
        if free >= want or not self.trash.exists():
            return
        freed = self.shrink()
        os.sync()
        text = (f"disk short before {what or 'a timed step'} ({free / 1e9:.1f} GB free, "
                f"{want / 1e9:.1f} GB wanted): cut the trash's files to 0 bytes, "
                f"{freed / 1e9:.1f} GB freed (inodes kept until the end)")
        say(text)
        self.notes.append(text)

    def empty(self) -> None:
        """Delete the trash: only after the last timed step."""
        rmtree(self.trash)


SYNC = True  # --no-sync turns it off


def settle() -> None:
    """Flush dirty pages left by the previous step so that it does not slow the next one."""
    if SYNC:
        os.sync()


def compile_repobuild() -> None:
    """Byte-compile repobuild's modules, as installing it (pip) does: run from a checkout
    where Python writes no bytecode (PYTHONDONTWRITEBYTECODE, as on this machine), every
    timed run would compile them from source again (~0.04 s per command). Compiled in a child
    started as the timed runs are, so that it finds the same repobuild as they do."""
    code = ("import compileall, os, sys, repobuild; sys.exit(not compileall.compile_dir("
            "os.path.dirname(repobuild.__file__), quiet=1))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True)
    if proc.returncode:
        say(f"could not byte-compile repobuild, its runs include compiling it: "
            f"{clip(proc.stderr or proc.stdout)}")


def repobuild_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "repobuild", *map(str, args)]


# -- floors -----------------------------------------------------------------------------------


def openssl_cmd(folder: Path) -> str:
    """SHA-256 of every (non-hidden) file below ``folder``, in two openssl processes."""
    q = shlex.quote(str(folder))
    return (
        f"find {q} -mindepth 1 -name '.*' -prune -o -type f -print0 "
        "| xargs -0 -r -P2 -n 200 openssl dgst -sha256 > /dev/null"
    )


def files_bytes(folder: Path) -> tuple[int, int]:
    """Number and total size of the non-hidden files below ``folder`` (hidden folders skipped)."""
    count = size = 0
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                count += 1
                size += os.stat(os.path.join(dirpath, name)).st_size
    return count, size


# -- peers ------------------------------------------------------------------------------------


@dataclass
class Peers:
    """Which comparison tools are here; ``missing`` says why each absent one is absent."""

    tools: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.tools


APT_PEERS = {"apt-ftparchive": "apt-utils", "aptly": "aptly", "reprepro": "reprepro"}
PIP_PEERS = {"simple503": "simple503", "dumb-pypi": "dumb-pypi", "py-spy": "py-spy"}


def find_peers(*, install: bool, venv: Path = PEERS_VENV, log: bool = True) -> Peers:
    """apt's tools from PATH (apt-get install when missing and allowed, as root), the Python
    ones from a venv of their own (pip install when missing and allowed)."""
    peers = Peers()
    need = [pkg for exe, pkg in APT_PEERS.items() if shutil.which(exe) is None]
    if need and install:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            say(f"installing Debian packages: {' '.join(need)}", log)
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            timed(["apt-get", "update", "-q"], env=env, check=False, timeout=300)
            run = timed(["apt-get", "install", "-y", "-q", "--no-install-recommends", *need],
                        env=env, check=False, timeout=600)
            if not run.ok:
                say(f"apt-get install failed: {run.why()}", log)
        else:
            say(f"missing Debian packages {' '.join(need)} and not root: not installing", log)
    for exe, pkg in APT_PEERS.items():
        found = shutil.which(exe)
        if found:
            peers.tools[exe] = found
        else:
            how = "not installed" + ("" if install else " (--no-install)")
            peers.missing[exe] = f"{how}: apt-get install {pkg}"
    bindir = venv / "bin"
    want = [pkg for exe, pkg in PIP_PEERS.items() if not (bindir / exe).exists()]
    if want and install:
        if not (bindir / "python").exists():
            timed([sys.executable, "-m", "venv", str(venv)], check=False, timeout=300)
        for pkg in want:  # one at a time: one failure does not hide the others
            say(f"pip install {pkg} into {venv}", log)
            run = timed([str(bindir / "python"), "-m", "pip", "install", "-q", pkg],
                        check=False, timeout=600)
            if not run.ok:
                say(f"pip install {pkg} failed: {run.why()}", log)
    for exe, pkg in PIP_PEERS.items():
        if (bindir / exe).exists():
            peers.tools[exe] = str(bindir / exe)
        else:
            how = "not installed" + ("" if install else " (--no-install)")
            peers.missing[exe] = f"{how}: pip install {pkg} into {venv}"
    return peers


def say(text: str, really: bool = True) -> None:
    if really:
        print(f"# {text}", file=sys.stderr, flush=True)


# -- reporting --------------------------------------------------------------------------------


def clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def secs(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def ratio(value: float, floor: float) -> str:
    if floor <= 0:
        return "n/a"
    return f"{value / floor:.2f} ×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def append_results(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    notes: Sequence[str] = (),
    path: Path | None = RESULTS,
) -> str:
    """Append a dated section (title, machine line, table, notes) to ``path``; return it."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"## {title} — {now}", "", f"Machine: {machine_line()}; {load_line()}.", "",
             markdown_table(headers, rows)]
    if notes:
        parts += ["", *(f"- {n}" for n in notes)]
    section = "\n".join(parts) + "\n"
    if path is not None:
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", encoding="utf-8") as fh:
            if new:
                fh.write("# repobuild benchmark results\n\nAppended by the scripts in bench/ "
                         "(see bench/README.md); newest last.\n")
            fh.write("\n" + section)
    return section


def results_path(text: str) -> Path | None:
    """``--results`` value: a path, or ``-`` for none."""
    return None if text == "-" else Path(text)


# -- profiling --------------------------------------------------------------------------------


@dataclass
class Profile:
    """Samples of a ``py-spy record --threads --format raw`` run, main thread apart from the
    others: the main thread's samples follow wall time, the workers' show where reading goes."""

    main_samples: int = 0
    worker_samples: int = 0
    main: list[tuple[str, int]] = field(default_factory=list)
    workers: list[tuple[str, int]] = field(default_factory=list)

    def lines(self, top: int = 8) -> list[str]:
        out = []
        for what, total, spots in (("main thread", self.main_samples, self.main),
                                   ("worker threads", self.worker_samples, self.workers)):
            if not total:
                continue
            shown = "; ".join(f"{where} {100 * n / total:.0f}%" for where, n in spots[:top])
            out.append(f"{what} ({total} samples): {shown}")
        return out


def read_py_spy_raw(path: Path) -> Profile:
    """Rank the places where samples fall: for each stack, the innermost repobuild frame (with
    its line) and, when the stack goes deeper, the function it is in (``→ leaf``)."""
    main: dict[str, int] = {}
    workers: dict[str, int] = {}
    prof = Profile()
    stacks: list[tuple[str, list[str], int]] = []
    main_tids = {"main"}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        tid = "main"
        if frames[0].startswith("thread ("):  # "thread (1234): MainThread"
            head, frames = frames[0], frames[1:]
            tid = head.split("(", 1)[1].split(")", 1)[0]
            if head.endswith("MainThread"):
                main_tids.add(tid)
        if frames:
            stacks.append((tid, frames, int(count_text)))
    for tid, frames, count in stacks:
        ours = [f for f in frames if "repobuild/" in f]
        leaf = frames[-1].partition(" (")[0]
        where = _short(ours[-1]) if ours else _short(frames[-1])
        if ours and ours[-1] != frames[-1]:
            where += f" → {leaf}"
        if tid in main_tids:
            prof.main_samples += count
            main[where] = main.get(where, 0) + count
        else:
            prof.worker_samples += count
            workers[where] = workers.get(where, 0) + count
    prof.main = sorted(main.items(), key=lambda kv: -kv[1])
    prof.workers = sorted(workers.items(), key=lambda kv: -kv[1])
    return prof


def _short(frame: str) -> str:
    """``write (repobuild/store.py:76)`` → ``store.py:76 write``."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit("/", 1)[-1]
    return f"{file} {name}" if file else name


# -- rows of a benchmark ----------------------------------------------------------------------


@dataclass
class Row:
    label: str
    subset: str
    run: Run | None
    floor_name: str = ""
    floor: float = 0.0
    note: str = ""

    def seconds(self) -> str:
        return secs(self.run.seconds) if self.run is not None else "—"

    def ratio(self) -> str:
        if self.run is None or not self.floor_name:
            return ""
        return ratio(self.run.seconds, self.floor)

    def console(self) -> str:
        if self.run is None:
            return f"{self.label:<46} {'—':>9}    {self.note}"
        text = f"{self.label:<46} {self.run.seconds:>7.2f} s"
        if self.floor_name:
            text += f"  = {self.run.seconds / self.floor:5.2f} × ({self.floor_name})"
        if self.note:
            text += f"  [{self.note}]"
        return text

    def cells(self) -> list[str]:
        floor = f"{self.floor_name} = {secs(self.floor)} s" if self.floor_name else ""
        return [self.label, self.subset, self.seconds(), self.ratio(), floor, self.note]


class Bench:
    def __init__(self, repeat: int) -> None:
        self.repeat = max(1, repeat)
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.checks_failed = 0

    @property
    def figures_failed(self) -> int:
        return sum(1 for r in self.rows if r.note.startswith("FAILED"))

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(row.console(), flush=True)
        return row

    def missing(self, label: str, subset: str, why: str) -> None:
        self.add(Row(label, subset, None, note=f"missing: {why}"))

    def failed(self, label: str, subset: str, exc: CommandFailed) -> None:
        self.add(Row(label, subset, None, note=f"FAILED: {clip(exc.run.why())}"))
        self.notes.append(f"{label} failed: `{exc.run.cmd}`: {exc.run.why()}")

    def check(self, label: str, cmd: Sequence[str] | str, timeout: float | None,
              env: Mapping[str, str] | None = None) -> bool:
        """An untimed correctness check (say, verify after a rebuild): a failure is noted
        (``CHECK FAILED``), and does not stop the benchmark."""
        run = timed(cmd, timeout=timeout, check=False, env=env)
        return self.verdict(label, None if run.ok else run.why())

    def verdict(self, label: str, failure: str | None) -> bool:
        """Print the outcome of an untimed check; a failure (its reason) is noted."""
        if failure is None:
            print(f"{'check: ' + label:<46} ok", flush=True)
            return True
        text = f"CHECK FAILED: {label}: {failure}"
        print(text, flush=True)
        self.notes.append(text)
        self.checks_failed += 1
        return False

    def measure(self, prepare: Callable[[], None] | None, fn: Callable[[], Run]) -> Run:
        """Best of ``repeat`` runs; ``prepare`` (untimed, then a sync) before each."""
        runs = []
        for _ in range(self.repeat):
            if prepare is not None:
                prepare()
            settle()
            runs.append(fn())
        return best_of(runs)

    def measure_fresh(
        self,
        scratch: Scratch,
        name: str,
        fn: Callable[[Path], Run],
        *,
        need: int = 0,
        prepare: Callable[[Path], None] | None = None,
    ) -> tuple[Run, Path]:
        """Best of ``repeat`` runs of ``fn(folder)``, each into a folder never used before
        (``scratch.fresh(name)``; ``prepare(folder)`` untimed first); each earlier run's folder
        goes to the trash, nothing is deleted. Returns the best run and the last folder."""
        runs: list[Run] = []
        last: Path | None = None
        for _ in range(self.repeat):
            if last is not None:
                scratch.discard(last)
            last = scratch.fresh(name)
            scratch.room(need, name)
            if prepare is not None:
                prepare(last)
            settle()
            runs.append(fn(last))
        assert last is not None
        return best_of(runs), last


# -- options and the corpus shared by the scripts --------------------------------------------


def arg_parser(doc: str, *, default_n: int | None = None,
               default_kb: float = 500.0) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if default_n is None:
        ap.add_argument("n", type=int, help="number of artifacts")
    else:
        ap.add_argument("n", type=int, nargs="?", default=default_n,
                        help=f"number of artifacts (default {default_n})")
    ap.add_argument("--avg-kb", type=float, default=default_kb,
                    help=f"average artifact size in KB (default {default_kb:g})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="deb=0.45,wheel=0.45,sdist=0.05,file=0.05",
                    help="share of each kind (deb, wheel, sdist, file)")
    ap.add_argument("--work", type=Path, default=WORK,
                    help="where the corpus is cached and outputs go (default bench/work)")
    ap.add_argument("--keys", type=Path, default=KEYS, help="key folder (default keys.example)")
    ap.add_argument("--trust", type=Path, default=TRUST, help="trust root for verify")
    ap.add_argument("--results", default=str(RESULTS),
                    help="markdown file to append the table to ('-': none)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the output trees under WORK (default: remove them)")
    ap.add_argument("--repeat", type=int, default=1, help="best of R runs for each figure")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="limit for one command, in seconds")
    ap.add_argument("--no-sync", action="store_true",
                    help="do not sync(2) between steps (faster, noisier; for smoke runs)")
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = ap.parse_args(argv)
    global SYNC
    SYNC = not args.no_sync
    try:
        args.mix = corpus_mod.parse_mix(args.mix)
    except ValueError as exc:
        ap.error(str(exc))
    if args.n < 1:
        ap.error("N must be at least 1")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.work = args.work.resolve()
    args.keys = args.keys.resolve()
    args.trust = args.trust.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def corpus_folder(work: Path, spec: corpus_mod.CorpusSpec) -> Path:
    mix = "" if spec.mix == corpus_mod.DEFAULT_MIX else "-" + "-".join(
        f"{k}{v:g}" for k, v in spec.mix.items()
    )
    return work / f"corpus-n{spec.n}-s{spec.seed}-kb{spec.avg_kb:g}{mix}"


def prepare_corpus(args: argparse.Namespace) -> corpus_mod.Corpus:
    """The cached corpus for these options, generated when missing or stale."""
    spec = corpus_mod.CorpusSpec(args.n, args.seed, args.mix, args.avg_kb)
    folder = corpus_folder(args.work, spec)
    started = time.perf_counter()
    corpus, made = corpus_mod.ensure(folder, spec, progress=True)
    took = time.perf_counter() - started
    counts = ", ".join(f"{corpus.count(k)} {k}" for k in corpus_mod.KINDS)
    verb = f"generated in {took:.1f} s" if made else "cached"
    print(f"corpus: {len(corpus.files)} artifacts ({counts}), "
          f"{corpus.total_bytes / 1e6:,.1f} MB, {verb}: {folder}", flush=True)
    return corpus


# -- what every bench script does first and last -----------------------------------------------
COLUMNS = ["measurement", "set", "s", "ratio", "floor", "notes"]


def start(args: argparse.Namespace, name: str) -> tuple[corpus_mod.Corpus, Path, Bench]:
    """Print the machine line, prepare the corpus and an empty scratch folder
    ``WORK/<name>-n<N>``; return (corpus, scratch, bench).

    A scratch folder left by an earlier run (``--keep``, or killed) is not deleted here, right
    before the timed steps (see :class:`Scratch`): it is renamed into the new one's trash,
    which is deleted when the script exits (or earlier, by ``Scratch.empty``)."""
    print(f"machine: {machine_line()}; {load_line()}", flush=True)
    compile_repobuild()
    corpus = prepare_corpus(args)
    scratch = args.work / f"{name}-n{args.n}"
    old = None
    if os.path.lexists(scratch):
        old = scratch.with_name(f"{scratch.name}.old-{os.getpid()}")
        os.rename(scratch, old)
    scratch.mkdir(parents=True)
    if old is not None:
        Scratch(scratch).discard(old)
    atexit.register(rmtree, scratch / Scratch.TRASH)
    return corpus, scratch, Bench(args.repeat)


def report(name: str, args: argparse.Namespace, corpus: corpus_mod.Corpus, bench: Bench, *,
           title_extra: str = "", notes: Sequence[str] | None = None) -> str:
    """Append the bench's table to --results (bench/RESULTS.md) and print it."""
    title = (f"{name} N={args.n} ({corpus.total_bytes / 1e6:,.0f} MB, avg {args.avg_kb:g} KB, "
             f"seed {args.seed}, best of {bench.repeat}{title_extra})")
    section = append_results(title, COLUMNS, [r.cells() for r in bench.rows],
                             notes=bench.notes if notes is None else notes,
                             path=results_path(args.results))
    print()
    print(section)
    return section
