"""Writing to a file descriptor, whole, and widening a pipe (a module of its own:
repobuild.scan imports it before the command line forks its walk of SOURCE, where importing
repobuild.store cost ~15 ms)."""

from __future__ import annotations

import fcntl
import os
from contextlib import suppress

#: what a pipe between the build and its helpers holds (Linux's default is 64 KB): the few MB
#: they hand each other (index.json to gpg, SOURCE's records from the walk) then take a few
#: turns of each side rather than one per 64 KB, each a switch of tasks on a two-core machine
PIPE_SIZE = 1 << 20


def widen_pipe(fd: int) -> None:
    """Give the pipe ``fd`` PIPE_SIZE bytes of buffer where the system allows it (Linux;
    above /proc/sys/fs/pipe-max-size, for a process without the privilege, the default stays)."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is not None:
        with suppress(OSError):
            fcntl.fcntl(fd, setsize, PIPE_SIZE)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
