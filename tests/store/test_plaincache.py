"""Decoded contents in memory files (store.plaincache): every range equals the hash tree's
bytes, the bounds hold, a range outlives its content's eviction, a corrupt leaf is an error
and leaves nothing wrong behind, and threads reading at once all see the right bytes. A real
LocalStore with real hash trees."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from store.errors import CorruptBlock
from store.hashtree import TreeReader, write_bytes
from store.local import LocalStore
from store.plaincache import EXTENT, RUN_BYTES, PlainCache, PlainRange
from tests.store.trees import content, store_with_a_bad_leaf

MIB = 1 << 20


def tree(store: LocalStore, data: bytes) -> TreeReader:
    return TreeReader(store, write_bytes(store, data).score)


def test_ranges_equal_the_tree_at_every_kind_of_offset(store: LocalStore) -> None:
    data = content(1, 3 * MIB + 12345)
    r = tree(store, data)
    pc = PlainCache(64 * MIB)
    rnd = random.Random(2)
    cases = [(0, 1), (0, EXTENT), (EXTENT - 1, 2), (EXTENT, EXTENT), (len(data) - 10, 100),
             (len(data) - 1, 1), (MIB - 5, MIB + 10), (0, len(data) + 1)]
    cases += [(rnd.randrange(len(data)), rnd.randrange(1, 3 * EXTENT)) for _ in range(300)]
    for off, n in cases:
        got = pc.range(r, off, n)
        assert got is not None
        want = data[off:off + n]
        assert got.count == len(want) and got.read() == want, (off, n)
        assert pc.read(r, off, n) == want
    assert pc.hits > 0 and pc.fills > 0
    assert pc.held == len(data)  # every extent was read by now, each counted once


def test_what_is_not_kept(store: LocalStore) -> None:
    small = tree(store, content(3, MIB - 1))
    big = tree(store, content(4, 5 * MIB))
    pc = PlainCache(4 * MIB)
    assert pc.range(small, 0, 100) is None  # below min_size: the leaf cache's business
    assert pc.range(big, 0, 100) is None  # larger than the whole cache
    ok = tree(store, content(5, 2 * MIB))
    assert pc.range(ok, 2 * MIB, 10) is None  # at or past the end: nothing to send
    assert pc.range(ok, -1, 10) is None
    assert pc.range(ok, 10, 0) is None
    # read() falls back to the tree for all of them
    assert pc.read(small, 5, 10) == small.read(5, 10)
    assert pc.read(big, MIB, 10) == big.read(MIB, 10)
    assert len(pc) == 0 and pc.held == 0
    with pytest.raises(ValueError):
        PlainCache(0)


def test_sequential_reads_decode_a_run_at_once(store: LocalStore) -> None:
    data = content(6, 4 * MIB)
    r = tree(store, data)
    pc = PlainCache(64 * MIB)
    n = 65512  # what a 64 KiB msize asks for: never aligned to extents
    off = 0
    while off < len(data):
        assert pc.range(r, off, n).read() == data[off:off + n]  # type: ignore[union-attr]
        off += n
    runs = len(data) // RUN_BYTES
    assert pc.fills == len(data) // EXTENT
    assert pc.hits >= len(data) // n - 2 * runs  # most requests found their bytes there


def test_bounds_drop_least_recently_used_and_ranges_outlive_them(store: LocalStore) -> None:
    readers = [tree(store, content(10 + i, 2 * MIB)) for i in range(4)]
    pc = PlainCache(5 * MIB)
    held_before = _open_fds()
    first = pc.range(readers[0], 0, 2 * MIB)
    assert first is not None
    for r in readers[1:3]:
        pc.range(r, 0, 2 * MIB)
    # the third did not fit beside the first two: the first (least recently used) went
    assert len(pc) == 2 and pc.held == 4 * MIB
    pc.range(readers[0], 0, 10)  # back, one extent of it: now the second is the oldest
    pc.range(readers[3], 0, 2 * MIB)
    assert pc.held <= 5 * MIB and len(pc) == 3
    stats = pc.statistics()
    assert stats["contents"] == 3 and stats["held"] == pc.held
    fills = pc.fills
    pc.range(readers[2], 0, 2 * MIB)  # kept: no decoding
    assert pc.fills == fills
    pc.range(readers[1], 0, 10)  # dropped: decoded again
    assert pc.fills == fills + 1
    # the range taken before the first content was dropped still reads, and right
    assert first.read() == readers[0].read(0, 2 * MIB)
    del first
    pc.clear()
    assert _open_fds() <= held_before  # every memory file closed once nothing holds it

    few = PlainCache(64 * MIB, max_entries=2)
    for r in readers:
        few.range(r, 0, 10)
    assert len(few) == 2


def test_a_corrupt_leaf_is_an_error_and_nothing_wrong_is_kept(tmp_path: Path) -> None:
    data = os.urandom(2 * MIB)
    # a leaf of the second MiB, not the tree's root
    store, root = store_with_a_bad_leaf(tmp_path / "s", data, MIB + 4096)
    try:
        r = TreeReader(store, root)
        pc = PlainCache(64 * MIB)
        assert pc.range(r, 0, 4096).read() == data[:4096]  # type: ignore[union-attr]
        for _ in range(2):  # and again: the failed extents were not marked present
            with pytest.raises(CorruptBlock):
                pc.range(r, MIB, MIB)
        assert pc.range(r, 100, 1000).read() == data[100:1100]  # type: ignore[union-attr]
    finally:
        store.close()


def test_threads_reading_at_once_see_the_right_bytes(store: LocalStore) -> None:
    datas = [content(20 + i, 3 * MIB) for i in range(3)]
    readers_data = [(write_bytes(store, d).score, d) for d in datas]
    pc = PlainCache(6 * MIB)  # not all of it fits: drops happen while others read
    errors: list[str] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        mine = [(TreeReader(store, s), d) for s, d in readers_data]  # a reader per thread
        for _ in range(150):
            r, d = rnd.choice(mine)
            off = rnd.randrange(len(d))
            n = rnd.randrange(1, 4 * EXTENT)
            got = pc.range(r, off, n)
            if got is None or got.read() != d[off:off + n]:
                errors.append(f"seed {seed} at {off}+{n}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pc.held <= 6 * MIB


def test_a_range_is_what_sendfile_sends(store: LocalStore, tmp_path: Path) -> None:
    data = content(30, 2 * MIB)
    pc = PlainCache(64 * MIB)
    got = pc.range(tree(store, data), 12345, MIB)
    assert isinstance(got, PlainRange)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        sent = 0
        while sent < got.count:
            sent += os.sendfile(f.fileno(), got.fileno(), got.offset + sent, got.count - sent)
    assert out.read_bytes() == data[12345:12345 + MIB]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_holes_read_as_zeros_and_take_no_memory(store: LocalStore) -> None:
    data = os.urandom(MIB) + bytes(6 * MIB) + os.urandom(MIB)
    r = tree(store, data)
    pc = PlainCache(64 * MIB)
    got = pc.range(r, 0, len(data))
    assert got is not None and got.read() == data
    used = os.fstat(got.fileno()).st_blocks * 512
    assert used < 3 * MIB, used  # the zero leaves were never written


# -- decoding ahead of a sequential reader ---------------------------------------------------


class _HeldAhead:
    """A real store whose reads by the cache's decode-ahead thread wait for *gate*: a test
    can hold a decode ahead under way while a reader reaches its extents."""

    def __init__(self, store: LocalStore, gate: threading.Event) -> None:
        self._store, self._gate = store, gate

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def _hold(self) -> None:
        if threading.current_thread().name.startswith("grid-decode-ahead"):
            assert self._gate.wait(10), "the test never let the decode ahead go on"

    def get(self, score: bytes):
        self._hold()
        return self._store.get(score)

    def get_many(self, scores):
        self._hold()
        return self._store.get_many(scores)


def _states(pc: PlainCache, r: TreeReader) -> bytes:
    return bytes(pc._entries[bytes(r.root)].have)


def _settle(pc: PlainCache) -> None:
    """Wait for every decode ahead submitted so far."""
    if pc._pool is not None:
        pc._pool.submit(lambda: None).result(10)


def test_a_sequential_reader_is_decoded_ahead(store: LocalStore) -> None:
    data = content(40, 8 * MIB + 777)
    r = tree(store, data)
    pc = PlainCache(64 * MIB)
    n, off = 65512, 0
    try:
        while off < len(data):
            assert pc.range(r, off, n).read() == data[off:off + n]  # type: ignore[union-attr]
            off += n
        _settle(pc)
        stats = pc.statistics()
        assert stats["ahead_fills"] > 0  # the background did part of the decoding
        assert pc.fills == -(-len(data) // EXTENT)  # and nothing was decoded twice
        assert set(_states(pc, r)) == {1}  # every extent present, none left half-way
        assert pc.held == len(data)
    finally:
        pc.close()
    # a random reader is not decoded ahead
    other = PlainCache(64 * MIB)
    rnd = random.Random(41)
    for _ in range(40):
        o = rnd.randrange(len(data))
        assert other.read(r, o, 1000) == data[o:o + 1000]
    _settle(other)
    assert other.ahead_fills == 0 and other._pool is None


def test_a_read_reaching_extents_being_decoded_ahead_waits_for_them(store: LocalStore) -> None:
    data = content(42, 4 * MIB)
    gate = threading.Event()
    r = TreeReader(_HeldAhead(store, gate), write_bytes(store, data).score)  # type: ignore[arg-type]
    pc = PlainCache(64 * MIB)
    try:
        pc.range(r, 0, EXTENT)
        pc.range(r, EXTENT, EXTENT)  # sequential: the MiB after the first run goes ahead
        assert 2 in _states(pc, r)  # marked as being decoded ahead, held at the gate
        got: list[bytes] = []
        at = MIB + EXTENT + 100  # past the first run (extents 0-16), in the one held
        t = threading.Thread(target=lambda: got.append(pc.read(r, at, 2 * EXTENT)))
        t.start()
        t.join(0.3)
        assert t.is_alive()  # the reader waits for the decode under way, not beside it
        gate.set()
        t.join(10)
        assert got == [data[at:at + 2 * EXTENT]]
        _settle(pc)
        assert pc.ahead_fills == RUN_BYTES // EXTENT
        assert 2 not in _states(pc, r)
    finally:
        gate.set()
        pc.close()


def test_a_decode_ahead_not_yet_begun_is_taken_back(store: LocalStore) -> None:
    one, two = content(43, 3 * MIB), content(44, 3 * MIB)
    gate = threading.Event()
    held = _HeldAhead(store, gate)
    r1 = TreeReader(held, write_bytes(store, one).score)  # type: ignore[arg-type]
    r2 = TreeReader(held, write_bytes(store, two).score)  # type: ignore[arg-type]
    pc = PlainCache(64 * MIB)
    try:
        for r in (r1, r2):  # the first's decode ahead holds the one thread; the second's waits
            pc.range(r, 0, EXTENT)
            pc.range(r, EXTENT, EXTENT)
        # the first run was extents 0-16, the second's decode ahead holds 17-32
        assert _states(pc, r2)[2 * MIB // EXTENT] == 2
        assert pc.read(r2, 2 * MIB, EXTENT) == two[2 * MIB:2 * MIB + EXTENT]  # decoded here
        gate.set()
        _settle(pc)
        assert pc.ahead_fills == RUN_BYTES // EXTENT  # the first's only
        assert 2 not in _states(pc, r1) and 2 not in _states(pc, r2)
        assert pc.read(r1, MIB, MIB) == one[MIB:2 * MIB]
    finally:
        gate.set()
        pc.close()


def test_a_corrupt_leaf_ahead_is_the_readers_error(tmp_path: Path) -> None:
    data = os.urandom(4 * MIB)
    # a leaf in what the second run has decoded ahead
    store, root = store_with_a_bad_leaf(tmp_path / "s", data, 2 * MIB + 8192)
    pc = PlainCache(64 * MIB)
    try:
        r = TreeReader(store, root)
        off = 0
        with pytest.raises(CorruptBlock):
            while off < len(data):
                assert pc.range(r, off, EXTENT).read() == data[off:off + EXTENT]  # type: ignore[union-attr]
                off += EXTENT
        # the decode ahead met it and kept quiet; the reader met it with the run holding it
        assert MIB < off <= 2 * MIB
        _settle(pc)
        assert 2 not in _states(pc, r)
        with pytest.raises(CorruptBlock):  # and again: nothing was marked present
            pc.range(r, off, EXTENT)
        assert pc.read(r, 3 * MIB, 100) == data[3 * MIB:3 * MIB + 100]
    finally:
        pc.close()
        store.close()


def test_closed_cache_serves_without_decoding_ahead(store: LocalStore) -> None:
    data = content(45, 3 * MIB)
    r = tree(store, data)
    pc = PlainCache(64 * MIB)
    pc.range(r, 0, EXTENT)
    pc.close()
    off = EXTENT
    while off < len(data):
        assert pc.range(r, off, EXTENT).read() == data[off:off + EXTENT]  # type: ignore[union-attr]
        off += EXTENT
    assert pc.ahead_fills == 0


def test_a_pool_shut_down_under_a_reader_leaves_it_decoding(store: LocalStore) -> None:
    """The decode-ahead pool refusing work (shut down between the reader's look at
    ``read_ahead`` and its submit) costs the reader nothing: it decodes as it comes."""
    from concurrent.futures import ThreadPoolExecutor

    data = content(46, 3 * MIB)
    r = tree(store, data)
    pc = PlainCache(64 * MIB)
    pc._pool = ThreadPoolExecutor(1)
    pc._pool.shutdown()  # read_ahead still True: the race's state
    got: list[bytes] = []

    def read() -> None:
        off = 0
        while off < len(data):
            got.append(pc.read(r, off, EXTENT))
            off += EXTENT

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()  # no deadlock on the cache's own lock
    assert b"".join(got) == data
    assert 2 not in _states(pc, r) and pc.ahead_fills == 0
