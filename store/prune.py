"""Prune: mark the blocks reachable from a set of roots, then compact the segments whose dead
fraction passes a threshold (docs/store.md, "Prune").

The store layer knows nothing of names or spawns: the caller (grid.prune) gives the roots.
Prune runs in the store's writer process, beside its writers (docs/store.md, "Online
prune"; store.barrier): it seals the segment being appended to, marks while puts go on (each
noted in the late set), waits for writer sessions older than itself, then holds puts off
for the last mark and the copy phase, which must see a still index.

**The mark set** is a bitmap over the index's records sorted by log position: an
``array('Q')`` of every indexed record's position (8 bytes per block) and one bit per block,
so 10 million blocks take about 81 MB (plus, while it is built, one segment's positions as a
list: MarkSet.of_index). A block's bit is found by bisecting its position.

**Compaction** copies, children first, every live record of a victim segment and every live
record that references a copied one (the upward closure), to the end of the log: copied
records get new, larger positions and every prefix of the indexed log stays closed under
reference (invariant 2), so replication cursors keep working. The index is switched with one
LMDB commit; then the victims' dead entries are deleted and the victims named in the index's
``doomed`` key, in one more commit; then the segment files are removed. A kill anywhere leaves
either the old locations (the copies are unindexed duplicates) or the new ones; an open finishes
a removal the ``doomed`` key names.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from store.block import BlockType, references
from store.errors import StoreError
from store.local import LocalStore
from store.score import NULL_SCORE, format_score
from store.segment import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, Location

Progress = Callable[[str, int, int], None]  # phase, done, total
STAT_FILE = "prune.json"  # last mark's live/dead figures, for `grid store stat`


class MarkSet:
    """Live bits over the index's records, by log position (see the module docstring)."""

    def __init__(self, positions: array) -> None:
        self.positions = positions
        self.bits = bytearray((len(positions) + 7) // 8)

    @classmethod
    def of_index(cls, store: LocalStore) -> MarkSet:
        """The committed index's positions, sorted, built without a list of them all: one
        pass counts the entries of each segment, a second files each position in its
        segment's slice of one ``array('Q')``, then each slice is sorted alone. The
        transient peak is one segment's entries as a Python list (about 40 bytes each)."""
        starts = store.segment_starts()
        with store.index_snapshot() as positions:
            counts = [0] * len(starts)
            for pos in positions():
                counts[bisect.bisect_right(starts, pos) - 1] += 1
            offsets = [0] * len(starts)
            total = 0
            for k, c in enumerate(counts):
                offsets[k] = total
                total += c
            raw = array("Q", [0]) * total
            fill = list(offsets)
            for pos in positions():
                k = bisect.bisect_right(starts, pos) - 1
                raw[fill[k]] = pos
                fill[k] += 1
        for k, c in enumerate(counts):
            if c > 1:
                a = offsets[k]
                raw[a : a + c] = array("Q", sorted(raw[a : a + c]))
        return cls(raw)

    def __len__(self) -> int:
        return len(self.positions)

    def slot(self, position: int) -> int | None:
        i = bisect.bisect_left(self.positions, position)
        if i < len(self.positions) and self.positions[i] == position:
            return i
        return None

    def test(self, i: int) -> bool:
        return bool(self.bits[i >> 3] & (1 << (i & 7)))

    def set(self, i: int) -> None:
        self.bits[i >> 3] |= 1 << (i & 7)

    def count(self) -> int:
        return sum(bin(b).count("1") for b in self.bits)

    @property
    def nbytes(self) -> int:
        return self.positions.itemsize * len(self.positions) + len(self.bits)


@dataclass
class SegmentUse:
    start: int
    size: int  # bytes of the file, header included
    live: int = 0  # bytes of live records

    @property
    def dead(self) -> int:
        return max(0, self.size - SEGMENT_HEADER_SIZE - self.live)

    @property
    def dead_fraction(self) -> float:
        body = self.size - SEGMENT_HEADER_SIZE
        return self.dead / body if body > 0 else 0.0


@dataclass
class PruneReport:
    roots: int = 0
    missing_roots: list[str] = field(default_factory=list)
    blocks: int = 0
    live_blocks: int = 0
    live_bytes: int = 0
    dead_bytes: int = 0
    mark_set_bytes: int = 0
    victims: list[str] = field(default_factory=list)
    copied_records: int = 0
    copied_bytes: int = 0
    removed_bytes: int = 0  # size of the segment files removed
    reclaimed_bytes: int = 0  # removed less copied: what the disk got back
    dropped_blocks: int = 0
    late_blocks: int = 0  # put while prune ran (kept, with all they reference)
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _seg_of(starts: list[int], pos: int) -> int:
    return starts[bisect.bisect_right(starts, pos) - 1]


class _Marker:
    """The mark: bits in the mark set for blocks it holds; blocks written after the mark set
    was taken (beyond the sealed boundary: late blocks) are tracked by score instead."""

    def __init__(self, store: LocalStore, boundary: int, report: PruneReport,
                 progress: Progress | None) -> None:
        self.store = store
        self.boundary = boundary
        self.rep = report
        self.progress = progress
        store.sync()  # everything before the boundary is in the committed index
        self.ms = MarkSet.of_index(store)
        self.starts = store.segment_starts()
        # A dry run seals nothing: the segment being appended to counts up to the boundary.
        self.use = {s: SegmentUse(s, min(store.segment_size_of(s), boundary - s))
                    for s in self.starts if s < boundary}
        self.extra: set[bytes] = set()  # late blocks past the mark set, already marked
        self.done = 0

    def mark(self, roots: Iterable[bytes]) -> None:
        store, ms = self.store, self.ms
        stack = list(roots)
        while stack:
            score = stack.pop()
            loc = store.locate(score)
            if loc is None:
                raise StoreError(f"block {format_score(score)} is referenced but absent: run "
                                 "`grid store check`; prune stops and removes nothing")
            i = ms.slot(loc.position)
            if i is None:
                if loc.position < self.boundary:
                    raise StoreError(f"block {format_score(score)}: the index changed during "
                                     "the mark")
                if score in self.extra:
                    continue
                self.extra.add(score)
            else:
                if ms.test(i):
                    continue
                ms.set(i)
                u = self.use.get(_seg_of(self.starts, loc.position))
                if u is not None:
                    u.live += RECORD_HEADER_SIZE + loc.stored_len
                self.done += 1
            if loc.type != BlockType.DATA:
                blk = store.get(score)
                stack.extend(c for c in references(blk.type, blk.data) if c != NULL_SCORE)
            if self.done % 4096 == 0:
                if store.prune_cancelled():
                    raise StoreError("prune stopped: the store is being closed; nothing was removed")
                if self.progress is not None:
                    self.progress("mark", self.done, len(ms))

    def present(self, roots: Iterable[bytes]) -> list[bytes]:
        """*roots* the store holds; the others are noted in the report as missing."""
        out = []
        for r in roots:
            self.rep.roots += 1
            if self.store.locate(r) is None:
                self.rep.missing_roots.append(format_score(r))
            else:
                out.append(bytes(r))
        return out

    def finish(self) -> tuple[MarkSet, dict[int, SegmentUse]]:
        rep, use = self.rep, self.use
        rep.blocks = len(self.ms)
        rep.live_blocks = self.done
        rep.live_bytes = sum(u.live for u in use.values())
        rep.dead_bytes = sum(u.dead for u in use.values())
        rep.mark_set_bytes = self.ms.nbytes
        if self.progress is not None:
            self.progress("mark", self.done, self.done)
        return self.ms, use


def mark(store: LocalStore, roots: Iterable[bytes], progress: Progress | None = None,
         report: PruneReport | None = None) -> tuple[MarkSet, dict[int, SegmentUse]]:
    """Mark every block reachable from *roots* (with no concurrent writer); return the mark
    set and each segment's use."""
    rep = report if report is not None else PruneReport()
    m = _Marker(store, store.position(), rep, progress)
    m.mark(m.present(roots))
    return m.finish()


def compact(store: LocalStore, roots: list[bytes], ms: MarkSet, victims: set[int],
            progress: Progress | None = None, report: PruneReport | None = None) -> None:
    """Copy the live records of *victims* (and their live referrers) to the log's end,
    children first; switch the index; drop the victims (module docstring). No put may run
    meanwhile (the caller holds ``store.exclusive()`` or has the store to itself)."""
    rep = report if report is not None else PruneReport()
    starts = store.segment_starts()
    copy_start = store.position()  # every copy lands at or past it
    done = bytearray(len(ms.bits))
    moved = bytearray(len(ms.bits))
    extra_done: set[bytes] = set()  # blocks outside the mark set (late ones) already walked

    def bit(buf: bytearray, i: int) -> bool:
        return bool(buf[i >> 3] & (1 << (i & 7)))

    def setbit(buf: bytearray, i: int) -> None:
        buf[i >> 3] |= 1 << (i & 7)

    def was_moved(score: bytes) -> bool:
        loc = store.locate(score)
        assert loc is not None
        if loc.position >= copy_start:
            return True  # copied in this run
        i = ms.slot(loc.position)
        return i is not None and bit(moved, i)

    def copy(score: bytes, loc: Location) -> None:
        store.copy_record(score, loc)  # it verifies the record: a bad block is never spread
        rep.copied_records += 1
        rep.copied_bytes += RECORD_HEADER_SIZE + loc.stored_len
        if progress is not None and rep.copied_records % 1024 == 0:
            progress("copy", rep.copied_bytes, 0)

    stack: list[tuple[bytes, bool]] = [(bytes(r), False) for r in roots if store.locate(r) is not None]
    while stack:
        score, expanded = stack.pop()
        loc = store.locate(score)
        assert loc is not None
        if loc.position >= copy_start:
            continue  # a copy made in this run: done
        i = ms.slot(loc.position)
        if i is None:
            if not expanded and score in extra_done:
                continue
        elif bit(done, i):
            continue
        in_victim = _seg_of(starts, loc.position) in victims
        if loc.type == BlockType.DATA:
            if in_victim:
                copy(score, loc)
            if i is not None:
                setbit(done, i)
                if in_victim:
                    setbit(moved, i)
            else:
                extra_done.add(score)
            continue
        refs = [c for c in references(*_typed(store, score)) if c != NULL_SCORE]
        if not expanded:
            if i is None:
                extra_done.add(score)
            stack.append((score, True))
            stack.extend((c, False) for c in refs)
            continue
        if in_victim or any(was_moved(c) for c in refs):
            copy(score, loc)
            if i is not None:
                setbit(moved, i)
        if i is not None:
            setbit(done, i)
    if progress is not None:
        progress("copy", rep.copied_bytes, rep.copied_bytes)
    store.sync()  # the copies are durable and indexed: the index now names them
    rep.victims = [f"{s:016x}.seg" for s in sorted(victims)]
    rep.dropped_blocks, rep.removed_bytes = store.drop_segments(sorted(victims))
    rep.reclaimed_bytes = rep.removed_bytes - rep.copied_bytes


def _typed(store: LocalStore, score: bytes) -> tuple[int, bytes]:
    blk = store.get(score)
    return blk.type, blk.data


RootsFn = Callable[[], Iterable[bytes]]
Waiting = Callable[[list[str]], None]


def prune(store: LocalStore, roots: Iterable[bytes] | RootsFn, *, max_unused: float = 10.0,
          dry_run: bool = False, progress: Progress | None = None,
          waiting: Waiting | None = None) -> PruneReport:
    """Mark from *roots*, then compact every sealed segment whose dead fraction exceeds
    *max_unused* percent. With *dry_run*, only mark and report.

    Writers may run meanwhile (docs/store.md, "Online prune"): the segment being appended
    to is sealed first, puts from then on go into the store's late set, the mark runs beside
    them; then prune waits for the writer sessions that began before it (*waiting* is told
    which), holds puts off, marks again from *roots* (a callable is called again: names and
    spawns made meanwhile) and from the late set, and compacts."""
    if store.readonly:
        raise StoreError(f"store {store.path} is open read-only: prune needs the writer")
    t0 = time.monotonic()
    again: RootsFn | None = roots if callable(roots) else None
    rep = PruneReport(dry_run=dry_run)
    cutoff = store.begin_prune()
    try:
        boundary = store.position() if dry_run else store.seal()
        m = _Marker(store, boundary, rep, progress)
        given = again() if again is not None else roots
        first = [bytes(r) for r in dict.fromkeys(bytes(r) for r in given)]  # type: ignore[union-attr]
        m.mark(m.present(first))
        if rep.missing_roots:
            raise StoreError(f"{len(rep.missing_roots)} root(s) are not in the store (first "
                             f"{rep.missing_roots[0]}); prune stops and removes nothing")
        more: list[bytes] = []
        if not dry_run:
            if not store.writers.wait_older(cutoff, waiting, cancelled=store.prune_cancelled):
                raise StoreError("prune stopped: the store is being closed; nothing was removed")
            # Read again before holding puts off: reading an open spawn's roots runs on its
            # thread, which may be waiting to put. Whatever is named after this read was put
            # or found after prune began, so it is in the late set.
            if again is not None:
                more = [bytes(r) for r in again()]
        with store.exclusive() if not dry_run else contextlib.nullcontext():
            if store.prune_cancelled():
                raise StoreError("prune stopped: the store is being closed; nothing was removed")
            final = first
            if not dry_run:
                late = store.late_scores()
                rep.late_blocks = len(late)
                final = first + [r for r in more if store.locate(r) is not None] + late
                m.mark(final)
            ms, use = m.finish()
            victims = {s for s, u in use.items() if u.dead_fraction * 100 > max_unused}
            if dry_run:
                rep.victims = [f"{s:016x}.seg" for s in sorted(victims)]
                rep.reclaimed_bytes = sum(use[s].dead for s in victims)  # at least; referrers move too
            elif victims:
                compact(store, final, ms, victims, progress, rep)
                # The victims' dead bytes are gone; referrers copied from other segments
                # left their old records behind, dead.
                victim_live = sum(use[s].live for s in victims)
                rep.dead_bytes += (rep.copied_bytes - victim_live) - sum(use[s].dead for s in victims)
                for s in victims:
                    del use[s]
    finally:
        store.end_prune()
    write_stat(store, use, rep)
    rep.seconds = round(time.monotonic() - t0, 3)
    return rep


def write_stat(store: LocalStore, use: dict[int, SegmentUse], rep: PruneReport) -> None:
    """Remember the mark's live/dead figures for `grid store stat` (atomic replace)."""
    data = {"marked_at": time.time(), "position": store.position(), "live_bytes": rep.live_bytes,
            "dead_bytes": rep.dead_bytes, "live_blocks": rep.live_blocks, "blocks": rep.blocks,
            "segments": {f"{s:016x}.seg": {"size": u.size, "live": u.live} for s, u in use.items()}}
    path = store.path / STAT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_stat(path: os.PathLike[str] | str) -> dict | None:
    """The last mark's figures (see write_stat), or None."""
    try:
        with open(os.path.join(path, STAT_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
