"""A few worker processes for the per-file work of a build (read, hash, inspect, place).

Threads are not enough: hashing releases the GIL, but inspecting an archive, creating folders
and files and the bookkeeping around them hold it, so two threads ran at 2.5 × the time of two
``openssl`` processes. Processes share nothing but the pipe, so they scale with the cores.

The pool is forked at the start of a build, before the build opens OUT's lock (a child would
otherwise hold it) and before any thread starts; a worker dies with its parent (Linux
``PR_SET_PDEATHSIG``) so that a killed build leaves no process behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from repobuild.process import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, background, mallopt

#: fewer files than this are read in the build's own process: forking costs more than it saves
MIN_FILES = 64
ENV = "REPOBUILD_WORKERS"  # a number of worker processes; 0 reads in-process


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _keep_freed_memory()
    background(5)  # the build's main thread first, when they compete for a core


def _keep_freed_memory() -> None:
    """Have glibc's malloc reuse freed buffers instead of unmapping and mapping them again: a
    zip's tail (read into new memory, 256 KiB at a time, see repobuild.ingest) and a wheel's
    METADATA get a fresh mmap from glibc by default when 128 KB or more, whose page faults and
    zeroing cost ~0.1 ms per file, a tenth of hashing a 500 KB file."""
    mallopt(M_TRIM_THRESHOLD, 64 << 20)  # keep up to 64 MB of freed heap
    mallopt(M_MMAP_THRESHOLD, 8 << 20)  # blocks up to 8 MB from the heap


def _ready() -> int:
    return os.getpid()


def worker_count(files: int) -> int:
    """How many worker processes a build of ``files`` source files uses (0: none)."""
    forced = os.environ.get(ENV, "").strip()
    if forced:
        try:
            return max(0, int(forced))
        except ValueError:
            return 0
    if files < MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return max(2, min(8, os.cpu_count() or 2))


class Workers:
    """A process pool, or nothing (``count == 0``): then callers do the work themselves."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: ProcessPoolExecutor | None = None
        if count:
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(
                count, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
            )
            # forks every worker now, in this thread (with the fork start method, the first
            # submit starts them all before it returns); its answer is not waited for (~5 ms)
            self._pool.submit(_ready)

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        assert self._pool is not None
        return self._pool.submit(fn, *args)

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers; ``wait=False`` when none has work left (they exit as they get
        the pool's last message; a build that then ends its process kills them with it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
