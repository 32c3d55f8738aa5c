"""Save: turn a spawn's overlay into a new archive root (a snapshot), then rebase the spawn.

What is written is what changed:

* a changed regular file gets a new hash tree (its bytes streamed through the chunker; leaves
  that did not change dedup against the store, so only changed leaves are new blocks);
* a directory with changed entries gets its b-tree updated along the changed paths
  (O(changes * log n) blocks); a new directory's b-tree is built;
* the inode table is updated along the paths of changed inodes;
* then one new ROOT block, whose ``prev`` is the root the spawn was based on.

Crash safety: the root is synced to the store before the spawn is rebased, and the rebase
(new base, overlay emptied) is one LMDB transaction, so a kill at any moment leaves either
the old base with all its changes or the new base. The caller records the name only after
``save`` returns, so no name ever points at an incomplete root.

This first version runs on the engine's thread: writers wait while it runs. The pause is
proportional to the data changed (whole changed files are re-chunked); a concurrent save
from an LMDB snapshot (the generation stamps in spawn.overlay) is the planned next step.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import replace

from spawn.archive import Archive
from spawn.engine import Engine
from spawn.fsformat import Inode, Root, encode_dirent, encode_inode, encode_root, ino_key
from spawn.overlay import (
    FLAG_DELETED,
    FLAG_ORPHAN,
    PAGE_SIZE,
    decode_odirent,
    decode_oinode,
    ino_bytes,
)
from store.block import BlockType, encode_refs
from store.btree import BTree, Entry, build, update
from store.hashtree import TreeWriter
from store.score import NULL_SCORE, Score


def save(engine: Engine, *, name: str = "", user: str = "", time_ns: int | None = None) -> Score:
    """Write the spawn's current state as a new root, rebase the spawn on it, return it."""
    e = engine
    store = e.store
    with e.ov.env.begin() as txn:
        dirents: dict[int, list[tuple[bytes, int | None, int]]] = {}
        for k, v in txn.cursor(db=e.ov.dirents):
            d = decode_odirent(v)
            dirents.setdefault(int.from_bytes(k[:8], "big"), []).append((k[8:], d.ino, d.dtype))
        changes: dict[bytes, Entry | None] = {}
        for k, v in txn.cursor(db=e.ov.inodes):
            ino = int.from_bytes(k, "big")
            o = decode_oinode(v)
            key = ino_key(ino)
            if o.flags & (FLAG_DELETED | FLAG_ORPHAN):
                changes[key] = None
                continue
            inode = o.inode
            if inode.is_reg():
                inode = replace(inode, content=_file_tree(e, txn, ino, o))
            elif inode.is_dir() and (ino in dirents or inode.content == NULL_SCORE):
                tree = _dir_tree(e, inode, dirents.get(ino, []))
                inode = replace(inode, content=tree, size=len(BTree(store, tree)))
            changes[key] = Entry(key, encode_inode(inode), inode.refs())
        table = update(store, BlockType.META, e.archive.root.inode_table, changes)
        ino_high = e.ov.get_u64(txn, b"ino_next", e.archive.root.ino_high)
    root = Root(
        inode_table=table, root_ino=e.archive.root_ino, ino_high=ino_high,
        time_ns=time.time_ns() if time_ns is None else time_ns,
        name=name, user=user, prev=e.archive.score,
    )
    refs, body = encode_root(root)
    score = store.put(BlockType.ROOT, encode_refs(refs, body))
    store.sync()
    _rebase(e, score)
    return score


def _file_tree(e: Engine, txn, ino: int, o) -> Score:
    """The content of a changed file as a hash tree (unchanged content keeps its tree)."""
    inode: Inode = o.inode
    prefix = ino_bytes(ino)
    cur = txn.cursor(db=e.ov.pages)
    has_pages = cur.set_range(prefix) and cur.key().startswith(prefix)
    if inode.content != NULL_SCORE and not has_pages:
        base_size = e._reader(inode.content).size
        if o.base_limit == base_size == inode.size:
            return inode.content
    pages: list[int] = []
    if has_pages:
        for k in cur.iternext(keys=True, values=False):
            if not k.startswith(prefix):
                break
            pages.append(int.from_bytes(k[8:], "big"))
    w = TreeWriter(e.store)
    size = inode.size
    pos = 0
    if inode.content != NULL_SCORE and o.base_limit > 0:
        # Splice: keep every base leaf no change touched; chunk only around the changes.
        limit = min(o.base_limit, size)
        for score, n in e._reader(inode.content).leaf_scores():
            a, b = pos, pos + n
            if a >= limit:
                break
            if b <= limit and not _touched(pages, a, b):
                w.add_leaf(score, n)
            else:
                _write_range(e, txn, ino, o, w, a, min(b, size))
            pos = min(b, size)
    _write_range(e, txn, ino, o, w, pos, size)
    return w.finish().score


def _touched(pages: list[int], a: int, b: int) -> bool:
    """Does any overlay page overlap the byte range [a, b)?"""
    i = bisect.bisect_left(pages, a // PAGE_SIZE)
    return i < len(pages) and pages[i] * PAGE_SIZE < b


def _write_range(e: Engine, txn, ino: int, o, w: TreeWriter, a: int, b: int) -> None:
    """Feed bytes [a, b) of the file as the spawn sees them to the tree writer."""
    while a < b:
        page = a // PAGE_SIZE
        p0 = page * PAGE_SIZE
        data = e._page(txn, ino, o, page)
        w.write(data[a - p0 : min(b, p0 + PAGE_SIZE) - p0])
        a = min(b, p0 + PAGE_SIZE)




def _dir_tree(e: Engine, inode: Inode, entries: list[tuple[bytes, int | None, int]]) -> Score:
    if inode.content == NULL_SCORE:
        return build(
            e.store, BlockType.DIR,
            (Entry(n, encode_dirent(i, t << 12)) for n, i, t in sorted(entries) if i is not None),
        )
    changes = {n: (None if i is None else Entry(n, encode_dirent(i, t << 12))) for n, i, t in entries}
    return update(e.store, BlockType.DIR, inode.content, changes)


def _rebase(e: Engine, score: Score) -> None:
    """The spawn now stands on *score*: empty the overlay but for open orphans."""
    with e.ov.env.begin(write=True) as txn:
        keep_inodes = []
        for k, v in txn.cursor(db=e.ov.inodes):
            if decode_oinode(v).flags & FLAG_ORPHAN:
                keep_inodes.append((k, v))
        keep_pages = []
        orphan_prefixes = {k for k, _ in keep_inodes}
        if orphan_prefixes:
            for k, v in txn.cursor(db=e.ov.pages):
                if k[:8] in orphan_prefixes:
                    keep_pages.append((k, v))
        for db in (e.ov.inodes, e.ov.dirents, e.ov.pages):
            txn.drop(db, delete=False)
        for k, v in keep_inodes:
            txn.put(k, v, db=e.ov.inodes)
        for k, v in keep_pages:
            txn.put(k, v, db=e.ov.pages)
        txn.put(b"base", bytes(score), db=e.ov.meta)
        e.ov.put_u64(txn, b"gen", e.ov.get_u64(txn, b"gen", 1) + 1)
    e.ov.env.sync(True)
    e.archive = Archive(e.store, score)
    e._readers.clear()
    e._dirs.clear()
