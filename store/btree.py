"""A persistent sorted map over blocks: the shape of huge directories and inode tables.

Keys are bytes, sorted bytewise; each entry carries a value and the scores its value
references (so closure and reachability see them through the reference format). Nodes are
blocks of a caller-chosen type (DIR for directories, META for inode tables)::

    refs:  leaf: every entry's references, in entry order; interior: the children
    body:  u8 level (0 = leaf) | u32 n |
           leaf entry:      uvarint klen | key | uvarint vlen | value | uvarint nrefs
           interior entry:  uvarint klen | first key of the child | u64 entries in the child

Node boundaries come from the keys themselves: a node ends after an entry whose key hashes
to a cut point (once the node holds ``MIN_NODE`` bytes), or when it reaches ``MAX_NODE``
bytes. Building from the same sorted entries therefore always gives the same root score
(deterministic imports), lookups read O(log n) blocks, and an update rewrites only the nodes
on the paths to the changed keys, O(log n) blocks per change. Interior entries count the
entries below them, so the k-th entry (a readdir offset) is found in O(log n) too.

Deletions do not merge sparse neighbours: a tree that shrank may hold small nodes until it
is rebuilt (bulk ``build``), which costs space, never correctness.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import blake3

from store.base import BlockStore
from store.block import BlockType, encode_refs, split_refs
from store.errors import InvalidBlock
from store.score import Score
from store.varint import decode_uvarint as _read_uvarint
from store.varint import encode_uvarint as _uvarint

MIN_NODE = 2 << 10
MAX_NODE = 64 << 10
CUT_MODULUS = 32
MAX_KEY = 1024
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Entry:
    key: bytes
    value: bytes
    refs: tuple[Score, ...] = ()


@dataclass(frozen=True, slots=True)
class _Child:
    first: bytes
    score: Score
    count: int


@dataclass(frozen=True, slots=True)
class Node:
    level: int
    keys: list[bytes]
    entries: list[Entry]  # leaves
    children: list[_Child]  # interior nodes






# -- codec --------------------------------------------------------------------------------


def encode_leaf(entries: list[Entry]) -> bytes:
    refs: list[bytes] = []
    body = bytearray(bytes((0,)) + _U32.pack(len(entries)))
    for e in entries:
        body += _uvarint(len(e.key)) + e.key + _uvarint(len(e.value)) + e.value + _uvarint(len(e.refs))
        refs.extend(e.refs)
    return encode_refs(refs, bytes(body))


def encode_interior(level: int, children: list[_Child]) -> bytes:
    body = bytearray(bytes((level,)) + _U32.pack(len(children)))
    for c in children:
        body += _uvarint(len(c.first)) + c.first + _U64.pack(c.count)
    return encode_refs([c.score for c in children], bytes(body))


def decode_node(data: bytes) -> Node:
    refs, body = split_refs(BlockType.DIR, data)
    if len(body) < 5:
        raise InvalidBlock("b-tree node too short")
    level = body[0]
    (n,) = _U32.unpack_from(body, 1)
    pos = 5
    keys: list[bytes] = []
    if level == 0:
        entries: list[Entry] = []
        r = 0
        for _ in range(n):
            klen, pos = _read_uvarint(body, pos)
            key = bytes(body[pos : pos + klen])
            pos += klen
            vlen, pos = _read_uvarint(body, pos)
            value = bytes(body[pos : pos + vlen])
            pos += vlen
            nrefs, pos = _read_uvarint(body, pos)
            if len(key) != klen or len(value) != vlen or r + nrefs > len(refs):
                raise InvalidBlock("b-tree leaf entry overruns its node")
            entries.append(Entry(key, value, tuple(refs[r : r + nrefs])))
            r += nrefs
            keys.append(key)
        if pos != len(body) or r != len(refs):
            raise InvalidBlock("b-tree leaf has trailing bytes or unused references")
        return Node(0, keys, entries, [])
    if n != len(refs) or n == 0:
        raise InvalidBlock("b-tree interior node: child count does not match its references")
    children: list[_Child] = []
    for i in range(n):
        klen, pos = _read_uvarint(body, pos)
        key = bytes(body[pos : pos + klen])
        pos += klen
        if len(key) != klen or pos + 8 > len(body):
            raise InvalidBlock("b-tree interior entry overruns its node")
        (count,) = _U64.unpack_from(body, pos)
        pos += 8
        children.append(_Child(key, refs[i], count))
        keys.append(key)
    if pos != len(body):
        raise InvalidBlock("b-tree interior node has trailing bytes")
    return Node(level, keys, [], children)


def _is_cut(level: int, key: bytes) -> bool:
    h = blake3.blake3(bytes((level,)) + key).digest(4)
    return int.from_bytes(h, "big") % CUT_MODULUS == 0


def _leaf_entry_size(e: Entry) -> int:
    return len(e.key) + len(e.value) + 32 * len(e.refs) + 6


# -- building ------------------------------------------------------------------------------


class _LevelBuilder:
    """Cuts a stream of items of one level into nodes, stores them, yields child refs."""

    def __init__(self, store: BlockStore, btype: BlockType, level: int) -> None:
        self.store, self.btype, self.level = store, btype, level
        self.items: list = []
        self.size = 0
        self.out: list[_Child] = []

    def add(self, item: Entry | _Child) -> None:
        if self.level == 0:
            assert isinstance(item, Entry)
            key, size = item.key, _leaf_entry_size(item)
        else:
            assert isinstance(item, _Child)
            key, size = item.first, len(item.first) + 42
        if self.items and self.size + size > MAX_NODE:
            self.flush()
        self.items.append(item)
        self.size += size
        if self.size >= MIN_NODE and _is_cut(self.level, key):
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        if self.level == 0:
            payload = encode_leaf(self.items)
            first, count = self.items[0].key, len(self.items)
        else:
            payload = encode_interior(self.level, self.items)
            first, count = self.items[0].first, sum(c.count for c in self.items)
        self.out.append(_Child(first, self.store.put(self.btype, payload), count))
        self.items, self.size = [], 0


def _chunk(store: BlockStore, btype: BlockType, level: int, items: Iterable) -> list[_Child]:
    b = _LevelBuilder(store, btype, level)
    for it in items:
        b.add(it)
    b.flush()
    return b.out


def _finish(store: BlockStore, btype: BlockType, level: int, nodes: list[_Child]) -> Score:
    """Stack levels above *nodes* (all of *level*) until one root remains."""
    if not nodes:
        return store.put(btype, encode_leaf([]))
    while len(nodes) > 1:
        level += 1
        if level > 255:
            raise InvalidBlock("b-tree too deep")
        nodes = _chunk(store, btype, level, nodes)
    return nodes[0].score


def build(store: BlockStore, btype: BlockType, entries: Iterable[Entry]) -> Score:
    """Store a tree of *entries* (strictly ascending keys) and return its root."""
    prev: bytes | None = None

    def checked() -> Iterator[Entry]:
        nonlocal prev
        for e in entries:
            if len(e.key) > MAX_KEY:
                raise InvalidBlock(f"b-tree key of {len(e.key)} bytes exceeds {MAX_KEY}")
            if prev is not None and e.key <= prev:
                raise InvalidBlock("b-tree entries must have strictly ascending keys")
            prev = e.key
            yield e

    return _finish(store, btype, 0, _chunk(store, btype, 0, checked()))


# -- reading -------------------------------------------------------------------------------


class BTree:
    """Read access to a tree by its root; decoded nodes are cached per instance."""

    def __init__(self, store: BlockStore, root: bytes, *, cache_nodes: int = 256) -> None:
        self.store = store
        self.root = Score(bytes(root))
        self._cache: dict[bytes, Node] = {}
        self._cache_max = cache_nodes

    def node(self, score: bytes) -> Node:
        n = self._cache.get(score)
        if n is None:
            blk = self.store.get(score)
            if blk.type not in (BlockType.DIR, BlockType.META):
                raise InvalidBlock(f"{blk.type.name} block is not a b-tree node")
            n = decode_node(blk.data)
            if len(self._cache) >= self._cache_max:
                self._cache.pop(next(iter(self._cache)))
            self._cache[score] = n
        return n

    def get(self, key: bytes) -> Entry | None:
        n = self.node(self.root)
        while n.level > 0:
            i = max(0, bisect.bisect_right(n.keys, key) - 1)
            n = self.node(n.children[i].score)
        i = bisect.bisect_left(n.keys, key)
        if i < len(n.keys) and n.keys[i] == key:
            return n.entries[i]
        return None

    def __len__(self) -> int:
        n = self.node(self.root)
        return len(n.entries) if n.level == 0 else sum(c.count for c in n.children)

    def items(self, start: bytes = b"") -> Iterator[Entry]:
        """Entries with key >= *start*, in order."""
        yield from self._items(self.node(self.root), start)

    def _items(self, n: Node, start: bytes) -> Iterator[Entry]:
        if n.level == 0:
            yield from n.entries[bisect.bisect_left(n.keys, start) :]
            return
        first = max(0, bisect.bisect_right(n.keys, start) - 1)
        for c in n.children[first:]:
            yield from self._items(self.node(c.score), start)

    def from_index(self, index: int) -> Iterator[Entry]:
        """Entries from the *index*-th (0-based) on: O(log n) to the start."""
        yield from self._from_index(self.node(self.root), index)

    def _from_index(self, n: Node, index: int) -> Iterator[Entry]:
        if n.level == 0:
            yield from n.entries[index:]
            return
        for c in n.children:
            if index >= c.count:
                index -= c.count
                continue
            yield from self._from_index(self.node(c.score), index)
            index = 0

    def index_of(self, key: bytes) -> int:
        """How many entries have a key < *key* (the offset at which *key* stands or would)."""
        n = self.node(self.root)
        before = 0
        while n.level > 0:
            i = max(0, bisect.bisect_right(n.keys, key) - 1)
            before += sum(c.count for c in n.children[:i])
            n = self.node(n.children[i].score)
        return before + bisect.bisect_left(n.keys, key)


# -- updating ------------------------------------------------------------------------------


def update(
    store: BlockStore, btype: BlockType, root: bytes, changes: Mapping[bytes, Entry | None]
) -> Score:
    """Apply *changes* (key -> new entry, or None to delete) and return the new root.

    Only nodes on the paths to changed keys are rewritten.
    """
    for k, e in changes.items():
        if e is not None and e.key != k:
            raise ValueError("change key and entry key differ")
        if len(k) > MAX_KEY:
            raise InvalidBlock(f"b-tree key of {len(k)} bytes exceeds {MAX_KEY}")
    if not changes:
        return Score(bytes(root))
    tree = BTree(store, root)
    top = tree.node(tree.root)
    nodes = _update_node(tree, btype, top, sorted(changes.items()))
    score = _finish(store, btype, top.level, nodes)
    # Collapse a root with a single child.
    while True:
        n = tree.node(score)
        if n.level > 0 and len(n.children) == 1:
            score = n.children[0].score
        else:
            return score


def _update_node(tree: BTree, btype: BlockType, n: Node, changes: list[tuple[bytes, Entry | None]]) -> list[_Child]:
    store = tree.store
    if n.level == 0:
        merged: dict[bytes, Entry] = dict(zip(n.keys, n.entries, strict=True))
        for k, e in changes:
            if e is None:
                merged.pop(k, None)
            else:
                merged[k] = e
        return _chunk(store, btype, 0, (merged[k] for k in sorted(merged)))
    out: list[_Child] = []
    ci = 0
    keys = n.keys
    groups: dict[int, list[tuple[bytes, Entry | None]]] = {}
    for k, e in changes:
        i = max(0, bisect.bisect_right(keys, k) - 1)
        groups.setdefault(i, []).append((k, e))
    for ci, child in enumerate(n.children):
        sub = groups.get(ci)
        if sub is None:
            out.append(child)
        else:
            out.extend(_update_node(tree, btype, tree.node(child.score), sub))
    return _chunk(store, btype, n.level, out)
