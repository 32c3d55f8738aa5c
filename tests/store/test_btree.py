"""The persistent b-tree against a dict model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.base import walk
from store.block import BlockType
from store.btree import BTree, Entry, build, update
from store.errors import InvalidBlock, MissingReference
from store.memory import MemoryStore
from store.score import score_of


def entries_of(d: dict[bytes, bytes]) -> list[Entry]:
    return [Entry(k, v) for k, v in sorted(d.items())]


def check(tree: BTree, model: dict[bytes, bytes]) -> None:
    assert [(e.key, e.value) for e in tree.items()] == sorted(model.items())
    assert len(tree) == len(model)


def test_empty_tree():
    s = MemoryStore()
    root = build(s, BlockType.DIR, [])
    t = BTree(s, root)
    assert len(t) == 0 and list(t.items()) == [] and t.get(b"x") is None


def test_big_directory_lookup_and_update_cost():
    s = MemoryStore()
    model = {f"file-{i:06d}.txt".encode(): i.to_bytes(8, "big") for i in range(100_000)}
    root = build(s, BlockType.DIR, entries_of(model))
    t = BTree(s, root)
    n = t.node(root)
    assert n.level >= 1
    gets_before = s.statistics().gets
    assert t.get(b"file-054321.txt").value == (54321).to_bytes(8, "big")
    depth = n.level + 1
    assert s.statistics().gets - gets_before <= depth  # O(log n) block reads
    # One change rewrites O(depth) nodes.
    blocks_before = s.statistics().blocks
    root2 = update(s, BlockType.DIR, root, {b"file-054321.txt": Entry(b"file-054321.txt", b"changed")})
    assert s.statistics().blocks - blocks_before <= depth + 1
    t2 = BTree(s, root2)
    assert t2.get(b"file-054321.txt").value == b"changed"
    assert len(t2) == 100_000
    # Determinism: the same entries give the same root.
    assert build(MemoryStore(), BlockType.DIR, entries_of(model)) == root


def test_index_navigation():
    s = MemoryStore()
    model = {f"{i:05d}".encode(): b"" for i in range(5000)}
    t = BTree(s, build(s, BlockType.DIR, entries_of(model)))
    keys = sorted(model)
    for i in (0, 1, 777, 4999, 5000):
        assert [e.key for e in t.from_index(i)][:3] == keys[i : i + 3]
        if i < 5000:
            assert t.index_of(keys[i]) == i
    assert [e.key for e in t.items(b"02500")][:2] == [b"02500", b"02501"]


def test_refs_are_followed_and_closure_holds():
    s = MemoryStore()
    leaf = s.put(BlockType.DATA, b"content")
    root = build(s, BlockType.META, [Entry(b"\x00" * 8, b"inode", (leaf,))])
    assert leaf in {x for x, _ in walk(s, root)}
    ghost = score_of(BlockType.DATA, b"ghost")
    with pytest.raises(MissingReference):
        build(s, BlockType.META, [Entry(b"k", b"v", (ghost,))])


def test_bad_inputs():
    s = MemoryStore()
    with pytest.raises(InvalidBlock, match="ascending"):
        build(s, BlockType.DIR, [Entry(b"b", b""), Entry(b"a", b"")])
    with pytest.raises(InvalidBlock, match="exceeds"):
        build(s, BlockType.DIR, [Entry(b"x" * 5000, b"")])


@settings(max_examples=60, deadline=None)
@given(
    initial=st.dictionaries(st.binary(min_size=0, max_size=12), st.binary(max_size=40), max_size=600),
    ops=st.lists(
        st.lists(st.tuples(st.binary(min_size=0, max_size=12), st.one_of(st.none(), st.binary(max_size=40))), max_size=40),
        max_size=5,
    ),
)
def test_updates_match_model(initial, ops):
    s = MemoryStore()
    model = dict(initial)
    root = build(s, BlockType.DIR, entries_of(model))
    for batch in ops:
        changes = {}
        for k, v in batch:
            changes[k] = None if v is None else Entry(k, v)
        for k, e in changes.items():
            if e is None:
                model.pop(k, None)
            else:
                model[k] = e.value
        root = update(s, BlockType.DIR, root, changes)
        t = BTree(s, root)
        check(t, model)
        for k in list(model)[:20]:
            assert t.get(k).value == model[k]


def test_many_random_updates_large():
    rng = random.Random(5)
    s = MemoryStore()
    model = {rng.randbytes(8): rng.randbytes(30) for _ in range(20_000)}
    root = build(s, BlockType.DIR, entries_of(model))
    for _ in range(30):
        changes = {}
        for _ in range(50):
            if rng.random() < 0.3 and model:
                k = rng.choice(list(model))
                changes[k] = None
                model.pop(k)
            else:
                k = rng.randbytes(8)
                v = rng.randbytes(30)
                changes[k] = Entry(k, v)
                model[k] = v
        root = update(s, BlockType.DIR, root, changes)
    check(BTree(s, root), model)
