"""Prune beside writers and readers in one process (docs/store.md, "Online prune"): threads
write trees and name them (in writer sessions, as the daemon's saves and imports do), others
re-use old blocks (dedup hits, ``has``), others read old trees while segments are removed;
after every prune every named tree is whole, `check` is clean, and the log replays into a
closure-enforcing store."""

from __future__ import annotations

import random
import threading
import time

import pytest

from store.base import walk
from store.block import BlockType
from store.chunker import FixedChunker
from store.hashtree import TreeWriter
from store.local import LocalStore
from store.memory import MemoryStore
from store.prune import prune

SEG = 128 << 10


@pytest.fixture
def store(tmp_path):
    LocalStore.create(tmp_path / "s")
    s = LocalStore.open(tmp_path / "s", segment_size=SEG)
    yield s
    s.close()


def tree(store, data: bytes) -> bytes:
    w = TreeWriter(store, FixedChunker(4096))
    w.write(data)
    return bytes(w.finish().score)


def whole(store, root: bytes) -> dict[bytes, bytes]:
    return {bytes(s): blk.data for s, blk in walk(store, root)}


class Names:
    """A tiny name table the writers update after writing a tree (the roots prune reads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest: dict[str, bytes] = {}

    def set(self, name: str, root: bytes) -> None:
        with self.lock:
            self.latest[name] = root

    def roots(self) -> list[bytes]:
        with self.lock:
            return list(self.latest.values())


def test_prune_beside_writers_and_readers(store):
    rng = random.Random(3)
    names = Names()
    bases = {f"n{i}": bytearray(rng.randbytes(120_000)) for i in range(4)}
    for n, b in bases.items():
        names.set(n, tree(store, bytes(b)))
    store.sync()
    old_roots = names.roots()  # will be forgotten: some of their blocks live on, some die
    stop = threading.Event()
    errors: list[BaseException] = []
    written = {"trees": 0, "reads": 0}

    def writer(name: str, seed: int) -> None:
        r = random.Random(seed)
        base = bases[name]
        try:
            while not stop.is_set():
                with store.writers.session(f"writer {name}"):
                    for _ in range(3):
                        at = r.randrange(0, len(base) - 4096)
                        base[at : at + 4096] = r.randbytes(4096)
                    root = tree(store, bytes(base))
                    store.sync()
                    time.sleep(r.uniform(0, 0.01))  # the root is named a moment later
                    names.set(name, root)
                written["trees"] += 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    def reviver() -> None:
        """Re-put blocks of the first, forgotten trees (dedup hits on dying records) and
        name a tree built from them: prune must keep what it found."""
        r = random.Random(9)
        try:
            while not stop.is_set():
                with store.writers.session("reviver"):
                    old = r.choice(old_roots)
                    data = b"".join(store.get(s).data for s, blk in walk(store, old)
                                    if blk.type == BlockType.DATA) if store.has(old) else b""
                    if data:
                        names.set("revived", tree(store, data[:60_000]))
                time.sleep(0.005)
        except BaseException as e:  # reported by the test
            errors.append(e)

    def reader() -> None:
        r = random.Random(5)
        try:
            while not stop.is_set():
                roots = names.roots()
                for s, _blk in walk(store, r.choice(roots)):
                    store.get(s)
                written["reads"] += 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    def replicator() -> None:
        """Read the log from the start again and again, as a peer pulling would: segments
        removed under it are skipped, never an error. (Closure of what it yields is not
        asserted here: dead parents left indexed break it, with or without concurrency;
        see test_log_replay_after_prune_with_threshold.)"""
        try:
            while not stop.is_set():
                for _rec in store.iter_log(0):
                    pass
                written["replays"] = written.get("replays", 0) + 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n, i)) for i, n in enumerate(bases)]
    threads += [threading.Thread(target=reviver), threading.Thread(target=reader),
                threading.Thread(target=replicator)]
    for t in threads:
        t.start()
    reps = []
    try:
        for _ in range(6):
            time.sleep(0.15)
            reps.append(prune(store, names.roots, max_unused=0))
            assert not errors, errors
            # every named tree is whole right after the prune, writers still running
            for root in names.roots():
                whole(store, root)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert written["trees"] > 10 and written["reads"] > 0 and written.get("replays", 0) > 0
    assert sum(r.copied_records for r in reps) > 0 and sum(r.reclaimed_bytes for r in reps) > 0
    assert any(r.late_blocks for r in reps)
    final = {n: whole(store, r) for n, r in names.latest.items()}
    chk = store.check()
    assert chk.ok, chk.errors
    # every prefix of the indexed log is closed: it replays into a closure-enforcing store
    mem = MemoryStore()
    for rec in store.iter_log(0):
        mem.put(rec.type, rec.data)
    for n, r in names.latest.items():
        assert whole(mem, r) == final[n]


def test_prune_waits_for_older_writer_sessions(store):
    """A session open when prune starts may have written blocks no root names yet: prune
    waits for it before choosing what to drop, and keeps what it names at its end."""
    rng = random.Random(4)
    roots = [tree(store, rng.randbytes(100_000)) for _ in range(6)]
    store.sync()
    named = [roots[-1]]
    # the session writes its tree before prune starts and names it only later
    n = store.writers.begin("slow save")
    pending = tree(store, rng.randbytes(90_000))
    store.sync()
    want = whole(store, pending)
    told: list[list[str]] = []

    def close_later() -> None:
        time.sleep(0.5)
        named.append(pending)
        store.writers.end(n)

    t = threading.Thread(target=close_later)
    t.start()
    rep = prune(store, lambda: list(named), max_unused=0, waiting=told.append)
    t.join()
    assert told and told[0] == ["slow save"]
    assert rep.victims
    assert whole(store, pending) == want
    assert store.check().ok


def test_reads_across_segment_removal(store):
    """Readers hammer blocks of segments that prune copies and removes: a read that looked a
    block up in a removed segment looks again and finds the copy, never an error."""
    rng = random.Random(6)
    keep = tree(store, rng.randbytes(200_000))
    scores = [s for s, blk in walk(store, keep) if blk.type == BlockType.DATA]
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader(seed: int) -> None:
        r = random.Random(seed)
        try:
            while not stop.is_set():
                store.get(r.choice(scores))
                reads[0] += 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    moved = 0
    try:
        for _ in range(25):
            tree(store, rng.randbytes(150_000))  # dead at once: its segments get compacted
            rep = prune(store, [keep], max_unused=0)
            moved += rep.copied_records
            assert not errors, errors
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert moved > 0 and reads[0] > 1000
    assert store.check().ok


def test_read_descriptors_are_bounded(tmp_path):
    """A store of more segments than the descriptor cache holds: readers in threads read
    blocks from all of them at random, never fail, and at most MAX_READ_FDS stay open."""
    from store.local import MAX_READ_FDS

    LocalStore.create(tmp_path / "s")
    st = LocalStore.open(tmp_path / "s", segment_size=4096)
    rng = random.Random(8)
    blocks = {}
    for _ in range(MAX_READ_FDS + 150):  # one block per segment
        data = rng.randbytes(3000)
        blocks[bytes(st.put(BlockType.DATA, data))] = data
    st.sync()
    assert len(st.segment_starts()) > MAX_READ_FDS
    scores = list(blocks)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        r = random.Random(seed)
        try:
            for _ in range(3000):
                s = r.choice(scores)
                assert st.get(s).data == blocks[s]
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(st._read_fds) <= MAX_READ_FDS
    st.close()


def test_log_replay_after_prune_with_threshold(store):
    """What a peer pulling from cursor 0 does after a prune that kept some partly dead
    segments: replay the log into a closure-enforcing store."""
    rng = random.Random(0)
    base = bytearray(rng.randbytes(300_000))
    roots = []
    for _ in range(15):
        for _ in range(3):
            at = rng.randrange(0, len(base) - 4096)
            base[at : at + 4096] = rng.randbytes(4096)
        roots.append(tree(store, bytes(base)))
    store.sync()
    prune(store, roots[-2:], max_unused=30)
    mem = MemoryStore()
    for rec in store.iter_log(0):
        mem.put(rec.type, rec.data)  # MissingReference if a record came before its child
    # the retained trees arrive whole (the replica enforces closure: the root implies the rest)
    assert all(mem.has(r) for r in roots[-2:])
