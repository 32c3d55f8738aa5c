"""A file's attributes as every exporter receives them from the engine.

Its own module, with no imports, so that the daemon's wire codec (spawn.vfswire) and the CLI
that uses it can name it without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    alloc: int = -1  # bytes the file's data occupies (holes excluded); -1: its size

    @property
    def blocks(self) -> int:
        """st_blocks: 512-byte units of data actually held, so ``du`` of a sparse file
        counts its data, not its holes."""
        return ((self.size if self.alloc < 0 else self.alloc) + 511) // 512
