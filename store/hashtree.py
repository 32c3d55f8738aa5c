"""Hash trees: a byte stream of any length as DATA leaves under POINTER blocks.

Writing: bytes go through a chunker (store.chunker) into leaves; an all-zero leaf, and any
hole the caller declares (``write_hole``, e.g. from SEEK_HOLE), is not stored but recorded as
a NULL_SCORE entry with its size. Leaf entries gather into POINTER blocks of up to
``FANOUT`` children; those gather into higher pointers until one root remains.

The root names the whole stream by itself: a stream that is one stored leaf is that DATA
block; anything else is a POINTER block, whose sizes give the total length. Sizes are u64,
so streams beyond 4 GiB (and holes of any size) are fine.

Reading any byte range costs O(depth) block reads: each pointer's child sizes locate the
child that holds an offset.
"""

from __future__ import annotations

import bisect
import itertools
import os
import struct
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from store.base import BlockStore
from store.block import BlockType, encode_refs, split_refs
from store.chunker import Chunker, default_chunker
from store.errors import InvalidBlock
from store.score import NULL_SCORE, Score

FANOUT = 1024
_U64 = struct.Struct(">Q")
_READ_SIZE = 8 << 20


@dataclass(frozen=True, slots=True)
class TreeRef:
    score: Score
    size: int


@dataclass(frozen=True, slots=True)
class PointerNode:
    depth: int
    children: list[Score]
    sizes: list[int]
    starts: list[int]  # starts[i] = offset of child i within this subtree (prefix sums)

    @property
    def size(self) -> int:
        return self.starts[-1] + self.sizes[-1]


def encode_pointer(depth: int, children: list[bytes], sizes: list[int]) -> bytes:
    if len(children) != len(sizes) or not children:
        raise InvalidBlock("a pointer block needs one size per child, and at least one")
    if not 1 <= depth <= 255:
        raise InvalidBlock(f"pointer depth {depth} out of range")
    body = bytes((depth,)) + struct.pack(f">{len(sizes)}Q", *sizes)
    return encode_refs(children, body)


def decode_pointer(data: bytes) -> PointerNode:
    refs, body = split_refs(BlockType.POINTER, data)
    if len(body) != 1 + 8 * len(refs) or not refs:
        raise InvalidBlock("pointer block body does not match its reference count")
    depth = body[0]
    sizes = list(struct.unpack(f">{len(refs)}Q", body[1:]))
    starts = [0, *itertools.accumulate(sizes[:-1])]
    return PointerNode(depth, refs, sizes, starts)


_SHARED_POOL: ThreadPoolExecutor | None = None


def shared_pool() -> ThreadPoolExecutor:
    """One process-wide pool for hashing and compressing leaves (both release the GIL)."""
    global _SHARED_POOL
    if _SHARED_POOL is None:
        _SHARED_POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="leaf")
    return _SHARED_POOL


class TreeWriter:
    """Stream bytes in with ``write``/``write_hole``; ``finish`` returns the TreeRef."""

    def __init__(
        self,
        store: BlockStore,
        chunker: Chunker | None = None,
        pool: ThreadPoolExecutor | bool | None = False,
    ) -> None:
        """*pool*: True for the shared leaf pool, an executor, or False/None to put inline."""
        self.store = store
        self.chunker = chunker or default_chunker()
        self._buf = bytearray()
        self._levels: list[list[tuple[Score, int]]] = [[]]
        self._zero = _zero_bytes(self.chunker.max_size)
        self._pool = shared_pool() if pool is True else (pool or None)
        self._inflight: deque[tuple[Future[Score], int]] = deque()
        self._window = 4 * (self._pool._max_workers if self._pool else 1)  # type: ignore[attr-defined]
        self.size = 0
        self.stored_leaves = 0
        self.hole_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= 4 * self.chunker.max_size:
            self._drain(final=False)

    def add_leaf(self, score: bytes, size: int) -> None:
        """Append an existing leaf (or a NULL_SCORE hole) of *size* bytes without reading it.

        For splicing: rewriting a changed stream reuses the leaves of the old tree that no
        change touched. Bytes written before it end a leaf here, whatever the chunker says.
        """
        if size <= 0:
            return
        self._drain(final=True)
        self._settle(0)
        self._add(0, Score(bytes(score)), size)
        self.size += size
        if score == NULL_SCORE:
            self.hole_bytes += size

    def write_hole(self, n: int) -> None:
        """Append *n* zero bytes without reading or storing them."""
        if n <= 0:
            return
        self._drain(final=True)
        self._settle(0)
        self._add(0, NULL_SCORE, n)
        self.size += n
        self.hole_bytes += n

    def _drain(self, final: bool) -> None:
        if not self._buf:
            return
        mv = memoryview(self._buf)
        off = 0
        for length in self.chunker.cut(mv, final):
            self._leaf(mv[off : off + length])
            off += length
        mv.release()
        del self._buf[:off]

    def _leaf(self, chunk: memoryview) -> None:
        n = len(chunk)
        self.size += n
        data = bytes(chunk)
        if data[:1] == b"\0" and data[-1:] == b"\0" and data == self._zero[:n]:
            self._settle(0)
            self._add(0, NULL_SCORE, n)
            self.hole_bytes += n
            return
        self.stored_leaves += 1
        if self._pool is None:
            self._add(0, self.store.put(BlockType.DATA, data), n)
            return
        self._inflight.append((self._pool.submit(self.store.put, BlockType.DATA, data), n))
        self._settle(self._window)

    def _settle(self, keep: int) -> None:
        """Resolve in-flight leaf puts, oldest first, until at most *keep* remain."""
        while len(self._inflight) > keep:
            fut, n = self._inflight.popleft()
            self._add(0, fut.result(), n)

    def _add(self, level: int, score: Score, size: int) -> None:
        while len(self._levels) <= level:
            self._levels.append([])
        entries = self._levels[level]
        entries.append((score, size))
        if len(entries) == FANOUT:
            self._flush_level(level)

    def _flush_level(self, level: int) -> None:
        entries = self._levels[level]
        self._levels[level] = []
        scores = [s for s, _ in entries]
        sizes = [n for _, n in entries]
        ptr = self.store.put(BlockType.POINTER, encode_pointer(level + 1, scores, sizes))
        self._add(level + 1, ptr, sum(sizes))

    def finish(self) -> TreeRef:
        self._drain(final=True)
        self._settle(0)
        level = 0
        while True:
            higher = any(self._levels[i] for i in range(level + 1, len(self._levels)))
            entries = self._levels[level]
            if not higher:
                if not entries:
                    return TreeRef(self.store.put(BlockType.DATA, b""), 0)
                if level == 0 and len(entries) == 1 and entries[0][0] != NULL_SCORE:
                    return TreeRef(entries[0][0], entries[0][1])
                if level > 0 and len(entries) == 1:
                    return TreeRef(entries[0][0], entries[0][1])
            if entries:
                self._flush_level(level)
            level += 1


def write_stream(store: BlockStore, f: BinaryIO, chunker: Chunker | None = None) -> TreeRef:
    """Store everything readable from *f* as a hash tree."""
    w = TreeWriter(store, chunker)
    while True:
        data = f.read(_READ_SIZE)
        if not data:
            break
        w.write(data)
    return w.finish()


def write_bytes(store: BlockStore, data: bytes, chunker: Chunker | None = None) -> TreeRef:
    w = TreeWriter(store, chunker)
    w.write(data)
    return w.finish()


class TreeReader:
    """Random access to a hash tree by its root score."""

    def __init__(self, store: BlockStore, root: bytes) -> None:
        self.store = store
        self.root = Score(bytes(root))
        self._nodes: dict[bytes, PointerNode] = {}
        blk = store.get(self.root)
        if blk.type == BlockType.DATA:
            self._leaf: bytes | None = blk.data
            self._node: PointerNode | None = None
            self.size = len(blk.data)
        elif blk.type == BlockType.POINTER:
            self._leaf = None
            self._node = decode_pointer(blk.data)
            self.size = self._node.size
        else:
            raise InvalidBlock(f"{blk.type.name} block is not the root of a hash tree")

    def read(self, offset: int, length: int) -> bytes:
        """Up to *length* bytes from *offset* (short only at the end of the stream)."""
        return b"".join(self.iter_range(offset, length))

    def iter_range(self, offset: int, length: int | None = None) -> Iterator[bytes]:
        for piece in self.iter_pieces(offset, length):
            if isinstance(piece, int):
                yield from _zeros(piece)
            else:
                yield piece

    def iter_pieces(self, offset: int, length: int | None = None) -> Iterator[bytes | int]:
        """The range's bytes in pieces, in order: a leaf's bytes, or for a hole (a
        NULL_SCORE leaf) the number of zero bytes it stands for, so that a caller writing
        into a sparse file can leave holes as holes."""
        if offset < 0:
            raise ValueError("negative offset")
        end = self.size if length is None else min(self.size, offset + length)
        if offset >= end:
            return
        if self._leaf is not None:
            yield self._leaf[offset:end]
            return
        assert self._node is not None
        yield from self._iter_node(self._node, offset, end)

    def _node_at(self, score: Score, depth: int, size: int) -> PointerNode:
        node = self._nodes.get(score)
        if node is None:
            blk = self.store.get(score)
            if blk.type != BlockType.POINTER:
                raise InvalidBlock("hash tree interior entry is not a pointer block")
            node = decode_pointer(blk.data)
            if len(self._nodes) >= 64:
                self._nodes.pop(next(iter(self._nodes)))
            self._nodes[score] = node
        if node.depth != depth or node.size != size:
            raise InvalidBlock("hash tree pointer does not match its parent entry")
        return node

    def _iter_node(self, node: PointerNode, start: int, end: int) -> Iterator[bytes | int]:
        first = bisect.bisect_right(node.starts, start) - 1
        if node.depth == 1:
            yield from self._iter_leaves(node, first, start, end)
            return
        for i in range(first, len(node.children)):
            child, size, lo = node.children[i], node.sizes[i], node.starts[i]
            hi = lo + size
            if lo >= end:
                return
            a, b = max(start, lo) - lo, min(end, hi) - lo
            if child == NULL_SCORE:
                yield b - a
            else:
                yield from self._iter_node(self._node_at(child, node.depth - 1, size), a, b)

    def _iter_leaves(self, node: PointerNode, first: int, start: int, end: int) -> Iterator[bytes | int]:
        """The leaves of a depth-1 node from child *first* on, in [start, end), fetched
        LEAF_BATCH at a time with one ``get_many`` (a local store reads leaves lying next
        to each other in one system call)."""
        i, n = first, len(node.children)
        while i < n and node.starts[i] < end:
            j = i
            while j < n and j - i < LEAF_BATCH and node.starts[j] < end:
                j += 1
            scores = [c for c in node.children[i:j] if c != NULL_SCORE]
            blocks = iter(self.store.get_many(scores) if len(scores) > 1
                          else [self.store.get(c) for c in scores])
            for k in range(i, j):
                child, size, lo = node.children[k], node.sizes[k], node.starts[k]
                a, b = max(start, lo) - lo, min(end, lo + size) - lo
                if child == NULL_SCORE:
                    yield b - a
                    continue
                blk = next(blocks)
                if blk.type != BlockType.DATA or len(blk.data) != size:
                    raise InvalidBlock("hash tree leaf does not match its pointer entry")
                yield blk.data[a:b] if (a, b) != (0, size) else blk.data
            i = j

    def leaf_scores(self) -> Iterator[tuple[Score, int]]:
        """(score, size) of every leaf in order; holes as NULL_SCORE."""
        if self._leaf is not None:
            yield self.root, self.size
            return
        assert self._node is not None
        yield from self._leaves(self._node)

    def _leaves(self, node: PointerNode) -> Iterator[tuple[Score, int]]:
        for child, size in zip(node.children, node.sizes, strict=True):
            if node.depth == 1 or child == NULL_SCORE:
                yield child, size
            else:
                yield from self._leaves(decode_pointer(self.store.get(child).data))


_ZERO_BLOCK = bytes(1 << 20)
LEAF_BATCH = 64  # leaves a reader fetches at once (about 1 MiB of them)


def _zero_bytes(n: int) -> bytes:
    """Zeros to compare leaves against, shared (immutable) rather than made per writer."""
    return _ZERO_BLOCK if n <= len(_ZERO_BLOCK) else bytes(n)


def _zeros(n: int) -> Iterator[bytes]:
    while n > 0:
        k = min(n, len(_ZERO_BLOCK))
        yield _ZERO_BLOCK[:k] if k < len(_ZERO_BLOCK) else _ZERO_BLOCK
        n -= k
