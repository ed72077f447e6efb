"""A file written and hashed (SHA-256) by a thread of its own, the bytes handed over in pieces.

index.json is written as it is rendered: ~7 MB at 10,000 artifacts, ~70 MB at 100,000. Hashing
and writing release the GIL, but the build's thread waited for them (~10 ms of a rebuild at
10,000 artifacts); here it only queues each piece and goes on rendering.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from types import TracebackType


class HashingFile:
    """Open ``path`` for writing (created or truncated); :meth:`write` queues a piece,
    :meth:`written` waits until all queued is on disk and gives its length, :meth:`close`
    waits, closes and gives the SHA-256 of all that was written. A failure to write is raised
    by the next of these two (or by :meth:`write`), and nothing more is written."""

    def __init__(self, path: Path | str, *, depth: int = 16) -> None:
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close() or __exit__
        self._hash = hashlib.sha256()
        self._size = 0
        self._error: BaseException | None = None
        # at most ``depth`` pieces (1 MB or so each) wait: a slow disk holds the writer
        # back, not the memory
        self._pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._drain, name="index writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            piece = self._pieces.get()
            try:
                if piece is None:
                    return
                if self._error is None:
                    self._hash.update(piece)
                    self._fh.write(piece)
                    self._size += len(piece)
            except BaseException as exc:  # noqa: BLE001 - raised in the writer's thread
                self._error = exc
            finally:
                self._pieces.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, piece: bytes) -> None:
        self._raise()
        if self._thread is None:
            raise ValueError("write to a closed HashingFile")
        self._pieces.put(piece)

    def written(self) -> int:
        """Wait until every piece queued is written (flushed to the file); their length."""
        self._pieces.join()
        self._raise()
        self._fh.flush()
        return self._size

    def close(self) -> bytes:
        """Wait for the writes, close the file; the SHA-256 (raw bytes) of what it holds."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._pieces.put(None)
            thread.join()
        self._fh.close()
        self._raise()
        return self._hash.digest()

    def __enter__(self) -> HashingFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is not None or not self._fh.closed:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - an error is on its way out already, or
                if kind is None:  # the caller closed it: then this one is raised
                    raise
