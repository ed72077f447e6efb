"""How the ``repobuild build`` process runs: its memory allocator and its garbage collector.

Process-wide settings, so the command line applies them (before the build starts a thread or a
worker, which inherit them), never the library: a program that calls :func:`repobuild.build.build`
keeps its own (:func:`settle` freezes objects only where the command line set them).
:func:`background` is no such setting: it lowers the priority of the calling thread only, and
the build calls it in its own helper processes (the walk of SOURCE and OUT, the workers) and
threads (the cosign key's unlocking, which ends with it), never in the caller's thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading

#: the cyclic collector's first threshold for a build: a collection per 100,000 new objects
#: instead of per 700 (Python's default)
GC_THRESHOLD = (100_000, 50, 100)

_settling = False  # set by fewer_collections: this process is a build's, run from the CLI


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt options


def mallopt(option: int, value: int) -> None:
    """glibc's ``mallopt`` for this process; a no-op where glibc is not the libc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(option, value)
    except (OSError, AttributeError):
        pass


def one_malloc_arena() -> None:
    """Have glibc's malloc serve every thread of this process from the main arena.

    A build's threads (the key unlocking, the apt indices' gzip and xz) otherwise each get an
    arena of their own, whose freed memory the main thread cannot reuse: at 100,000 artifacts
    a rebuild peaked at ~486 MB with them and at ~464 MB without (MALLOC_ARENA_MAX=1), and
    ran no slower. Call it before any thread starts; a no-op where glibc is not the libc."""
    mallopt(M_ARENA_MAX, 1)


def fewer_collections() -> None:
    """Run the cyclic garbage collector less often, and never over what exists already (the
    modules). A build creates objects by the million and keeps most of them to the end: adding
    one package to 10,000 artifacts, the default settings made ~400 collections, three of them
    over every object, which freed ~1,100 objects in all. With these, a rebuild of 100,000
    artifacts took 11.6-13.4 s instead of 13.2-14.4 s and adding one package to 10,000 ~0.1 s
    less, at the same peak memory (~450 MB at 100,000); freezing the modules, ~0.05 s less."""
    global _settling
    _settling = True
    gc.set_threshold(*GC_THRESHOLD)
    gc.enable()  # the command line turns it off while a build's modules load
    # what exists now (the modules, ~200,000 objects) is never collected: the first collection
    # of a build, after the workers are forked, traversed it all and so wrote to every page
    # the workers share with this process, copying each (~50 ms at 10,000 artifacts)
    gc.freeze()


def settle() -> None:
    """The build has made objects that live to its end (a rebuild's cached artifacts): the
    collector never traverses them, as it never traverses the modules. Adding one package to
    10,000 artifacts, the one collection it made went over those (~17 ms) and freed nothing.
    Only where :func:`fewer_collections` was called (the CLI's build, a process that ends with
    the build): a program that calls the library would keep those objects forever."""
    if _settling:
        gc.freeze()


def background(step: int = 10) -> None:
    """Lower the scheduling priority of the calling thread (on Linux a thread has its own) by
    ``step``, so that it yields the CPU to the build's main thread when they compete for one."""
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + step))
    except (OSError, AttributeError):
        pass
