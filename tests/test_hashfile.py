"""HashingFile: index.json written and hashed by a thread of its own, the same bytes and digest
as writing and hashing in the caller; a write that fails is raised to the caller."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from repobuild.hashfile import HashingFile


def test_pieces_are_written_in_order_and_hashed(tmp_path: Path) -> None:
    pieces = [bytes([i % 251]) * (i * 1000 + 1) for i in range(40)]
    path = tmp_path / "index.json"
    with HashingFile(path, depth=2) as out:  # a shallow queue: the caller waits its turn
        for piece in pieces[:10]:
            out.write(piece)
        head = out.written()
        assert head == sum(map(len, pieces[:10]))
        assert path.read_bytes()[:head] == b"".join(pieces[:10])  # on disk: a reader sees it
        for piece in pieces[10:]:
            out.write(piece)
        digest = out.close()
    whole = b"".join(pieces)
    assert path.read_bytes() == whole
    assert digest == hashlib.sha256(whole).digest()
    with pytest.raises(ValueError, match="closed"):
        out.write(b"more")


class _Full:
    """A file whose writes fail as on a full disk, after the first."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.closed = False

    def write(self, piece: bytes) -> int:
        if self.data:
            raise OSError(28, "No space left on device")
        self.data.append(piece)
        return len(piece)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_a_failed_write_is_raised_and_nothing_more_is_written(tmp_path: Path) -> None:
    out = HashingFile(tmp_path / "index.json")
    full = _Full()
    out._fh.close()
    out._fh = full  # type: ignore[assignment]
    out.write(b"first")
    out.write(b"second")  # fails in the thread
    with pytest.raises(OSError, match="No space left"):
        out.written()
    with pytest.raises(OSError, match="No space left"):
        out.write(b"third")
    with pytest.raises(OSError, match="No space left"):
        out.close()
    assert full.data == [b"first"] and full.closed


def test_leaving_the_block_on_an_error_keeps_that_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError), HashingFile(tmp_path / "x") as out:
        out.write(b"half")
        raise KeyError("the build failed meanwhile")
    assert (tmp_path / "x").read_bytes() == b"half"  # closed: the build removes its temp files
