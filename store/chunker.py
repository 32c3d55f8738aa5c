"""Where leaf boundaries fall in a byte stream.

Two chunkers behind one small interface: ``FixedChunker`` (every leaf the same size, as
venti's vac did) and ``CdcChunker`` (content-defined boundaries by FastCDC 2020, via
pyfastcdc's C implementation), which keeps dedup after insertions because a boundary
depends on the bytes around it, not on its offset. docs/hashtree.md has the measurements
behind the default (CDC, 4 KiB min / 16 KiB target / 64 KiB max).

A chunker is fed a buffer and told whether more data follows; it returns the lengths of the
complete chunks it found and leaves the unfinished tail to the caller, so callers can stream
files of any size through a bounded buffer.
"""

from __future__ import annotations

import abc

from pyfastcdc.cy import FastCDC


class Chunker(abc.ABC):
    """Cuts buffers into leaves. ``max_size`` bounds a leaf (and so a DATA block)."""

    max_size: int

    @abc.abstractmethod
    def cut(self, buf: bytes | bytearray | memoryview, final: bool) -> list[int]:
        """Lengths of the complete chunks at the start of *buf*.

        With ``final`` the whole buffer is consumed; otherwise the last, possibly unfinished,
        chunk is left out so the caller can prepend it to the next buffer.
        """

    @abc.abstractmethod
    def describe(self) -> str: ...


class FixedChunker(Chunker):
    def __init__(self, size: int = 64 << 10) -> None:
        if size <= 0:
            raise ValueError("chunk size must be positive")
        self.size = self.max_size = size

    def cut(self, buf: bytes | bytearray | memoryview, final: bool) -> list[int]:
        n = len(buf)
        full, rest = divmod(n, self.size)
        out = [self.size] * full
        if final and rest:
            out.append(rest)
        return out

    def describe(self) -> str:
        return f"fixed {self.size}"


class CdcChunker(Chunker):
    def __init__(self, avg: int = 16 << 10, min_size: int = 4 << 10, max_size: int = 64 << 10) -> None:
        if not (64 <= min_size <= avg <= max_size):
            raise ValueError("need 64 <= min <= avg <= max")
        self.avg, self.min_size, self.max_size = avg, min_size, max_size
        self._cdc = FastCDC(avg_size=avg, min_size=min_size, max_size=max_size)

    def cut(self, buf: bytes | bytearray | memoryview, final: bool) -> list[int]:
        lengths = [c.length for c in self._cdc.cut_buf(buf)]
        if not final and lengths:
            lengths.pop()  # the tail may continue in the next buffer
        return lengths

    def describe(self) -> str:
        return f"fastcdc min {self.min_size} avg {self.avg} max {self.max_size}"


def default_chunker() -> Chunker:
    return CdcChunker()
