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

Durability without a flush per operation (spawn.journal): the owner thread's operations go
into one long LMDB write transaction, each recorded in the journal before it returns, and the
transaction is committed with a flush at checkpoints (every CHECKPOINT_SECONDS, or when the
journal passes CHECKPOINT_BYTES, before a save, at close). Other threads read only what the
last checkpoint committed; the owner's reads see everything (the open transaction).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import lmdb

from spawn.fsformat import Inode, decode_inode, encode_inode
from spawn.journal import DELETE, PUT, Entry, Journal, decode_records
from store.score import NULL_SCORE, Score

PAGE_SIZE = 64 << 10
META_PAGE_BYTES = b"page_bytes"
_U64 = struct.Struct(">Q")
_IHEAD = struct.Struct(">QQB")
_DHEAD = struct.Struct(">QB")
_DENT = struct.Struct(">QB")

META_JSEQ = b"jseq"  # the last journal record a checkpoint includes
CHECKPOINT_SECONDS = 5.0  # commit the owner's transaction at least this often (when busy)
#: ... or when the journal holds this much. Sized by what LMDB holds in memory, not by the
#: journal: an LMDB write transaction keeps up to 2**17 - 1 dirty pages (MDB_IDL_UM_MAX,
#: 512 MiB of 4 KiB pages) before it starts spilling them to the file, and the journal's
#: bytes are about the transaction's dirty data bytes (every put's value, once); a quarter
#: of that room is left for B-tree pages. A burst of writes up to this size is absorbed at
#: the journal's speed (one pwritev(2) each, flushed by a background thread), and its commit
#: comes later (idle, timer); fewer, larger commits also cost less per byte than many small
#: ones (docs/benchmarks.md, "9P: requests served where they arrive").
CHECKPOINT_BYTES = 384 << 20

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


class JournaledTxn:
    """The owner's write transaction as one operation sees it: reads go straight to LMDB;
    puts and deletes are recorded for the journal, and each remembers the value it replaced,
    so a failing operation is undone without a nested LMDB transaction (which would copy
    every page it touches). Cursors are for reading only."""

    __slots__ = ("_dbnum", "entries", "txn", "undo")

    def __init__(self, txn: lmdb.Transaction, dbnum: dict[object, int]) -> None:
        self.txn = txn
        self._dbnum = dbnum
        self.entries: list[Entry] = []
        self.undo: list[tuple[object, bytes, bytes | None]] = []

    def get(self, key: bytes, default: object = None, db: object = None) -> bytes | None:
        return self.txn.get(key, default, db=db)

    def cursor(self, db: object = None) -> lmdb.Cursor:
        return self.txn.cursor(db=db)

    def put(self, key: bytes, value: bytes, db: object = None) -> None:
        self.undo.append((db, key, self.txn.get(key, db=db)))
        self.txn.put(key, value, db=db)
        self.entries.append((PUT, self._dbnum[db], key, bytes(value)))

    def delete(self, key: bytes, db: object = None) -> bool:
        old = self.txn.get(key, db=db)
        if old is None:
            return False
        self.undo.append((db, key, old))
        self.txn.delete(key, db=db)
        self.entries.append((DELETE, self._dbnum[db], key, b""))
        return True

    def rollback(self) -> None:
        for db, key, old in reversed(self.undo):
            if old is None:
                self.txn.delete(key, db=db)
            else:
                self.txn.put(key, old, db=db)
        self.undo.clear()
        self.entries.clear()


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
        self._dbs = (self.meta, self.inodes, self.dirents, self.pages)  # journal db numbers
        self._dbnum = {db: i for i, db in enumerate(self._dbs)}
        self.journal = Journal(self.path / "journal")
        self._txn: lmdb.Transaction | None = None
        self._txn_thread = 0  # the thread that began it: only it may use and commit it
        self._since = time.monotonic()  # when the open transaction began
        #: True while every operation is in a committed LMDB transaction (no open owner
        #: transaction, no checkpoint half done): then a read transaction begun from any
        #: thread sees every completed operation (``Engine.read_snapshot``). Set False
        #: before the owner's transaction begins, True only after its commit returns.
        self.clean = True
        self.closed = False
        self.seq = self._replay()
        self.page_bytes = self._read_page_bytes()
        self.checkpoints = 0

    def _read_page_bytes(self) -> int:
        with self.env.begin() as txn:
            return self.get_u64(txn, META_PAGE_BYTES)

    def _replay(self) -> int:
        """Apply the journal's records after the last checkpoint; return the last seq."""
        with self.env.begin() as txn:
            seq = self.get_u64(txn, META_JSEQ)
        buf = self.journal.read_all()
        if not buf:
            return seq
        applied = 0
        with self.env.begin(write=True) as txn:
            for rseq, entries in decode_records(buf):
                if rseq <= seq:
                    continue  # the checkpoint holds it (its truncation was lost)
                if rseq != seq + 1:
                    break
                for kind, db, key, value in entries:
                    if kind == PUT:
                        txn.put(key, value, db=self._dbs[db])
                    else:
                        txn.delete(key, db=self._dbs[db])
                seq = rseq
                applied += 1
            self.put_u64(txn, META_JSEQ, seq)
        self.journal.reset()
        return seq

    # -- the owner's transaction -----------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Are there operations the last checkpoint does not hold?"""
        return self._txn is not None

    def txn(self) -> lmdb.Transaction:
        """The owner thread's transaction: everything up to now, checkpointed or not. Owner
        thread only; for reading (changes go through ``op``)."""
        if self._txn is None:
            self.clean = False
            self._txn = self.env.begin(write=True)
            self._txn_thread = threading.get_ident()
            self._since = time.monotonic()
        elif self._txn_thread != threading.get_ident():
            self._wrong_thread()
        return self._txn

    def _wrong_thread(self) -> None:
        # LMDB's write lock belongs to the thread that began the transaction: another
        # thread using or committing it would leave the lock held for ever (a deadlock).
        raise RuntimeError("the overlay's open transaction belongs to another thread: "
                           "checkpoint it on that thread first (one owner thread per spawn)")

    @contextmanager
    def reading(self) -> Iterator[lmdb.Transaction]:
        """A view for reading: the open transaction when there is one (every operation so
        far), else a read transaction of the last checkpoint. Reading never takes LMDB's
        write lock, so a thread that only looks cannot block the owner; one that looks while
        the owner is idle (a test, a debugger) sees what the owner sees."""
        if self._txn is not None:
            yield self._txn
            return
        with self.env.begin() as txn:
            yield txn

    @contextmanager
    def op(self) -> Iterator[JournaledTxn]:
        """One operation's changes: all of them or (on an exception) none, journaled before
        the block ends, so that the operation survives a kill of the process."""
        fresh = self._txn is None
        jt = JournaledTxn(self.txn(), self._dbnum)
        try:
            yield jt
        except BaseException:
            jt.rollback()
            if fresh:
                self._drop_empty()
            raise
        if not jt.entries and fresh:
            # An operation that changed nothing (a release, a refused change) leaves no
            # transaction open: the overlay stays clean for other threads' readers.
            self._drop_empty()
            return
        if jt.entries:
            self.seq += 1
            self.journal.append(self.seq, jt.entries)
            for kind, db, key, value in jt.entries:
                if db == 0 and key == META_PAGE_BYTES and kind == PUT:
                    self.page_bytes = _U64.unpack(value)[0]
        if (self.journal.size >= CHECKPOINT_BYTES
                or time.monotonic() - self._since >= CHECKPOINT_SECONDS):
            self.checkpoint(keep_journal=True)  # inside a burst: its file is written over

    def _drop_empty(self) -> None:
        """End the owner's transaction, which holds no change (it was begun by the
        operation that just ended and that operation changed nothing)."""
        txn, self._txn = self._txn, None
        if txn is not None:
            txn.abort()
        self.clean = True

    def checkpoint(self, *, keep_journal: bool = False) -> None:
        """Commit the owner's transaction with a flush; the journal starts afresh (with
        *keep_journal*, over its old file: spawn.journal ``reset``). Owner thread only.
        Afterwards other threads' read transactions see everything."""
        if self._txn is None:
            return
        if self._txn_thread != threading.get_ident():
            self._wrong_thread()
        txn, self._txn = self._txn, None
        try:
            self.put_u64(txn, META_JSEQ, self.seq)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        # The count first: a reader that sees ``clean`` and the same count as before knows
        # nothing was committed in between (SharedLink.snapshot, SFTP's read-ahead).
        self.checkpoints += 1
        self.clean = True
        self.journal.reset(keep=keep_journal)

    def sync(self) -> None:
        """fsync: every operation so far survives a machine crash (the journal's flush)."""
        self.journal.flush()

    def close(self) -> None:
        self.checkpoint()
        self.closed = True
        self.journal.close()
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
