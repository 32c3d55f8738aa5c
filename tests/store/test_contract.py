"""The contract every BlockStore keeps: memory, local and remote stores all run this suite."""

from __future__ import annotations

import os
import threading

import pytest

from store.base import walk
from store.block import MAX_BLOCK_SIZE, BlockType, encode_refs
from store.errors import BlockNotFound, InvalidBlock, MissingReference
from store.hashtree import TreeReader, write_bytes
from store.score import NULL_SCORE, parse_score, score_of


def test_put_get_roundtrip(any_store):
    data = b"venti" * 1000
    s = any_store.put(BlockType.DATA, data)
    assert s == score_of(BlockType.DATA, data)
    blk = any_store.get(s)
    assert blk.type == BlockType.DATA and blk.data == data


def test_empty_and_max_blocks(any_store):
    assert any_store.get(any_store.put(BlockType.DATA, b"")).data == b""
    big = os.urandom(MAX_BLOCK_SIZE)
    assert any_store.get(any_store.put(BlockType.DATA, big)).data == big


def test_oversize_block_refused(any_store):
    with pytest.raises(InvalidBlock, match="exceeds the maximum"):
        any_store.put(BlockType.DATA, bytes(MAX_BLOCK_SIZE + 1))
    assert any_store.statistics().blocks == 0


def test_unknown_type_refused(any_store):
    with pytest.raises(InvalidBlock, match="unknown block type"):
        any_store.put(99, b"x")
    with pytest.raises(InvalidBlock):
        any_store.put(0, b"x")


def test_type_is_part_of_the_score(any_store):
    payload = encode_refs([])
    a = any_store.put(BlockType.DATA, payload)
    b = any_store.put(BlockType.POINTER, payload)
    assert a != b
    assert any_store.get(a).type == BlockType.DATA
    assert any_store.get(b).type == BlockType.POINTER


def test_missing_block(any_store):
    s = score_of(BlockType.DATA, b"never stored")
    assert not any_store.has(s)
    with pytest.raises(BlockNotFound) as ei:
        any_store.get(s)
    assert "blake3:" in str(ei.value)


def test_dedup(any_store):
    a = any_store.put(BlockType.DATA, b"same")
    before = any_store.statistics()
    b = any_store.put(BlockType.DATA, b"same")
    after = any_store.statistics()
    assert a == b
    assert after.blocks == before.blocks


def test_closure_refuses_dangling_references(any_store):
    ghost = score_of(BlockType.DATA, b"ghost")
    for btype in (BlockType.POINTER, BlockType.DIR, BlockType.ROOT, BlockType.META):
        with pytest.raises(MissingReference) as ei:
            any_store.put(btype, encode_refs([ghost], b"body"))
        assert ei.value.missing == [ghost]
    assert any_store.statistics().blocks == 0
    leaf = any_store.put(BlockType.DATA, b"ghost")
    ptr = any_store.put(BlockType.POINTER, encode_refs([leaf, NULL_SCORE], b"body"))
    assert any_store.has(ptr)


def test_malformed_reference_list_refused(any_store):
    with pytest.raises(InvalidBlock):
        any_store.put(BlockType.POINTER, b"\x00\x00")
    with pytest.raises(InvalidBlock, match="claims 5 references"):
        any_store.put(BlockType.DIR, b"\x00\x00\x00\x05" + bytes(32))


def test_missing_is_batched_and_ordered(any_store):
    present = [any_store.put(BlockType.DATA, bytes([i])) for i in range(10)]
    absent = [score_of(BlockType.DATA, b"no" + bytes([i])) for i in range(10)]
    mixed = [x for pair in zip(present, absent, strict=True) for x in pair]
    assert any_store.missing(mixed) == absent
    assert any_store.missing([]) == []


def test_many(any_store):
    blocks = [(BlockType.DATA, os.urandom(100 + i)) for i in range(50)]
    scores = any_store.put_many(blocks)
    got = any_store.get_many(scores)
    assert [(b.type, b.data) for b in got] == blocks


def test_sync_then_read(any_store):
    s = any_store.put(BlockType.DATA, b"durable")
    any_store.sync()
    assert any_store.get(s).data == b"durable"


def test_concurrent_writers_and_readers(any_store):
    errors: list[BaseException] = []
    out: dict[int, list] = {}

    def worker(k: int) -> None:
        try:
            mine = []
            for i in range(40):
                data = f"{k}-{i}".encode() * 50
                s = any_store.put(BlockType.DATA, data)
                assert any_store.get(s).data == data
                mine.append(s)
            out[k] = mine
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(len(v) for v in out.values()) == 160
    assert any_store.statistics().blocks == 160


def test_hash_tree_over_store(any_store):
    data = os.urandom(300_000) + bytes(300_000) + os.urandom(50_000)
    ref = write_bytes(any_store, data)
    r = TreeReader(any_store, ref.score)
    assert r.size == len(data)
    assert r.read(0, len(data)) == data
    assert r.read(299_990, 20) == data[299_990:300_010]
    reachable = {s for s, _ in walk(any_store, ref.score)}
    assert ref.score in reachable
    assert NULL_SCORE not in reachable


def test_statistics(any_store):
    any_store.put(BlockType.DATA, b"a" * 1000)
    any_store.put(BlockType.DATA, b"a" * 1000)
    st = any_store.statistics()
    assert st.blocks == 1
    assert st.logical_bytes == 1000
    assert st.puts >= 2


def test_parse_score_edges():
    s = score_of(BlockType.DATA, b"x")
    from store.score import format_score

    assert parse_score(format_score(s)) == s
    for bad in ["", "blake3:", "blake3:" + "A" * 64, "sha1:" + "a" * 64, "blake3:" + "a" * 63]:
        with pytest.raises(ValueError):
            parse_score(bad)
