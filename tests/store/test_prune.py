"""Prune at the store level: the mark, compaction, what stays readable, closure of the log
after compaction, and replication cursors across it (identical block sets)."""

from __future__ import annotations

import random

import pytest

from store.base import walk
from store.chunker import FixedChunker
from store.errors import StoreError
from store.hashtree import TreeWriter
from store.local import LocalStore
from store.memory import MemoryStore
from store.prune import MarkSet, prune, read_stat

SEG = 256 << 10


def snapshot(store, rng: random.Random, base: bytearray, change: float) -> bytes:
    """Change a fraction of *base* (in place) and store it as a hash tree; its root."""
    n = int(len(base) * change)
    for _ in range(max(1, n // 4096)):
        at = rng.randrange(0, len(base) - 4096)
        base[at : at + 4096] = rng.randbytes(4096)
    w = TreeWriter(store, FixedChunker(4096))
    w.write(bytes(base))
    return bytes(w.finish().score)


def reachable(store, roots) -> dict[bytes, bytes]:
    out = {}
    for r in roots:
        for s, blk in walk(store, r):
            out[bytes(s)] = blk.data
    return out


@pytest.fixture
def store(tmp_path):
    LocalStore.create(tmp_path / "s")
    s = LocalStore.open(tmp_path / "s", segment_size=SEG)
    yield s
    s.close()


def make_history(store, n=12, size=200_000, change=0.2, seed=1):
    rng = random.Random(seed)
    base = bytearray(rng.randbytes(size))
    roots = [snapshot(store, rng, base, change) for _ in range(n)]
    store.sync()
    return roots


def test_prune_keeps_every_retained_tree_and_reclaims(store):
    roots = make_history(store)
    keep = roots[-3:]
    want = reachable(store, keep)
    before = store.statistics()
    segs_before = store.segment_starts()
    rep = prune(store, keep, max_unused=10)
    assert rep.live_blocks == len(want)
    assert rep.victims and rep.reclaimed_bytes > 0 and rep.dropped_blocks > 0
    assert set(store.segment_starts()) != set(segs_before)
    assert reachable(store, keep) == want
    chk = store.check()
    assert chk.ok, chk.errors
    assert store.statistics().blocks == before.blocks - rep.dropped_blocks
    # the old roots that were not kept are (mostly) gone
    assert sum(store.has(r) for r in roots[:-3]) < len(roots) - 3
    # a second prune finds (almost) nothing more to do, and loses nothing
    rep2 = prune(store, keep, max_unused=10)
    assert reachable(store, keep) == want and rep2.live_blocks == len(want)
    st = read_stat(store.path)
    assert st is not None and st["live_bytes"] == rep2.live_bytes


def test_reopen_and_rebuild_after_prune(store, tmp_path):
    roots = make_history(store)
    keep = roots[-2:]
    want = reachable(store, keep)
    prune(store, keep, max_unused=5)
    store.close()
    with LocalStore.open(tmp_path / "s", segment_size=SEG) as s:
        assert reachable(s, keep) == want and s.check().ok
    with LocalStore.open(tmp_path / "s", segment_size=SEG, rebuild=True) as s:
        assert reachable(s, keep) == want and s.check().ok
        assert s.last_rebuild.missing == 0


def test_dry_run_changes_nothing(store):
    roots = make_history(store, n=6)
    pos, segs = store.position(), store.segment_starts()
    rep = prune(store, roots[-1:], dry_run=True)
    assert rep.victims and rep.copied_records == 0
    assert store.position() == pos and store.segment_starts() == segs
    assert all(store.has(r) for r in roots)


def test_missing_root_stops_prune(store):
    roots = make_history(store, n=3)
    with pytest.raises(StoreError, match="not in the store"):
        prune(store, [roots[-1], bytes(32)])
    assert all(store.has(r) for r in roots)


def test_log_stays_closed_and_positions_monotone(store):
    """Every prefix of the indexed log is closed: replaying iter_log into a store that
    enforces closure succeeds; copied records sit past the old end of the log."""
    roots = make_history(store)
    end_before = store.position()
    rep = prune(store, roots[-3:], max_unused=10)
    assert rep.copied_records > 0
    assert store.position() > end_before
    peer = MemoryStore()
    for rec in store.iter_log(0):
        peer.put(rec.type, rec.data)  # raises MissingReference if a prefix were not closed
    assert reachable(peer, roots[-3:]) == reachable(store, roots[-3:])


def test_replication_cursor_across_compaction(store):
    """A peer that replicated up to a cursor before compaction catches up after it, asking
    `missing` first: it ends with the same retained trees, and nothing it had is resent."""
    rng = random.Random(5)
    base = bytearray(rng.randbytes(200_000))
    roots = [snapshot(store, rng, base, 0.2) for _ in range(8)]
    store.sync()
    peer = MemoryStore()
    cursor = 0
    for rec in store.iter_log(0):
        peer.put(rec.type, rec.data)
        cursor = rec.next_position
    roots += [snapshot(store, rng, base, 0.2) for _ in range(4)]
    store.sync()
    keep = roots[-3:]
    prune(store, keep, max_unused=10)
    had = set(peer._blocks)
    sent = 0
    for rec in store.iter_log(cursor):
        if peer.missing([rec.score]):
            assert bytes(rec.score) not in had
            peer.put(rec.type, rec.data)
            sent += 1
    assert sent > 0
    assert reachable(peer, keep) == reachable(store, keep)
    # a fresh peer replicating the pruned store gets exactly the live blocks
    fresh = MemoryStore()
    for rec in store.iter_log(0):
        fresh.put(rec.type, rec.data)
    assert set(reachable(fresh, keep)) == set(reachable(store, keep))


def test_markset_is_compact():
    from array import array

    ms = MarkSet(array("Q", range(0, 10_000 * 64, 64)))
    assert ms.slot(64 * 17) == 17 and ms.slot(65) is None
    ms.set(17)
    assert ms.test(17) and not ms.test(16) and ms.count() == 1
    assert ms.nbytes <= 10_000 * 8.2
