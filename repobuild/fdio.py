"""Writing to a file descriptor, whole (a module of its own: repobuild.scan imports it before
the command line forks its walk of SOURCE, where importing repobuild.store cost ~15 ms)."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
