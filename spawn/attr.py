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

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512
