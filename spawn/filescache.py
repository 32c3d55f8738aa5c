"""The import files cache: skip reading files that have not changed since the last import.

Content, like borg's files cache, is keyed by the file's absolute path with what the
filesystem says of it: device, inode, size, mtime and ctime in nanoseconds. A hit gives the
file's hash-tree root without reading a byte, whatever name the tree is imported under.

Inode numbers are kept per snapshot name, so they stay stable across re-imports of one name:
a path seen before keeps its grid inode number, and so does a file renamed on disk (same
device and inode number). A first import of a name numbers inodes afresh (deterministic).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import lmdb

from store.score import Score

_VAL = struct.Struct(">QQQqq32s")
_DEVINO = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class CachedFile:
    dev: int
    st_ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    score: Score


class FilesCache:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=1 << 36, max_dbs=4, subdir=True)
        self._files = self._env.open_db(b"files")  # abs path -> CachedFile
        self._inos = self._env.open_db(b"inos")  # name\0abs path, name\0\0dev ino -> grid ino

    def get(self, abspath: bytes) -> CachedFile | None:
        with self._env.begin(db=self._files) as txn:
            v = txn.get(abspath)
        if v is None:
            return None
        dev, sino, size, mt, ct, score = _VAL.unpack(v)
        return CachedFile(dev, sino, size, mt, ct, Score(score))

    def ino_for_path(self, name: str, abspath: bytes) -> int | None:
        return self._ino(name.encode() + b"\0" + abspath)

    def ino_for_source(self, name: str, dev: int, st_ino: int) -> int | None:
        """The grid inode last given to the file with this (device, inode) under *name*."""
        return self._ino(name.encode() + b"\0\0" + _DEVINO.pack(dev, st_ino))

    def _ino(self, key: bytes) -> int | None:
        with self._env.begin(db=self._inos) as txn:
            v = txn.get(key)
        return int.from_bytes(v, "big") if v is not None else None

    def update(self, name: str, files: dict[bytes, CachedFile], inos: dict[bytes, tuple[int, int, int]]) -> None:
        """After a successful import: remember *files* (abs path -> content) and make *inos*
        (abs path -> (dev, st_ino, grid ino)) the inode numbers of *name*, atomically."""
        prefix = name.encode() + b"\0"
        with self._env.begin(write=True) as txn:
            for p, c in files.items():
                txn.put(p, _VAL.pack(c.dev, c.st_ino, c.size, c.mtime_ns, c.ctime_ns, c.score), db=self._files)
            cur = txn.cursor(db=self._inos)
            if cur.set_range(prefix):
                while cur.key().startswith(prefix):
                    if not cur.delete():
                        break
            for p, (dev, sino, gino) in inos.items():
                g = gino.to_bytes(8, "big")
                txn.put(prefix + p, g, db=self._inos)
                txn.put(prefix + b"\0" + _DEVINO.pack(dev, sino), g, db=self._inos)

    def close(self) -> None:
        self._env.close()
