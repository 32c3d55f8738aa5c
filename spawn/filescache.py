"""The import files cache: skip reading files that have not changed since the last import.

Like restic's and borg's, keyed per (snapshot name, path) with what the filesystem says of the
file: device, inode, size, mtime and ctime in nanoseconds. A hit gives the file's hash tree
score and its grid inode number without reading a byte; anything different is a miss.
The cache also keeps inode numbers stable across re-imports: a path seen before keeps its
grid inode; a file renamed on disk (same device and inode number) keeps it too.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import lmdb

from store.score import Score

_VAL = struct.Struct(">QQQqqQ32s")


@dataclass(frozen=True, slots=True)
class CachedFile:
    dev: int
    st_ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    grid_ino: int
    score: Score


class FilesCache:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=1 << 36, max_dbs=4, subdir=True)
        self._db = self._env.open_db(b"files")
        self._byino = self._env.open_db(b"byino")

    def _key(self, name: str, rel: bytes) -> bytes:
        return name.encode() + b"\0" + rel

    def get(self, name: str, rel: bytes) -> CachedFile | None:
        with self._env.begin(db=self._db) as txn:
            v = txn.get(self._key(name, rel))
        if v is None:
            return None
        dev, sino, size, mt, ct, gino, score = _VAL.unpack(v)
        return CachedFile(dev, sino, size, mt, ct, gino, Score(score))

    def ino_for_source(self, name: str, dev: int, st_ino: int) -> int | None:
        """The grid inode last given to the file with this (device, inode) under *name*."""
        with self._env.begin(db=self._byino) as txn:
            v = txn.get(name.encode() + b"\0" + struct.pack(">QQ", dev, st_ino))
        return int.from_bytes(v, "big") if v is not None else None

    def replace(self, name: str, entries: dict[bytes, CachedFile]) -> None:
        """Make *entries* the cache of *name* (what the import just saw), atomically."""
        prefix = name.encode() + b"\0"
        with self._env.begin(write=True) as txn:
            for db in (self._db, self._byino):
                cur = txn.cursor(db=db)
                if cur.set_range(prefix):
                    while cur.key().startswith(prefix):
                        if not cur.delete():
                            break
            for rel, c in entries.items():
                txn.put(prefix + rel, _VAL.pack(c.dev, c.st_ino, c.size, c.mtime_ns, c.ctime_ns, c.grid_ino, c.score), db=self._db)
                txn.put(prefix + struct.pack(">QQ", c.dev, c.st_ino), c.grid_ino.to_bytes(8, "big"), db=self._byino)

    def close(self) -> None:
        self._env.close()
