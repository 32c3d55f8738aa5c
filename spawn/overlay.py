"""A spawn's changes over its base archive, persistent in LMDB (the fossil part of vac+fossil).

The base archive is read-only and shared; everything a spawn changes lives here, so a daemon
killed and restarted finds every spawn as its last committed transaction left it::

    meta     b"base" -> root score the spawn is based on; b"ino_next" -> u64 next inode
             number (never reused in the spawn's life); b"gen" -> u64 change generation;
             b"page_bytes" -> u64 bytes of page data in ``pages`` (kept in the same
             transactions as the pages; what ``overlay_limit`` bounds)
    inodes   u64 ino -> changed inode: u64 gen | u64 base_limit | u8 flags | inode record
    dirents  u64 dir ino | name -> u64 gen | u8 0 (whiteout: the base name is gone)
                                   u64 gen | u8 1 | u64 ino | u8 d_type
    pages    u64 ino | u64 page -> u64 gen | bytes (the page's data, at most PAGE_SIZE)

A changed file's content is its base hash tree for bytes below ``base_limit`` (lowered by
truncation, so re-extended bytes read as zeros), overlaid by whole pages. The base tree is
the archive's, or one the spawn wrote itself: a spill (overlay over its limit) or a rebase
points the inode record at a newer tree. Every change is stamped with the generation current
when it was made: a save snapshots the overlay at generation G (an LMDB read transaction,
while writers go on; later changes carry G + 1), writes the new archive, then drops from the
overlay what was at or below G, which the new base now holds (spawn.save has the rules).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path

import lmdb

from spawn.fsformat import Inode, decode_inode, encode_inode
from store.score import NULL_SCORE, Score

PAGE_SIZE = 64 << 10
META_PAGE_BYTES = b"page_bytes"
_U64 = struct.Struct(">Q")
_IHEAD = struct.Struct(">QQB")
_DHEAD = struct.Struct(">QB")
_DENT = struct.Struct(">QB")

FLAG_DELETED = 1  # the inode is gone (no names, not open)
FLAG_ORPHAN = 2  # no names left but still open: data kept until the last release


@dataclass(frozen=True, slots=True)
class OInode:
    """An inode as the spawn sees it: the archive's fields plus copy-on-write state."""

    inode: Inode
    base_limit: int  # bytes of inode.content (the base tree) still valid
    flags: int = 0
    gen: int = 0

    def with_(self, **kw: object) -> OInode:
        return replace(self, inode=replace(self.inode, **kw))  # type: ignore[arg-type]


def encode_oinode(o: OInode) -> bytes:
    ino = o.inode
    refs = (ino.content,) if ino.content != NULL_SCORE else ()
    return _IHEAD.pack(o.gen, o.base_limit, o.flags) + bytes((len(refs),)) + b"".join(refs) + encode_inode(ino)


def decode_oinode(buf: bytes) -> OInode:
    gen, limit, flags = _IHEAD.unpack_from(buf)
    n = buf[_IHEAD.size]
    pos = _IHEAD.size + 1
    refs = tuple(Score(buf[pos + 32 * i : pos + 32 * (i + 1)]) for i in range(n))
    return OInode(decode_inode(buf[pos + 32 * n :], refs), limit, flags, gen)


def ino_bytes(ino: int) -> bytes:
    return _U64.pack(ino)


def dirent_key(dir_ino: int, name: bytes) -> bytes:
    return _U64.pack(dir_ino) + name


def page_key(ino: int, page: int) -> bytes:
    return _U64.pack(ino) + _U64.pack(page)


@dataclass(frozen=True, slots=True)
class ODirent:
    gen: int
    ino: int | None  # None: whiteout
    dtype: int = 0


def encode_dirent(d: ODirent) -> bytes:
    if d.ino is None:
        return _DHEAD.pack(d.gen, 0)
    return _DHEAD.pack(d.gen, 1) + _DENT.pack(d.ino, d.dtype)


def decode_odirent(buf: bytes) -> ODirent:
    gen, kind = _DHEAD.unpack_from(buf)
    if kind == 0:
        return ODirent(gen, None)
    ino, dtype = _DENT.unpack_from(buf, _DHEAD.size)
    return ODirent(gen, ino, dtype)


class Overlay:
    """The LMDB environment of one spawn. The engine's owner thread makes every change; other
    threads only read, each through a transaction of its own (a running save's snapshot, a
    status display's page count), which LMDB allows (py-lmdb opens with MDB_NOTLS)."""

    def __init__(self, path: str | Path, *, map_size: int = 1 << 34) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=8, subdir=True)
        self.meta = self.env.open_db(b"meta")
        self.inodes = self.env.open_db(b"inodes")
        self.dirents = self.env.open_db(b"dirents")
        self.pages = self.env.open_db(b"pages")

    def close(self) -> None:
        self.env.close()

    def get_meta(self, txn: lmdb.Transaction, key: bytes) -> bytes | None:
        return txn.get(key, db=self.meta)

    def get_u64(self, txn: lmdb.Transaction, key: bytes, default: int = 0) -> int:
        v = txn.get(key, db=self.meta)
        return _U64.unpack(v)[0] if v is not None else default

    def put_u64(self, txn: lmdb.Transaction, key: bytes, value: int) -> None:
        txn.put(key, _U64.pack(value), db=self.meta)

    def count_page_bytes(self, txn: lmdb.Transaction) -> int:
        """Bytes of page data, counted by walking the pages (the meta count's ground truth:
        used once for overlays written before the count existed, and by tests)."""
        total = 0
        for _k, v in txn.cursor(db=self.pages):
            total += len(v) - 8
        return total
