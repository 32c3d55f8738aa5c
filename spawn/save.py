"""Save: turn a spawn's overlay into a new archive root (a snapshot) while clients go on writing.

What is written is what changed:

* a changed regular file gets a spliced hash tree (spawn.engine.FileView.tree): base leaves
  no change touched are reused by score without being read, only changed ranges are chunked;
* a directory with changed entries gets its b-tree updated along the changed paths
  (O(changes * log n) blocks); a new directory's b-tree is built;
* the inode table is updated along the paths of changed inodes;
* then one new ROOT block, whose ``prev`` is the root the spawn was based on.

A save runs in three phases (:class:`SaveJob`), so that writers wait only for two short
steps on the engine's owner thread, not for the blocks to be written:

1. ``snapshot`` (owner thread): bump the overlay's generation from G to G + 1, so every later
   change is stamped above G, and open an LMDB read transaction: the overlay as it was at G.
   The engine opens a :class:`spawn.engine.SaveWindow`.
2. ``write`` (any thread, while the owner serves clients): build the new root from the
   snapshot alone, with its own readers (no cache shared with the owner thread), then sync
   the store. py-lmdb opens environments with MDB_NOTLS, so the read transaction may move
   to this thread; only this thread uses it.
3. ``finish`` (owner thread): rebase the spawn on the new root in one LMDB transaction.

The rebase keeps exactly what happened after G:

* overlay records stamped at or below G go (the new base holds them), except open orphans,
  which no archive holds: they keep their record and pages as they are;
* an inode record stamped above G stays. If the inode was in the snapshot with an overlay
  record, its content becomes the new archive's (a file's tree at G, a directory's new
  b-tree) and a file's ``base_limit`` becomes min(its size at G, the smallest size it was
  truncated to after G), so bytes cut after G stay cut. A file spilled after G keeps its
  record as it is: its content is already newer than the snapshot. An inode with no record
  at G had its base content unchanged by the save, so its record is right as it is;
* pages stamped above G stay (of inodes whose records stay); older pages go;
* dirents stamped above G stay and overlay the new b-trees. While a save runs, every removed
  name leaves a whiteout, because the new base may hold the name even if the old one did
  not (a name made before G and removed after it);
* ``ino_next`` is not touched (it only grows); the new root's inode high-water mark is its
  value at G.

Crash safety: nothing in the overlay changes until ``finish``, whose rebase is one LMDB
transaction, committed only after the new root is synced to the store. A kill at any moment
leaves either the old base with every committed change (the blocks written so far are
unreferenced garbage) or the new base with every change made after G. The caller records a
name only after ``save`` returns, so no name ever points at an incomplete root.

One save at a time per spawn: a second ``snapshot`` while one runs raises :class:`SaveBusy`
(waiting would block the owner thread that the running save needs for its ``finish``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import lmdb

from spawn.archive import Archive
from spawn.engine import Engine, FileView, SaveWindow
from spawn.fsformat import Inode, Root, encode_dirent, encode_inode, encode_root, ino_key
from spawn.overlay import (
    FLAG_DELETED,
    FLAG_ORPHAN,
    META_PAGE_BYTES,
    OInode,
    decode_odirent,
    decode_oinode,
    encode_oinode,
)
from store.block import BlockType, encode_refs
from store.btree import BTree, Entry, build, update
from store.score import NULL_SCORE, Score

T = TypeVar("T")
Owner = Callable[[Callable[[], T]], T]


class SaveBusy(RuntimeError):
    """A save of this spawn is already running."""


class SaveCancelled(RuntimeError):
    """The save was aborted (``abort``, or the engine closed) before it finished."""


def _here(fn: Callable[[], T]) -> T:
    return fn()


def save(engine: Engine, *, name: str = "", user: str = "", time_ns: int | None = None,
         owner: Owner | None = None) -> Score:
    """Write the spawn's state as a new root, rebase the spawn on it, return the root.

    *owner* runs a zero-argument function on the engine's owner thread and returns its
    result, blocking the caller (e.g. ``lambda fn: executor.submit(fn).result()``). With it,
    only the snapshot and the rebase run there and the blocks are written in the calling
    thread, which must then not be the owner thread (it would wait for itself). Without it,
    everything runs in the calling thread, which is then the owner.
    """
    run: Owner = owner if owner is not None else _here
    job = SaveJob(engine, name=name, user=user, time_ns=time_ns)
    run(job.snapshot)
    try:
        job.write()
    except BaseException:
        with contextlib.suppress(Exception):  # the write's own error is the one to report
            run(job.abort)
        raise
    return run(job.finish)


class SaveJob:
    """One save, phase by phase (see the module docstring): ``snapshot`` and ``finish`` (or
    ``abort``) on the owner thread, ``write`` on any thread in between."""

    def __init__(self, engine: Engine, *, name: str = "", user: str = "",
                 time_ns: int | None = None) -> None:
        self.engine = engine
        self.name, self.user, self.time_ns = name, user, time_ns
        self.state = "new"  # new, snapshot, written, done, aborted
        self.gen = 0  # G: the snapshot holds every change stamped <= G
        self.root: Score | None = None
        self._txn: lmdb.Transaction | None = None
        self._old: Score | None = None
        self._window: SaveWindow | None = None
        # What the new archive holds for each inode that had an overlay record at G
        # (None: left out, deleted or an orphan): the rebase needs it for changes after G.
        self._snap: dict[int, Inode | None] = {}
        self._cancelled = False
        self._lock = threading.Lock()  # write() taking the snapshot vs abort() dropping it
        self._idle = threading.Event()  # clear while write() runs
        self._idle.set()

    # -- phase 1 ---------------------------------------------------------------------------

    def snapshot(self) -> int:
        """Owner thread: freeze the overlay at generation G (returned)."""
        if self.state != "new":
            raise RuntimeError(f"snapshot of a save in state {self.state}")
        e = self.engine
        if e.saving is not None:
            raise SaveBusy("a save of this spawn is already running; try again when it ends")
        with e.ov.op() as txn:
            g = e._gen(txn)
            e.ov.put_u64(txn, b"gen", g + 1)
        e.ov.checkpoint()  # other threads read committed state only (spawn.overlay)
        self._txn = e.ov.env.begin()  # nothing can commit in between: this is the owner
        self.gen = g
        self._old = e.archive.score
        self._window = SaveWindow(g, abort=self.abort)
        e.saving = self._window
        self.state = "snapshot"
        return g

    # -- phase 2 ---------------------------------------------------------------------------

    def _check(self) -> None:
        if self._cancelled:
            raise SaveCancelled("save aborted")

    def write(self) -> Score:
        """Any thread: write the snapshot's blocks and root, sync the store; the spawn does
        not change. Returns the new root (not yet the spawn's base: ``finish`` does that)."""
        with self._lock:
            self._check()
            if self.state != "snapshot" or self._txn is None:
                raise RuntimeError(f"write of a save in state {self.state}")
            txn, self._txn = self._txn, None  # from here on only this thread uses it
            self._idle.clear()
        try:
            self.root = self._write(txn)
            self.state = "written"
            return self.root
        finally:
            txn.abort()  # done with the snapshot, in the thread that used it
            self._idle.set()

    def _write(self, txn: lmdb.Transaction) -> Score:
        e = self.engine
        store = e.store
        ov = e.ov
        assert self._old is not None
        old = Archive(store, self._old)  # this thread's own reader of the old base
        files = FileView(store, ov)
        dirents: dict[int, list[tuple[bytes, int | None, int]]] = {}
        for k, v in txn.cursor(db=ov.dirents):
            d = decode_odirent(v)
            dirents.setdefault(int.from_bytes(k[:8], "big"), []).append((k[8:], d.ino, d.dtype))
        changes: dict[bytes, Entry | None] = {}
        for k, v in txn.cursor(db=ov.inodes):
            self._check()
            ino = int.from_bytes(k, "big")
            o = decode_oinode(v)
            key = ino_key(ino)
            if o.flags & (FLAG_DELETED | FLAG_ORPHAN):
                changes[key] = None  # saves leave orphans out
                self._snap[ino] = None
                continue
            inode = o.inode
            if inode.is_reg():
                inode = replace(inode, content=files.tree(txn, ino, o, self._check))
            elif inode.is_dir() and (ino in dirents or inode.content == NULL_SCORE):
                tree = _dir_tree(store, inode, dirents.get(ino, []))
                inode = replace(inode, content=tree, size=len(BTree(store, tree)))
            changes[key] = Entry(key, encode_inode(inode), inode.refs())
            self._snap[ino] = inode
        self._check()
        table = update(store, BlockType.META, old.root.inode_table, changes)
        ino_high = ov.get_u64(txn, b"ino_next", old.root.ino_high)
        root = Root(
            inode_table=table, root_ino=old.root_ino, ino_high=ino_high,
            time_ns=time.time_ns() if self.time_ns is None else self.time_ns,
            name=self.name, user=self.user, prev=old.score,
        )
        refs, body = encode_root(root)
        score = store.put(BlockType.ROOT, encode_refs(refs, body))
        store.sync()  # the root and all it references are durable before any rebase
        return score

    # -- phase 3 ---------------------------------------------------------------------------

    def finish(self) -> Score:
        """Owner thread: rebase the spawn on the new root (one LMDB transaction)."""
        if self.state != "written" or self.root is None:
            raise RuntimeError(f"finish of a save in state {self.state}")
        e = self.engine
        try:
            if e.saving is not self._window:
                raise SaveCancelled("the engine's save window is gone (engine closed?)")
            _rebase(e, self.root, self.gen, self._window, self._snap)
            self.state = "done"
            return self.root
        finally:
            if e.saving is self._window:
                e.saving = None
            if self.state != "done":
                self.state = "aborted"

    def abort(self) -> None:
        """Owner thread: give the save up; the spawn stays on its old base, unchanged (the
        blocks written so far are unreferenced). A ``write`` running in another thread stops
        at its next check, and this waits for it. Safe to call more than once."""
        with self._lock:
            self._cancelled = True
            txn, self._txn = self._txn, None
        if txn is not None:
            txn.abort()  # write() never took it
        self._idle.wait()
        e = self.engine
        if self._window is not None and e.saving is self._window:
            e.saving = None
        if self.state != "done":
            self.state = "aborted"


def _dir_tree(store, inode: Inode, entries: list[tuple[bytes, int | None, int]]) -> Score:
    if inode.content == NULL_SCORE:
        return build(
            store, BlockType.DIR,
            (Entry(n, encode_dirent(i, t << 12)) for n, i, t in sorted(entries) if i is not None),
        )
    changes = {
        n: (None if i is None else Entry(n, encode_dirent(i, t << 12))) for n, i, t in entries
    }
    return update(store, BlockType.DIR, inode.content, changes)


def _rebase(e: Engine, score: Score, gen: int, window: SaveWindow,
            snap: dict[int, Inode | None]) -> None:
    """The spawn now stands on *score*, saved at generation *gen*: keep what came after."""
    ov = e.ov
    ov.checkpoint()  # the rebase is one flushed transaction of its own, after the journal's
    with ov.env.begin(write=True, buffers=True) as txn:
        # (buffers: values are read in place, not copied; cursor.key() is empty past the
        # end, and delete() moves the cursor to the next record.)
        # Inodes: decide each one's fate, and its pages' (all, those above gen, or none).
        keep_all: set[bytes] = set()
        keep_new: set[bytes] = set()
        cur = txn.cursor(db=ov.inodes)
        cur.first()
        while len(cur.key()):
            k = bytes(cur.key())
            o = decode_oinode(bytes(cur.value()))
            ino = int.from_bytes(k, "big")
            if o.gen <= gen:
                if o.flags & FLAG_ORPHAN:
                    keep_all.add(k)  # open, nameless: no archive holds it
                    cur.next()
                else:
                    cur.delete()
                continue
            new = snap.get(ino)
            if ino in window.spilled or new is None or o.flags & FLAG_DELETED:
                keep_all.add(k)  # content already right (or newer than the snapshot)
            else:
                keep_new.add(k)
                if o.inode.is_reg():
                    limit = min(new.size, window.truncated.get(ino, new.size))
                    o = OInode(replace(o.inode, content=new.content), limit, o.flags, o.gen)
                    cur.put(k, encode_oinode(o))
                elif o.inode.is_dir():
                    o = OInode(replace(o.inode, content=new.content, size=new.size),
                               o.base_limit, o.flags, o.gen)
                    cur.put(k, encode_oinode(o))
            cur.next()
        # Pages: one pass, file by file.
        page_bytes = 0
        cur = txn.cursor(db=ov.pages)
        cur.first()
        while len(cur.key()):
            prefix = bytes(cur.key()[:8])
            fate = 2 if prefix in keep_all else 1 if prefix in keep_new else 0
            while len(cur.key()) and bytes(cur.key()[:8]) == prefix:
                v = cur.value()
                if fate == 2 or (fate == 1 and int.from_bytes(v[:8], "big") > gen):
                    page_bytes += len(v) - 8
                    cur.next()
                else:
                    cur.delete()
        # Dirents: those made after the snapshot overlay the new b-trees.
        cur = txn.cursor(db=ov.dirents)
        cur.first()
        while len(cur.key()):
            if decode_odirent(bytes(cur.value())).gen <= gen:
                cur.delete()
            else:
                cur.next()
        txn.put(b"base", bytes(score), db=ov.meta)
        ov.put_u64(txn, META_PAGE_BYTES, page_bytes)
    ov.env.sync(True)
    ov.page_bytes = page_bytes
    e.archive = Archive(e.store, score)
