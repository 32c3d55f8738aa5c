"""Hash trees against a plain bytes model: random streams, holes, reads at any offset."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.base import walk
from store.block import BlockType
from store.chunker import CdcChunker, FixedChunker
from store.errors import InvalidBlock
from store.hashtree import TreeReader, TreeWriter, decode_pointer, encode_pointer, write_bytes
from store.memory import MemoryStore
from store.score import NULL_SCORE

pieces = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.binary(min_size=0, max_size=3000)),
        st.tuples(st.just("zeros"), st.integers(0, 5000)),
        st.tuples(st.just("hole"), st.integers(0, 5000)),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(pieces=pieces, leaf=st.sampled_from([64, 100, 1024]), reads=st.lists(st.tuples(st.integers(0, 40000), st.integers(0, 9000)), max_size=8))
def test_tree_matches_bytes(pieces, leaf, reads):
    store = MemoryStore()
    w = TreeWriter(store, FixedChunker(leaf))
    model = bytearray()
    for kind, v in pieces:
        if kind == "data":
            w.write(v)
            model += v
        elif kind == "zeros":
            w.write(bytes(v))
            model += bytes(v)
        else:
            w.write_hole(v)
            model += bytes(v)
    ref = w.finish()
    assert ref.size == len(model)
    r = TreeReader(store, ref.score)
    assert r.size == len(model)
    assert r.read(0, len(model) + 10) == bytes(model)
    for off, n in reads:
        assert r.read(off, n) == bytes(model[off : off + n])
    # No stored leaf is all zeros: holes are never stored.
    for _s, blk in walk(store, ref.score):
        if blk.type == BlockType.DATA and blk.data:
            assert any(blk.data)


def test_deterministic_and_deduplicated():
    data = os.urandom(500_000)
    a, b = MemoryStore(), MemoryStore()
    assert write_bytes(a, data).score == write_bytes(b, data).score
    before = a.statistics().blocks
    write_bytes(a, data)
    assert a.statistics().blocks == before


def test_large_sparse_beyond_4gib():
    store = MemoryStore()
    w = TreeWriter(store, CdcChunker())
    w.write(b"head")
    w.write_hole(6 << 30)
    w.write(b"tail" * 1000)
    ref = w.finish()
    assert ref.size == 4 + (6 << 30) + 4000
    r = TreeReader(store, ref.score)
    assert r.read((6 << 30) + 4, 8) == b"tailtail"
    assert r.read(5 << 30, 16) == bytes(16)
    assert store.statistics().logical_bytes < 100_000


def test_deep_tree_reads(monkeypatch):
    import store.hashtree as ht

    monkeypatch.setattr(ht, "FANOUT", 4)
    store = MemoryStore()
    data = os.urandom(100 * 64)
    ref = ht.write_bytes(store, data, FixedChunker(64))
    r = TreeReader(store, ref.score)
    assert r._node is not None and r._node.depth >= 3
    for off in range(0, len(data), 97):
        assert r.read(off, 200) == data[off : off + 200]


def test_pointer_codec_and_bad_pointers():
    leaf = b"\x01" * 32
    raw = encode_pointer(1, [leaf, NULL_SCORE], [10, 20])
    node = decode_pointer(raw)
    assert node.depth == 1 and node.sizes == [10, 20] and node.starts == [0, 10]
    with pytest.raises(InvalidBlock):
        decode_pointer(raw[:-1])
    with pytest.raises(InvalidBlock):
        encode_pointer(1, [leaf], [1, 2])
    with pytest.raises(InvalidBlock):
        encode_pointer(0, [leaf], [1])


def test_reader_rejects_non_tree_roots():
    store = MemoryStore()
    from store.block import encode_refs

    root = store.put(BlockType.ROOT, encode_refs([]))
    with pytest.raises(InvalidBlock, match="not the root of a hash tree"):
        TreeReader(store, root)


def test_pointer_lying_about_sizes_detected():
    store = MemoryStore()
    leaf = store.put(BlockType.DATA, b"abc")
    inner = store.put(BlockType.POINTER, encode_pointer(1, [leaf], [3]))
    top = store.put(BlockType.POINTER, encode_pointer(2, [inner], [5]))  # claims 5 bytes
    with pytest.raises(InvalidBlock):
        TreeReader(store, top).read(0, 5)
