"""The copy-on-write filesystem engine of one spawn: the one vfs under FUSE, 9P and SFTP.

A spawn is a base archive (read lazily through the store: spawning reads the root block and
nothing more) plus an overlay (spawn.overlay) holding every change. The engine implements
what POSIX filesystems do in terms of inode numbers, as FUSE and 9P think; adapters stay thin.

Concurrency: the engine is synchronous and owned by one thread, its spawn's host
(spawn.host), through which every exporter of the spawn goes. Operations are atomic: each
runs inside the overlay's one open transaction (spawn.overlay), undone as a whole if it
fails, so an O_APPEND write happens at the size it sees, and all clients of a spawn (several
mounts, 9P sessions, SFTP) see each change at once.

Durability (spawn.journal, docs/spawn.md): each operation is appended to the spawn's journal
before it returns, so it survives a kill of any process; ``fsync`` flushes the journal, and
the transaction is checkpointed every few seconds, so a machine crash loses at most the last
seconds of un-fsync'd changes and never corrupts the overlay.

Permissions: every operation takes the caller's credentials (spawn.cred) and checks them
with spawn.access, the one place the rules live (docs/spawn.md, "Permissions").

Saving while clients write (spawn.save): a save snapshots the overlay at generation G and
builds the new archive from that snapshot on another thread. Until it finishes, the engine
keeps a :class:`SaveWindow`: what the rebase needs and the generation stamps cannot tell
(the smallest size each file was truncated to after G, the files spilled after G), and every
name removed in the window leaves a whiteout, since the new base may hold that name.

Bounded local state: with ``overlay_limit``, a write that leaves more page bytes in the
overlay than the limit moves the largest files' contents into the block store (spliced hash
trees, as save writes them) until a quarter of the limit is free again. The file's overlay
record then points at that tree, below ``base_limit`` = its size, and its pages go.

Errors are OSError with the errno a kernel filesystem would give.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import lmdb

from spawn import access
from spawn.access import NOW, R
from spawn.archive import Archive
from spawn.attr import Attr
from spawn.cred import Cred
from spawn.fsformat import NAME_MAX, BadName, Inode, check_name
from spawn.overlay import (
    FLAG_DELETED,
    FLAG_ORPHAN,
    META_PAGE_BYTES,
    PAGE_SIZE,
    ODirent,
    OInode,
    Overlay,
    decode_odirent,
    decode_oinode,
    dirent_key,
    encode_dirent,
    encode_oinode,
    ino_bytes,
    page_key,
)
from store.barrier import writer_session
from store.base import BlockStore
from store.btree import BTree
from store.errors import StoreError
from store.hashtree import TreeReader, TreeWriter
from store.plaincache import PlainCache, PlainRange
from store.score import NULL_SCORE, Score

ROOT_INO = 1
_SMALL = 64 << 10  # a file this small is one leaf: its size is what it occupies
_XATTR_MAX = 64 << 10
#: The largest file, as ext4's with 4 KiB blocks (2^32 - 1 blocks): beyond, EFBIG at the
#: source, so no snapshot holds a size that an export to a local disk cannot make.
MAX_FILE_SIZE = (1 << 44) - 4096
_FEED = 1 << 20  # bytes handed to the tree writer at a time (and between cancellation checks)

log = logging.getLogger(__name__)


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


def _attr(ino: int, i: Inode) -> Attr:
    return Attr(ino, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size, i.atime_ns, i.mtime_ns, i.ctime_ns)


class FileView:
    """A regular file's bytes as the spawn sees them, read through one LMDB transaction,
    and the same bytes written out as a hash tree (save and spill share this code).

    Each thread that reads files gets its own view: the view caches base-tree readers, and
    those caches are not thread-safe, so a save running beside the owner thread must not
    share the engine's.
    """

    def __init__(self, store: BlockStore, ov: Overlay, plain: PlainCache | None = None) -> None:
        self.store = store
        self.ov = ov
        self.plain = plain  # decoded contents kept in memory files (store.plaincache)
        self._readers: dict[bytes, TreeReader] = {}

    def reader(self, score: Score) -> TreeReader:
        r = self._readers.get(score)
        if r is None:
            r = TreeReader(self.store, score)
            if len(self._readers) > 256:
                self._readers.clear()
            self._readers[score] = r
        return r

    def base_bytes(self, o: OInode, start: int, end: int) -> bytes:
        """Bytes [start, end) of the base content, zeros past base_limit."""
        lim = min(end, o.base_limit)
        data = b""
        if start < lim and o.inode.content != NULL_SCORE:
            r = self.reader(o.inode.content)
            data = r.read(start, lim - start) if self.plain is None else self.plain.read(r, start, lim - start)
        return data + bytes(end - start - len(data))

    def plain_range(self, txn, ino: int, o: OInode, offset: int, size: int) -> PlainRange | None:
        """Bytes [offset, offset + size) of the file, clipped to its size, as a range of its
        base content's decoded copy (store.plaincache), when all of them are base content
        (no overlay page in the range, below ``base_limit``) and that content is kept
        there; else None (``read`` them)."""
        end = min(o.inode.size, offset + size)
        if self.plain is None or offset >= end or end > o.base_limit or o.inode.content == NULL_SCORE:
            return None
        cur = txn.cursor(db=self.ov.pages)
        if cur.set_range(page_key(ino, offset // PAGE_SIZE)):
            k = cur.key()
            if k.startswith(ino_bytes(ino)) and int.from_bytes(k[8:], "big") <= (end - 1) // PAGE_SIZE:
                return None
        return self.plain.range(self.reader(o.inode.content), offset, end - offset)

    def page_from(self, stored: bytes | None, o: OInode, page: int) -> bytes:
        """The page's current bytes (up to the file size), given its overlay value if any."""
        start = page * PAGE_SIZE
        end = min(start + PAGE_SIZE, o.inode.size)
        if end <= start:
            return b""
        if stored is not None:
            data = stored[8:]
            return data + bytes(end - start - len(data))
        return self.base_bytes(o, start, end)

    def page(self, txn, ino: int, o: OInode, page: int) -> bytes:
        return self.page_from(txn.get(page_key(ino, page), db=self.ov.pages), o, page)

    def page_numbers(self, txn, ino: int) -> list[int]:
        """The file's pages held in the overlay, ascending."""
        prefix = ino_bytes(ino)
        cur = txn.cursor(db=self.ov.pages)
        out: list[int] = []
        if cur.set_range(prefix):
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(prefix):
                    break
                out.append(int.from_bytes(k[8:], "big"))
        return out

    def read(self, txn, ino: int, o: OInode, offset: int, size: int) -> bytes:
        end = min(o.inode.size, offset + size)
        if offset >= end:
            return b""
        # Overlay pages in the range, then base bytes for the gaps between them, each gap
        # read from the hash tree in one go (a leaf is fetched once, not once per page).
        first, last = offset // PAGE_SIZE, (end - 1) // PAGE_SIZE
        pages: dict[int, bytes] = {}
        cur = txn.cursor(db=self.ov.pages)
        prefix = ino_bytes(ino)
        if cur.set_range(page_key(ino, first)):
            for k, v in cur:
                pg = int.from_bytes(k[8:], "big")
                if not k.startswith(prefix) or pg > last:
                    break
                pages[pg] = v[8:]
        order = sorted(pages)
        out = []
        pos = offset
        while pos < end:
            page = pos // PAGE_SIZE
            p0 = page * PAGE_SIZE
            if page in pages:
                stop = min(end, p0 + PAGE_SIZE)
                data = pages[page]
                piece = data[pos - p0 : stop - p0]
                out.append(piece + bytes(stop - pos - len(piece)))
            else:
                i = bisect.bisect_right(order, page)
                stop = min(end, order[i] * PAGE_SIZE) if i < len(order) else end
                out.append(self.base_bytes(o, pos, stop))
            pos = stop
        return b"".join(out)

    def tree(self, txn, ino: int, o: OInode, check: Callable[[], None] | None = None) -> Score:
        """The file's content as a hash tree, spliced: every base leaf that no overlay page
        touches and that lies below ``base_limit`` is reused by score without being read;
        only the changed ranges are read and chunked. Unchanged content keeps its tree.
        *check* is called between pieces of work (a save uses it to notice cancellation)."""
        inode = o.inode
        size = inode.size
        pages = self.page_numbers(txn, ino)
        base = self.reader(inode.content) if inode.content != NULL_SCORE else None
        if base is not None and not pages and o.base_limit == base.size == size:
            return inode.content
        w = TreeWriter(self.store)
        pos = 0
        limit = min(o.base_limit, size) if base is not None else 0
        if base is not None and limit > 0:
            for score, n in base.leaf_scores():
                a, b = pos, pos + n
                if a >= limit:
                    break
                # A leaf ending exactly at the limit of a file that goes on is the old
                # stream's tail, cut by its end rather than by content: chunk it again with
                # what follows, so appending in pieces (spills) leaves no runt leaves.
                whole = b < limit or b == limit == size
                if whole and not _touched(pages, a, b):
                    w.add_leaf(score, n)
                else:
                    self._write_range(txn, ino, o, pages, w, a, min(b, size), check)
                pos = min(b, size)
        self._write_range(txn, ino, o, pages, w, pos, size, check)
        return w.finish().score

    def _write_range(self, txn, ino: int, o: OInode, pages: list[int], w: TreeWriter,
                     a: int, b: int, check: Callable[[], None] | None) -> None:
        """Feed bytes [a, b) of the file to the tree writer; long runs of zeros that no page
        and no base byte can fill (past base_limit) go in as holes, unread and unstored."""
        limit = o.base_limit if o.inode.content != NULL_SCORE else 0
        while a < b:
            if check is not None:
                check()
            stop = min(b, a + _FEED)
            if a >= limit:
                i = bisect.bisect_left(pages, a // PAGE_SIZE)
                if i == len(pages) or pages[i] != a // PAGE_SIZE:
                    hole_end = min(b, pages[i] * PAGE_SIZE) if i < len(pages) else b
                    if hole_end - a >= PAGE_SIZE:
                        w.write_hole(hole_end - a)
                        a = hole_end
                        continue
            w.write(self.read(txn, ino, o, a, stop - a))
            a = stop


def _touched(pages: list[int], a: int, b: int) -> bool:
    """Does any overlay page overlap the byte range [a, b)?"""
    i = bisect.bisect_left(pages, a // PAGE_SIZE)
    return i < len(pages) and pages[i] * PAGE_SIZE < b


@dataclass
class SaveWindow:
    """What the engine remembers, in memory, while a save runs (spawn.save.SaveJob).

    The overlay's generation stamps say which records changed after the snapshot at ``gen``;
    they cannot say how far a file was truncated after it (its base bytes beyond that must
    read as zeros over the new base too), or that a file's content was spilled after it (its
    overlay record then names a newer tree than the snapshot's, to be kept as it is). A crash
    loses the window, and with it the save, which is all it is needed for.
    """

    gen: int
    truncated: dict[int, int] = field(default_factory=dict)  # ino -> smallest size after gen
    spilled: set[int] = field(default_factory=set)
    abort: Callable[[], None] | None = None  # how Engine.close stops the save


def _get_inode(ov: Overlay, archive: Archive, txn, ino: int) -> OInode | None:
    """The inode as the spawn sees it in *txn*: the overlay's record, else the base's."""
    v = txn.get(ino_bytes(ino), db=ov.inodes)
    if v is not None:
        o = decode_oinode(v)
        return None if o.flags & FLAG_DELETED else o
    try:
        i = archive.inode(ino)
    except LookupError:
        return None
    return OInode(i, i.size if i.is_reg() else 0)


_BASE_INODES = 4096  # decoded base inodes a snapshot reader keeps (cleared when full)


class _SnapshotReader:
    """One thread's reader of a spawn's files from the last checkpoint (see
    ``Engine.read_snapshot``): its own file view, and the archive of the base that the
    checkpoint names (a save's rebase changes it)."""

    def __init__(self, engine: Engine) -> None:
        self.ov = engine.ov
        self.store = engine.store
        self.files = FileView(engine.store, engine.ov, engine.plain)
        self.archive: Archive | None = None
        # The base archive's inodes, decoded once: an archive never changes, so they stay
        # true for as long as the checkpoint names that base (a file the spawn changed is
        # in the overlay, which is looked at first). Decoding one was ~15 % of a 64 KiB read.
        self._base_inodes: dict[int, OInode] = {}

    def read(self, ino: int, offset: int, size: int) -> bytes | None:
        with self.ov.env.begin() as txn:
            o = self._inode(txn, ino)
            return None if o is None else self.files.read(txn, ino, o, offset, size)

    def read_plain(self, ino: int, offset: int, size: int) -> PlainRange | None:
        with self.ov.env.begin() as txn:
            o = self._inode(txn, ino)
            return None if o is None else self.files.plain_range(txn, ino, o, offset, size)

    def _inode(self, txn, ino: int) -> OInode | None:
        """The regular file *ino* as the checkpoint has it, or None (not one, or gone)."""
        base = txn.get(b"base", db=self.ov.meta)
        if self.archive is None or bytes(self.archive.score) != base:
            self.archive = Archive(self.store, base)
            self._base_inodes.clear()
        v = txn.get(ino_bytes(ino), db=self.ov.inodes)
        if v is not None:
            o: OInode | None = decode_oinode(v)
            if o is not None and o.flags & FLAG_DELETED:
                o = None
        else:
            o = self._base_inodes.get(ino)
            if o is None:
                o = _get_inode(self.ov, self.archive, txn, ino)
                if o is not None:
                    if len(self._base_inodes) >= _BASE_INODES:
                        self._base_inodes.clear()
                    self._base_inodes[ino] = o
        if o is None or not o.inode.is_reg():
            return None
        return o


class Engine:
    """One spawn's filesystem. See the module docstring."""

    def __init__(self, store: BlockStore, overlay_dir: str | os.PathLike[str],
                 base: bytes | None = None, *, overlay_limit: int | None = None,
                 plain_cache: PlainCache | None = None) -> None:
        """Open the spawn whose overlay is *overlay_dir*, or make a new one of *base*.

        *overlay_limit* bounds the bytes of file data kept in the overlay (None: no bound);
        past it, writes spill file contents into the block store (see the module docstring).
        *plain_cache* keeps decoded base contents for reads (store.plaincache); the daemon
        shares one among its spawns, as contents are shared.
        """
        if overlay_limit is not None and overlay_limit <= 0:
            raise ValueError("overlay_limit must be positive")
        self.store = store
        self.overlay_limit = overlay_limit
        self.ov = Overlay(overlay_dir)
        with self.ov.op() as txn:
            have = self.ov.get_meta(txn, b"base")
            if have is None:
                if base is None:
                    raise ValueError("a new spawn needs a base root")
                self.archive = Archive(store, base)  # the one block a spawn reads up front
                txn.put(b"base", bytes(base), db=self.ov.meta)
                self.ov.put_u64(txn, b"ino_next", self.archive.root.ino_high)
                self.ov.put_u64(txn, b"gen", 1)
                self.ov.put_u64(txn, META_PAGE_BYTES, 0)
            else:
                self.archive = Archive(store, have)
                if self.ov.get_meta(txn, META_PAGE_BYTES) is None:  # an overlay from before
                    self.ov.put_u64(txn, META_PAGE_BYTES, self.ov.count_page_bytes(txn))
        self.plain = plain_cache  # decoded base contents, shared by the daemon's spawns
        self.files = FileView(store, self.ov, plain_cache)  # the owner thread's reader of file bytes
        self._dirs: dict[bytes, BTree] = {}
        self._allocs: dict[bytes, int] = {}  # hash tree -> bytes of stored leaves
        self._open: dict[int, int] = {}  # ino -> open count (opens do not survive a restart)
        self.saving: SaveWindow | None = None  # set while a save runs (spawn.save)
        self._snap_readers: dict[int, _SnapshotReader] = {}  # thread id -> its reader
        self._snap_lock = threading.Lock()  # a snapshot read in progress vs close
        self._spill_retry_at: int | None = None
        self._purge_orphans()
        self.ov.checkpoint()  # a new spawn is on disk before anyone hears of it

    @property
    def base(self) -> Score:
        return self.archive.score

    @property
    def overlay_bytes(self) -> int:
        """Bytes of file data (pages) in the overlay, as of the last operation. Safe to read
        from any thread, e.g. for a status display."""
        return self.ov.page_bytes

    def close(self) -> None:
        """Close the overlay (a checkpoint); a save still running is aborted first."""
        if self.saving is not None and self.saving.abort is not None:
            self.saving.abort()
        self.saving = None
        with self._snap_lock:  # no other thread's snapshot read is using the environment
            self.ov.close()

    def _reading(self) -> contextlib.AbstractContextManager[lmdb.Transaction]:
        """The view for an operation that changes nothing: on the owner thread, every
        operation so far, checkpointed or not (spawn.overlay)."""
        return self.ov.reading()

    def checkpoint(self) -> None:
        """Commit what the journal holds (spawn.journal); owner thread. The host calls it
        when the spawn is idle, so other threads' readers see the latest state."""
        self.ov.checkpoint()

    # -- inodes ------------------------------------------------------------------------

    def _get(self, txn, ino: int) -> OInode | None:
        return _get_inode(self.ov, self.archive, txn, ino)

    def _attr(self, txn, ino: int, o: OInode) -> Attr:
        """The attributes clients see, with the bytes a regular file's data occupies: its
        base tree's stored leaves below ``base_limit`` (holes excluded) and its pages."""
        a = _attr(ino, o.inode)
        i = o.inode
        if not i.is_reg() or i.size <= _SMALL:
            return a  # one leaf at most: as big as it is (nothing is read to find out)
        alloc = 0
        limit = min(o.base_limit, i.size)
        if limit > 0 and i.content != NULL_SCORE:
            alloc += min(self._tree_alloc(i.content), limit)
        prefix = ino_bytes(ino)
        cur = txn.cursor(db=self.ov.pages)
        if cur.set_range(prefix):
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(prefix):
                    break
                page = int.from_bytes(k[8:], "big")
                if page * PAGE_SIZE >= limit or i.content == NULL_SCORE:
                    alloc += min(PAGE_SIZE, i.size - page * PAGE_SIZE)
        return replace(a, alloc=min(alloc, i.size))

    def _tree_alloc(self, score: Score) -> int:
        """Bytes of stored (non-hole) leaves in a hash tree; cached, trees never change."""
        n = self._allocs.get(score)
        if n is None:
            n = sum(size for leaf, size in self.files.reader(score).leaf_scores() if leaf != NULL_SCORE)
            if len(self._allocs) > 4096:
                self._allocs.clear()
            self._allocs[score] = n
        return n

    def _need(self, txn, ino: int) -> OInode:
        o = self._get(txn, ino)
        if o is None:
            raise _err(errno.ENOENT, f"inode {ino}")
        return o

    def _put(self, txn, ino: int, o: OInode) -> None:
        txn.put(ino_bytes(ino), encode_oinode(o), db=self.ov.inodes)

    def _new_ino(self, txn) -> int:
        n = self.ov.get_u64(txn, b"ino_next", 2)
        self.ov.put_u64(txn, b"ino_next", n + 1)
        return n

    # -- directories -------------------------------------------------------------------

    def _base_dir(self, o: OInode) -> BTree | None:
        if o.inode.content == NULL_SCORE:
            return None
        t = self._dirs.get(o.inode.content)
        if t is None:
            t = BTree(self.store, o.inode.content)
            if len(self._dirs) > 1024:
                self._dirs.clear()
            self._dirs[o.inode.content] = t
        return t

    def _lookup(self, txn, dir_ino: int, d: OInode, name: bytes) -> int | None:
        v = txn.get(dirent_key(dir_ino, name), db=self.ov.dirents)
        if v is not None:
            return decode_odirent(v).ino
        t = self._base_dir(d)
        if t is None:
            return None
        e = t.get(name)
        return int.from_bytes(e.value[:8], "big") if e is not None else None

    def _entries(self, txn, dir_ino: int, d: OInode) -> Iterator[tuple[bytes, int]]:
        """(name, ino) of a directory, sorted by name: base merged with the overlay."""
        prefix = ino_bytes(dir_ino)
        cur = txn.cursor(db=self.ov.dirents)
        over: list[tuple[bytes, ODirent]] = []
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                over.append((k[8:], decode_odirent(v)))
        t = self._base_dir(d)
        base = ((e.key, int.from_bytes(e.value[:8], "big")) for e in t.items()) if t is not None else iter(())
        oi = 0
        for name, ino in base:
            while oi < len(over) and over[oi][0] < name:
                if over[oi][1].ino is not None:
                    yield over[oi][0], over[oi][1].ino  # type: ignore[misc]
                oi += 1
            if oi < len(over) and over[oi][0] == name:
                if over[oi][1].ino is not None:
                    yield name, over[oi][1].ino  # type: ignore[misc]
                oi += 1
                continue
            yield name, ino
        for name, od in over[oi:]:
            if od.ino is not None:
                yield name, od.ino

    def _set_dirent(self, txn, dir_ino: int, d: OInode, name: bytes, ino: int | None,
                    mode: int = 0) -> None:
        key = dirent_key(dir_ino, name)
        gen = self._gen(txn)
        if ino is not None:
            dtype = stat.S_IFMT(mode) >> 12
            txn.put(key, encode_dirent(ODirent(gen, ino, dtype)), db=self.ov.dirents)
            return
        t = self._base_dir(d)
        # While a save runs, the name may be in the snapshot (made before it) though not in
        # the old base: the new base will hold it, so only a whiteout keeps it gone.
        if self.saving is not None or (t is not None and t.get(name) is not None):
            txn.put(key, encode_dirent(ODirent(gen, None)), db=self.ov.dirents)
        else:
            txn.delete(key, db=self.ov.dirents)

    def _gen(self, txn) -> int:
        return self.ov.get_u64(txn, b"gen", 1)

    def _dir(self, txn, ino: int) -> OInode:
        d = self._need(txn, ino)
        if not d.inode.is_dir():
            raise _err(errno.ENOTDIR)
        return d

    @staticmethod
    def _name(name: bytes) -> bytes:
        try:
            return check_name(name)
        except BadName as e:
            raise _err(errno.ENAMETOOLONG if len(name) > NAME_MAX else errno.EINVAL, str(e)) from None

    def _touch(self, txn, ino: int, o: OInode, *, m: bool = True, c: bool = True, **kw: object) -> OInode:
        now = time.time_ns()
        upd: dict[str, object] = dict(kw)
        if m:
            upd["mtime_ns"] = now
        if c:
            upd["ctime_ns"] = now
        o = OInode(_with(o.inode, **upd), o.base_limit, o.flags, self._gen(txn))
        self._put(txn, ino, o)
        return o

    # -- the operations ------------------------------------------------------------------
    # Each takes the caller's credentials first and asks spawn.access before it reveals or
    # changes anything (docs/spawn.md, "Permissions"). read, write, release and fallocate act
    # on a handle that a checked open gave the adapter (a FUSE file handle, an opened 9P fid,
    # an SFTP handle, a raw session's open table) and check only what a write changes.

    def getattr(self, cred: Cred, ino: int) -> Attr:
        with self._reading() as txn:
            return self._attr(txn, ino, self._need(txn, ino))

    def lookup(self, cred: Cred, parent: int, name: bytes) -> Attr:
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG, os.fsdecode(name[:32]) + "…")
        with self._reading() as txn:
            d = self._dir(txn, parent)
            access.search(cred, d.inode)
            ino = self._lookup(txn, parent, d, name)
            if ino is None:
                raise _err(errno.ENOENT, os.fsdecode(name))
            return self._attr(txn, ino, self._need(txn, ino))

    def readdir(self, cred: Cred, ino: int) -> list[tuple[bytes, Attr]]:
        with self._reading() as txn:
            d = self._dir(txn, ino)
            access.check(cred, d.inode, R)
            return [(n, self._attr(txn, i, self._need(txn, i))) for n, i in self._entries(txn, ino, d)]

    def _make(self, cred: Cred, parent: int, name: bytes, mode: int, *, rdev: int = 0,
              target: bytes = b"") -> Attr:
        name = self._name(name)
        with self.ov.op() as txn:
            d = self._dir(txn, parent)
            access.search(cred, d.inode)
            if self._lookup(txn, parent, d, name) is not None:
                raise _err(errno.EEXIST, os.fsdecode(name))
            access.may_create(cred, d.inode)
            access.may_mknod(cred, mode)
            ino = self._new_ino(txn)
            now = time.time_ns()
            is_dir = stat.S_ISDIR(mode)
            uid, gid, mode = access.new_owner(cred, d.inode, mode)
            i = Inode(mode=mode, uid=uid, gid=gid, nlink=2 if is_dir else 1, size=len(target),
                      atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=rdev, inline=target)
            self._put(txn, ino, OInode(i, 0, 0, self._gen(txn)))
            self._set_dirent(txn, parent, d, name, ino, mode)
            self._touch(txn, parent, d, nlink=d.inode.nlink + (1 if is_dir else 0))
            return _attr(ino, i)

    def create(self, cred: Cred, parent: int, name: bytes, mode: int, *, open: bool = False) -> Attr:
        """A new regular file, owned by the caller; *open* also counts an open handle, in
        the same call (FUSE's create opens the file it makes)."""
        a = self._make(cred, parent, name, stat.S_IFREG | stat.S_IMODE(mode))
        if open:
            self._open[a.ino] = self._open.get(a.ino, 0) + 1
        return a

    def mkdir(self, cred: Cred, parent: int, name: bytes, mode: int) -> Attr:
        """A new directory: *mode* without setuid and setgid, as Linux's vfs_mkdir keeps only
        the permission bits and sticky (a setgid parent then gives setgid back)."""
        return self._make(cred, parent, name, stat.S_IFDIR | (stat.S_IMODE(mode) & 0o1777))

    def mknod(self, cred: Cred, parent: int, name: bytes, mode: int, rdev: int) -> Attr:
        if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            raise _err(errno.EINVAL, "mknod of this file type")
        return self._make(cred, parent, name, mode, rdev=rdev)

    def symlink(self, cred: Cred, parent: int, name: bytes, target: bytes) -> Attr:
        if not target or len(target) > 4095 or b"\0" in target:
            raise _err(errno.EINVAL if target else errno.ENOENT, "symlink target")
        return self._make(cred, parent, name, stat.S_IFLNK | 0o777, target=target)

    def readlink(self, cred: Cred, ino: int) -> bytes:
        with self._reading() as txn:
            o = self._need(txn, ino)
            if not o.inode.is_symlink():
                raise _err(errno.EINVAL)
            return o.inode.inline

    def link(self, cred: Cred, ino: int, parent: int, name: bytes) -> Attr:
        name = self._name(name)
        with self.ov.op() as txn:
            o = self._need(txn, ino)
            d = self._dir(txn, parent)
            access.search(cred, d.inode)
            if self._lookup(txn, parent, d, name) is not None:  # the kernel checks this first
                raise _err(errno.EEXIST, os.fsdecode(name))
            access.may_link(cred, o.inode)
            access.may_create(cred, d.inode)
            if o.inode.is_dir():
                raise _err(errno.EPERM, "hard link to a directory")
            self._set_dirent(txn, parent, d, name, ino, o.inode.mode)
            o = self._touch(txn, ino, o, m=False, nlink=o.inode.nlink + 1)
            self._touch(txn, parent, d)
            return self._attr(txn, ino, o)

    def _drop_inode(self, txn, ino: int, o: OInode) -> None:
        """The last name is gone: delete the inode and its pages."""
        self._delete_pages(txn, ino)
        self._put(txn, ino, OInode(o.inode, 0, FLAG_DELETED, self._gen(txn)))

    def _delete_pages(self, txn, ino: int) -> None:
        cur = txn.cursor(db=self.ov.pages)
        prefix = ino_bytes(ino)
        freed = 0
        doomed = []
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                freed += len(v) - 8
                doomed.append(k)
        for k in doomed:
            txn.delete(k, db=self.ov.pages)
        self._count_pages(txn, -freed)

    def _count_pages(self, txn, delta: int) -> None:
        """Keep the overlay's page-byte count (meta page_bytes) in the same transaction."""
        if delta:
            have = self.ov.get_u64(txn, META_PAGE_BYTES)
            self.ov.put_u64(txn, META_PAGE_BYTES, max(0, have + delta))

    def open(self, cred: Cred, ino: int, flags: int = os.O_RDONLY) -> Attr:
        """open(2) with *flags* (O_ACCMODE, O_TRUNC): check, and count an open file handle,
        so that unlinking the file keeps its data until release (a directory: check only,
        nothing to release). O_TRUNC truncates in the same call, so that no other client's
        write comes between the truncation and the open."""
        with self._reading() as txn:
            o = self._need(txn, ino)
            access.may_open(cred, o.inode, flags)
            if o.inode.is_dir():
                return self._attr(txn, ino, o)
        if flags & os.O_TRUNC and o.inode.is_reg():
            a = self.setattr(cred, ino, size=0, handle=True)
        else:
            a = self.getattr(cred, ino)
        self._open[ino] = self._open.get(ino, 0) + 1
        return a

    def release(self, cred: Cred, ino: int) -> None:
        n = self._open.get(ino, 0) - 1
        if n > 0:
            self._open[ino] = n
            return
        self._open.pop(ino, None)
        with self.ov.op() as txn:
            v = txn.get(ino_bytes(ino), db=self.ov.inodes)
            if v is not None:
                o = decode_oinode(v)
                if o.flags & FLAG_ORPHAN:
                    self._drop_inode(txn, ino, o)

    def _purge_orphans(self) -> None:
        """After a restart nothing is open: orphans left by the last run go."""
        with self.ov.op() as txn:
            doomed = []
            for k, v in txn.cursor(db=self.ov.inodes):
                o = decode_oinode(v)
                if o.flags & FLAG_ORPHAN:
                    doomed.append((int.from_bytes(k, "big"), o))
            for ino, o in doomed:
                self._drop_inode(txn, ino, o)

    def _unlinked(self, txn, ino: int, o: OInode) -> None:
        """A name of *ino* went away: count it down; at zero, drop it or keep it as an orphan."""
        if o.inode.nlink > 1:
            self._touch(txn, ino, o, m=False, nlink=o.inode.nlink - 1)
        elif self._open.get(ino):
            self._put(txn, ino, OInode(_with(o.inode, nlink=0, ctime_ns=time.time_ns()), o.base_limit, FLAG_ORPHAN, self._gen(txn)))
        else:
            self._drop_inode(txn, ino, o)

    def _child(self, txn, parent: int, name: bytes) -> tuple[OInode, int, OInode]:
        """(the directory, the child's inode number, the child) or ENOENT."""
        d = self._dir(txn, parent)
        ino = self._lookup(txn, parent, d, name)
        if ino is None:
            raise _err(errno.ENOENT, os.fsdecode(name))
        return d, ino, self._need(txn, ino)

    def _child_checked(self, cred: Cred, txn, parent: int, name: bytes) -> tuple[OInode, int, OInode]:
        """``_child`` of a name *cred* is about to remove: search, then delete permission."""
        d = self._dir(txn, parent)
        access.search(cred, d.inode)
        d, ino, o = self._child(txn, parent, name)
        access.may_delete(cred, d.inode, o.inode)
        return d, ino, o

    def unlink(self, cred: Cred, parent: int, name: bytes) -> None:
        with self.ov.op() as txn:
            d, ino, o = self._child_checked(cred, txn, parent, name)
            if o.inode.is_dir():
                raise _err(errno.EISDIR, os.fsdecode(name))
            self._set_dirent(txn, parent, d, name, None)
            self._touch(txn, parent, d)
            self._unlinked(txn, ino, o)

    def rmdir(self, cred: Cred, parent: int, name: bytes) -> None:
        if name in (b".", b".."):
            raise _err(errno.EINVAL if name == b"." else errno.ENOTEMPTY)
        with self.ov.op() as txn:
            d, ino, o = self._child_checked(cred, txn, parent, name)
            if not o.inode.is_dir():
                raise _err(errno.ENOTDIR, os.fsdecode(name))
            if next(self._entries(txn, ino, o), None) is not None:
                raise _err(errno.ENOTEMPTY, os.fsdecode(name))
            self._set_dirent(txn, parent, d, name, None)
            self._touch(txn, parent, d, nlink=d.inode.nlink - 1)
            self._drop_inode(txn, ino, o)

    def rename(self, cred: Cred, p1: int, n1: bytes, p2: int, n2: bytes, *, noreplace: bool = False,
               exchange: bool = False, whiteout: bool = False) -> None:
        """rename(2), and renameat2's flags: *noreplace*, *exchange*, and *whiteout*: leave
        a whiteout (a 0/0 character device of the caller's) at the old name, in the same
        operation, as overlayfs asks of the filesystem under it. Checks in Linux's order."""
        n2 = self._name(n2)
        if whiteout and exchange:
            raise _err(errno.EINVAL, "RENAME_WHITEOUT with RENAME_EXCHANGE")
        if whiteout:
            access.may_whiteout(cred)
        with self.ov.op() as txn:
            d1 = self._dir(txn, p1)
            access.search(cred, d1.inode)
            src = self._lookup(txn, p1, d1, n1)
            if src is None:
                raise _err(errno.ENOENT, os.fsdecode(n1))
            d2 = self._dir(txn, p2) if p2 != p1 else d1
            access.search(cred, d2.inode)
            dst = self._lookup(txn, p2, d2, n2)
            so = self._need(txn, src)
            if exchange:
                if dst is None:
                    raise _err(errno.ENOENT, os.fsdecode(n2))
                do = self._need(txn, dst)
                if dst != src:
                    access.may_delete(cred, d1.inode, so.inode)
                    access.may_delete(cred, d2.inode, do.inode)
                    if p1 != p2:
                        for x in (so, do):
                            if x.inode.is_dir():
                                access.check(cred, x.inode, access.W)
                self._set_dirent(txn, p1, d1, n1, dst, do.inode.mode)
                self._set_dirent(txn, p2, d2, n2, src, so.inode.mode)
                if p1 != p2 and so.inode.is_dir() != do.inode.is_dir():
                    delta = 1 if so.inode.is_dir() else -1
                    d1 = self._touch(txn, p1, d1, nlink=d1.inode.nlink - delta)
                    d2 = self._touch(txn, p2, d2, nlink=d2.inode.nlink + delta)
                self._touch_dir(txn, p1)
                self._touch_dir(txn, p2)
                return
            if so.inode.is_dir() and p1 != p2 and self._is_ancestor(txn, src, p2):
                raise _err(errno.EINVAL, "cannot move a directory into itself")
            if dst is not None and dst != src and self._is_dir(txn, dst) and self._is_ancestor(txn, dst, p1):
                raise _err(errno.ENOTEMPTY, "cannot replace an ancestor of the source")
            if dst is not None and noreplace:
                raise _err(errno.EEXIST, os.fsdecode(n2))
            if dst == src:
                return  # same file: POSIX says do nothing
            access.may_delete(cred, d1.inode, so.inode)
            if dst is None:
                access.may_create(cred, d2.inode)
            else:
                access.may_delete(cred, d2.inode, self._need(txn, dst).inode)
            if so.inode.is_dir() and p1 != p2:  # its ".." changes
                access.check(cred, so.inode, access.W)
            if dst is not None:
                do = self._need(txn, dst)
                if so.inode.is_dir():
                    if not do.inode.is_dir():
                        raise _err(errno.ENOTDIR, os.fsdecode(n2))
                    if next(self._entries(txn, dst, do), None) is not None:
                        raise _err(errno.ENOTEMPTY, os.fsdecode(n2))
                    d2 = self._touch(txn, p2, d2, nlink=d2.inode.nlink - 1)
                    if p1 == p2:
                        d1 = d2
                    self._drop_inode(txn, dst, do)
                else:
                    if do.inode.is_dir():
                        raise _err(errno.EISDIR, os.fsdecode(n2))
                    self._unlinked(txn, dst, do)
            self._set_dirent(txn, p1, d1, n1, None)
            self._set_dirent(txn, p2, d2, n2, src, so.inode.mode)  # d2 gives the base tree only
            if whiteout:
                wino = self._new_ino(txn)
                now = time.time_ns()
                w = Inode(mode=stat.S_IFCHR, uid=cred.uid, gid=cred.gid, nlink=1,
                          atime_ns=now, mtime_ns=now, ctime_ns=now)
                self._put(txn, wino, OInode(w, 0, 0, self._gen(txn)))
                self._set_dirent(txn, p1, d1, n1, wino, stat.S_IFCHR)
            moved_dir = so.inode.is_dir() and p1 != p2
            self._touch_dir(txn, p1, -1 if moved_dir else 0)
            if p1 != p2:
                self._touch_dir(txn, p2, 1 if moved_dir else 0)
            self._touch(txn, src, self._need(txn, src), m=False)

    def _touch_dir(self, txn, ino: int, dnlink: int = 0) -> OInode:
        """Re-read a directory (earlier steps may have changed it), adjust nlink, touch it."""
        d = self._need(txn, ino)
        return self._touch(txn, ino, d, nlink=d.inode.nlink + dnlink)

    def _is_dir(self, txn, ino: int) -> bool:
        o = self._get(txn, ino)
        return o is not None and o.inode.is_dir()

    def _is_ancestor(self, txn, a: int, b: int) -> bool:
        """Is directory *a* an ancestor of (or equal to) directory *b*? (Search from a.)"""
        stack = [a]
        seen = set()
        while stack:
            x = stack.pop()
            if x == b:
                return True
            if x in seen:
                continue
            seen.add(x)
            o = self._need(txn, x)
            for _n, i in self._entries(txn, x, o):
                c = self._get(txn, i)
                if c is not None and c.inode.is_dir():
                    stack.append(i)
        return False

    # -- contents ----------------------------------------------------------------------

    def read(self, cred: Cred, ino: int, offset: int, size: int) -> bytes:
        with self._reading() as txn:
            o = self._need(txn, ino)
            if o.inode.is_dir():
                raise _err(errno.EISDIR)
            if not o.inode.is_reg():
                raise _err(errno.EINVAL)
            return self.files.read(txn, ino, o, offset, size)

    def read_snapshot(self, cred: Cred, ino: int, offset: int, size: int) -> bytes | None:
        """``read`` from a thread that is not the owner, without a hop to it: the bytes, or
        None when this cannot be done safely here (the caller then asks the owner).

        Safe only while the overlay is *clean*: every completed operation is in a committed
        LMDB transaction, so a read transaction begun now sees all of them (a change still
        running on the owner thread is concurrent with this read, which may then come
        before it). The reader has its own transaction, file view and archive (their caches
        are not thread-safe; the block store is), one per calling thread. Like ``read``, it
        checks nothing about *cred*: reads go through a handle an open checked."""
        return self._from_snapshot(_SnapshotReader.read, ino, offset, size)

    def read_plain_snapshot(self, cred: Cred, ino: int, offset: int, size: int) -> PlainRange | None:
        """``read_snapshot`` as a range of a decoded content (store.plaincache) that an
        exporter can hand to the kernel: under the same conditions, and only when every
        byte asked for is base content kept there; None otherwise (``read_snapshot`` or
        ``read`` then). The range's bytes cannot change under it: a content never does."""
        if self.plain is None:
            return None
        return self._from_snapshot(_SnapshotReader.read_plain, ino, offset, size)

    def _from_snapshot(self, how: Callable[..., Any], ino: int, offset: int, size: int) -> Any:
        """*how* (a ``_SnapshotReader`` method) by this thread's reader, if the overlay is
        clean and open; None otherwise or if it fails (the owner then answers)."""
        if not self.ov.clean:
            return None
        r = self._snap_readers.get(threading.get_ident())
        if r is None:
            r = self._snap_readers[threading.get_ident()] = _SnapshotReader(self)
        with self._snap_lock:
            if self.ov.closed:
                return None
            try:
                return how(r, ino, offset, size)
            except Exception:  # the owner gives the proper answer (or error)
                return None

    def write(self, cred: Cred, ino: int, offset: int, data: bytes, *, append: bool = False) -> int:
        """Write *data* at *offset* (at the end, atomically, with *append*). A write by
        anyone but root also clears setuid (and setgid, when group-executable), in the same
        operation, as on Linux."""
        with self.ov.op() as txn:
            o = self._need(txn, ino)
            if not o.inode.is_reg():
                raise _err(errno.EISDIR if o.inode.is_dir() else errno.EINVAL)
            if append:
                offset = o.inode.size
            if offset < 0:
                raise _err(errno.EINVAL)
            if not data:
                return 0  # POSIX: a zero-length write changes nothing, not even the size
            end = offset + len(data)
            if end > MAX_FILE_SIZE:
                raise _err(errno.EFBIG, f"a file ends at {MAX_FILE_SIZE} bytes at most")
            new_size = max(o.inode.size, end)
            gen = self._gen(txn).to_bytes(8, "big")
            view = memoryview(data)
            pos = offset
            grown = 0
            while pos < end:
                page = pos // PAGE_SIZE
                p0 = page * PAGE_SIZE
                key = page_key(ino, page)
                stored = txn.get(key, db=self.ov.pages)
                a, b = pos - p0, min(end, p0 + PAGE_SIZE) - p0
                if a == 0 and b >= min(PAGE_SIZE, max(0, o.inode.size - p0)):
                    # the write covers every byte the page has: nothing to read or merge
                    value = gen + view[pos - offset : pos - offset + b]
                    size = b
                else:
                    cur = bytearray(self.files.page_from(stored, o, page))
                    if len(cur) < b:
                        cur += bytes(b - len(cur))
                    cur[a:b] = view[pos - offset : pos - offset + (b - a)]
                    value = gen + cur
                    size = len(cur)
                txn.put(key, value, db=self.ov.pages)
                grown += size - (len(stored) - 8 if stored is not None else 0)
                pos = p0 + b
            self._count_pages(txn, grown)
            killed = access.after_write(cred, o.inode)
            extra = {} if killed is None else {"mode": killed}
            self._touch(txn, ino, o, size=new_size, **extra)
        self._maybe_spill()
        return len(data)

    def _truncate(self, txn, ino: int, o: OInode, size: int) -> OInode:
        if size < 0:
            raise _err(errno.EINVAL)
        if size > MAX_FILE_SIZE:
            raise _err(errno.EFBIG, f"a file ends at {MAX_FILE_SIZE} bytes at most")
        if not o.inode.is_reg():
            raise _err(errno.EISDIR if o.inode.is_dir() else errno.EINVAL)
        if self.saving is not None:
            t = self.saving.truncated
            t[ino] = min(t.get(ino, size), size)
        if size < o.inode.size:
            last = size // PAGE_SIZE
            cur = txn.cursor(db=self.ov.pages)
            freed = 0
            todo: list[tuple[bytes, bytes | None]] = []  # (key, kept part or None: delete)
            prefix = ino_bytes(ino)
            if cur.set_range(page_key(ino, last)):
                for k, v in cur:
                    if k[:8] != prefix:
                        break
                    pg = int.from_bytes(k[8:], "big")
                    if pg == last and size % PAGE_SIZE:
                        keep = v[: 8 + size % PAGE_SIZE]
                        freed += len(v) - len(keep)
                        todo.append((k, keep))
                        continue
                    freed += len(v) - 8
                    todo.append((k, None))
            for k, keep in todo:
                if keep is None:
                    txn.delete(k, db=self.ov.pages)
                else:
                    txn.put(k, keep, db=self.ov.pages)
            self._count_pages(txn, -freed)
        limit = min(o.base_limit, size)
        return OInode(o.inode, limit, o.flags, o.gen)

    def setattr(self, cred: Cred, ino: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None, handle: bool = False, chown: bool = False) -> Attr:
        """chmod, chown, truncate, utimes in one (a time of ``NOW``: the current time).
        *handle*: a truncation through a handle opened for writing (ftruncate), which the
        open has checked; *chown*: a chown to the same owner and group (it still drops
        setuid and setgid). Mode changes the rules imply are made in the same operation
        (spawn.access.setattr_changes)."""
        with self.ov.op() as txn:
            o = self._need(txn, ino)
            implied = access.setattr_changes(cred, o.inode, mode=mode, uid=uid, gid=gid, size=size,
                                             atime_ns=atime_ns, mtime_ns=mtime_ns, handle=handle,
                                             chown=chown)
            kw: dict[str, object] = {}
            if size is not None:
                o = self._truncate(txn, ino, o, size)
                kw["size"] = size
            if mode is not None:
                kw["mode"] = stat.S_IFMT(o.inode.mode) | stat.S_IMODE(mode)
            kw.update(implied)
            if uid is not None:
                kw["uid"] = uid
            if gid is not None:
                kw["gid"] = gid
            now = time.time_ns()
            if atime_ns is not None:
                kw["atime_ns"] = now if atime_ns == NOW else atime_ns
            if mtime_ns is not None:
                kw["mtime_ns"] = now if mtime_ns == NOW else mtime_ns
            o = self._touch(txn, ino, o, m=size is not None and mtime_ns is None, **kw)
            return self._attr(txn, ino, o)

    def fallocate(self, cred: Cred, ino: int, offset: int, length: int, mode: int = 0) -> None:
        """fallocate(2): space is not reserved (the overlay and the store allocate as they
        write), but sizes and zeros are as on a local filesystem: mode 0 extends the file,
        KEEP_SIZE changes nothing, PUNCH_HOLE and ZERO_RANGE make the range read as zeros."""
        keep, punch, zero = 0x01, 0x02, 0x10
        if offset < 0 or length <= 0:
            raise _err(errno.EINVAL)
        if mode & ~(keep | punch | zero) or (mode & punch and not mode & keep) or (mode & punch and mode & zero):
            raise _err(errno.EOPNOTSUPP, f"fallocate mode {mode:#x}")
        end = offset + length
        if end > MAX_FILE_SIZE:
            raise _err(errno.EFBIG, f"a file ends at {MAX_FILE_SIZE} bytes at most")
        with self._reading() as txn:
            o = self._need(txn, ino)
            if not o.inode.is_reg():
                raise _err(errno.EISDIR if o.inode.is_dir() else errno.ENODEV)
            size = o.inode.size
        if mode & (punch | zero):
            stop = min(end, size)
            pos = offset
            while pos < stop:
                n = min(stop - pos, 1 << 20)
                self.write(cred, ino, pos, bytes(n))
                pos += n
        if not mode & keep and end > size:
            self.setattr(cred, ino, size=end, handle=True)

    # -- spilling to the block store ---------------------------------------------------

    def _maybe_spill(self) -> None:
        """After a write: if the overlay holds more page bytes than its limit, spill.

        The write has committed whatever happens here, so no failure may reach the client
        as the write's: if the store fails (disk full), the data simply stays in the overlay
        and the write still succeeds; the next attempt waits until another quarter of the
        limit has been written, so a failing store does not cost a tree write per write.
        """
        limit = self.overlay_limit
        if limit is None:
            return
        used = self.overlay_bytes
        if used <= limit or (self._spill_retry_at is not None and used <= self._spill_retry_at):
            return
        try:
            self.spill(limit - limit // 4)
        except Exception as exc:
            expected = isinstance(exc, (StoreError, OSError))
            log.warning("spawn overlay over its limit (%d > %d bytes); spill failed: %s",
                        used, limit, exc, exc_info=not expected)
            self._spill_retry_at = used + limit // 4
        else:
            self._spill_retry_at = None

    def spill(self, target: int = 0) -> int:
        """Move file contents from the overlay into the block store, largest files first,
        until at most *target* page bytes remain; return the bytes moved.

        Each spilled file becomes a hash tree (spliced over its old content, so only what the
        pages hold is chunked and stored), which its overlay record then names with
        ``base_limit`` = its size; its pages go. The store is synced before the overlay
        transaction commits, so the overlay never names a tree that a crash could lose.
        During a save the spilled files are noted in the save window: their records then
        carry content newer than the snapshot, which the rebase keeps as it is.

        It is a writer session (store.barrier): the trees it writes are named only by the
        overlay record journaled at its end, which an online prune must see.
        """
        with writer_session(self.store, "spill"):
            return self._spill(target)

    def _spill(self, target: int) -> int:
        per_file: dict[bytes, int] = {}
        with self._reading() as txn:
            for k, v in txn.cursor(db=self.ov.pages):
                key = k[:8]
                per_file[key] = per_file.get(key, 0) + len(v) - 8
        used = sum(per_file.values())
        if used <= target:
            return 0
        order = sorted(per_file.items(), key=lambda kv: (-kv[1], kv[0]))
        moved = 0
        with self.ov.op() as txn:
            gen = self._gen(txn)
            spilled = []
            for key, n in order:
                if used - moved <= target:
                    break
                ino = int.from_bytes(key, "big")
                o = self._get(txn, ino)
                if o is None or not o.inode.is_reg():
                    continue  # not reachable: pages belong to live regular files
                tree = self.files.tree(txn, ino, o)
                self._put(txn, ino, OInode(replace(o.inode, content=tree), o.inode.size,
                                           o.flags, gen))
                self._delete_pages(txn, ino)
                spilled.append(ino)
                moved += n
            self.store.sync()
        if self.saving is not None:
            self.saving.spilled.update(spilled)
        return moved

    # -- xattrs ------------------------------------------------------------------------

    def getxattr(self, cred: Cred, ino: int, name: bytes) -> bytes:
        with self._reading() as txn:
            i = self._need(txn, ino).inode
            access.may_xattr(cred, i, name, write=False)
            for k, v in i.xattrs:
                if k == name:
                    return v
        raise _err(errno.ENODATA, os.fsdecode(name))

    def listxattr(self, cred: Cred, ino: int) -> list[bytes]:
        with self._reading() as txn:
            return [k for k, _ in self._need(txn, ino).inode.xattrs if access.visible_xattr(cred, k)]

    def setxattr(self, cred: Cred, ino: int, name: bytes, value: bytes, *, create: bool = False,
                 replace: bool = False) -> None:
        if not name or len(name) > 255 or len(value) > _XATTR_MAX:
            raise _err(errno.ERANGE if name else errno.EINVAL)
        with self.ov.op() as txn:
            o = self._need(txn, ino)
            access.may_xattr(cred, o.inode, name, write=True)
            attrs = dict(o.inode.xattrs)
            if create and name in attrs:
                raise _err(errno.EEXIST)
            if replace and name not in attrs:
                raise _err(errno.ENODATA)
            attrs[name] = value
            self._touch(txn, ino, o, m=False, xattrs=tuple(sorted(attrs.items())))

    def removexattr(self, cred: Cred, ino: int, name: bytes) -> None:
        with self.ov.op() as txn:
            o = self._need(txn, ino)
            access.may_xattr(cred, o.inode, name, write=True)
            attrs = dict(o.inode.xattrs)
            if name not in attrs:
                raise _err(errno.ENODATA)
            del attrs[name]
            self._touch(txn, ino, o, m=False, xattrs=tuple(sorted(attrs.items())))

    # -- durability --------------------------------------------------------------------

    def fsync(self, cred: Cred) -> None:
        """Everything so far survives a machine crash (spawn.journal)."""
        self.ov.sync()

    def statfs(self, cred: Cred) -> tuple[int, int, int]:
        """(total, free, available) bytes of the disk that holds this spawn's overlay: what
        a client can still write before local state spills or the disk fills."""
        v = os.statvfs(self.ov.path)
        return v.f_blocks * v.f_frsize, v.f_bfree * v.f_frsize, v.f_bavail * v.f_frsize


def _fields(i: Inode) -> dict[str, object]:
    return {f: getattr(i, f) for f in i.__dataclass_fields__}


def _with(i: Inode, **kw: object) -> Inode:
    return Inode(**{**_fields(i), **kw})  # type: ignore[arg-type]
