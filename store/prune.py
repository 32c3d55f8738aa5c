"""Prune: mark the blocks reachable from a set of roots, then compact the segments whose dead
fraction passes a threshold (docs/store.md, "Prune").

The store layer knows nothing of names or spawns: the caller (grid.prune) gives the roots.
Prune runs in the store's writer process and with the writer to itself (no concurrent puts):
the copy phase must see a still index, see docs/store.md for why and for the crash analysis.

**The mark set** is a bitmap over the index's records sorted by log position: an
``array('Q')`` of every indexed record's position (8 bytes per block) and one bit per block,
so 10 million blocks take about 81 MB (plus, while it is built, the sort's temporary list:
about 40 bytes per block). A block's bit is found by bisecting its position.

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
        raw = array("Q")
        for _score, loc in store.index_entries():
            raw.append(loc.position)
        return cls(array("Q", sorted(raw)))

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
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _seg_of(starts: list[int], pos: int) -> int:
    return starts[bisect.bisect_right(starts, pos) - 1]


def mark(store: LocalStore, roots: Iterable[bytes], progress: Progress | None = None,
         report: PruneReport | None = None) -> tuple[MarkSet, dict[int, SegmentUse]]:
    """Mark every block reachable from *roots*; return the mark set and each segment's use."""
    store.sync()
    ms = MarkSet.of_index(store)
    starts = store.segment_starts()
    use = {s: SegmentUse(s, store.segment_size_of(s)) for s in starts}
    rep = report if report is not None else PruneReport()
    stack: list[bytes] = []
    for r in roots:
        rep.roots += 1
        if store.locate(r) is None:
            rep.missing_roots.append(format_score(r))
        else:
            stack.append(bytes(r))
    done = 0
    while stack:
        score = stack.pop()
        loc = store.locate(score)
        if loc is None:
            raise StoreError(f"block {format_score(score)} is referenced but absent: run "
                             "`grid store check`; prune stops and removes nothing")
        i = ms.slot(loc.position)
        if i is None:
            raise StoreError(f"block {format_score(score)}: the index changed during the mark")
        if ms.test(i):
            continue
        ms.set(i)
        use[_seg_of(starts, loc.position)].live += RECORD_HEADER_SIZE + loc.stored_len
        if loc.type != BlockType.DATA:
            blk = store.get(score)
            stack.extend(c for c in references(blk.type, blk.data) if c != NULL_SCORE)
        done += 1
        if progress is not None and done % 4096 == 0:
            progress("mark", done, len(ms))
    rep.blocks = len(ms)
    rep.live_blocks = done
    rep.live_bytes = sum(u.live for u in use.values())
    rep.dead_bytes = sum(u.dead for u in use.values())
    rep.mark_set_bytes = ms.nbytes
    if progress is not None:
        progress("mark", done, done)
    return ms, use


def compact(store: LocalStore, roots: list[bytes], ms: MarkSet, victims: set[int],
            progress: Progress | None = None, report: PruneReport | None = None) -> None:
    """Copy the live records of *victims* (and their live referrers) to the log's end,
    children first; switch the index; drop the victims (module docstring)."""
    rep = report if report is not None else PruneReport()
    starts = store.segment_starts()
    done = bytearray(len(ms.bits))
    moved = bytearray(len(ms.bits))

    def bit(buf: bytearray, i: int) -> bool:
        return bool(buf[i >> 3] & (1 << (i & 7)))

    def setbit(buf: bytearray, i: int) -> None:
        buf[i >> 3] |= 1 << (i & 7)

    def was_moved(score: bytes) -> bool:
        loc = store.locate(score)
        assert loc is not None
        i = ms.slot(loc.position)
        return i is None or bit(moved, i)  # not at an indexed position: copied in this run

    def copy(score: bytes, loc: Location) -> None:
        store.get(score)  # verify before copying: a bad block is never spread
        store.copy_record(score, loc)
        rep.copied_records += 1
        rep.copied_bytes += RECORD_HEADER_SIZE + loc.stored_len
        if progress is not None and rep.copied_records % 1024 == 0:
            progress("copy", rep.copied_bytes, 0)

    stack: list[tuple[bytes, bool]] = [(bytes(r), False) for r in roots if store.locate(r) is not None]
    while stack:
        score, expanded = stack.pop()
        loc = store.locate(score)
        assert loc is not None
        i = ms.slot(loc.position)
        if i is None or bit(done, i):
            continue
        in_victim = _seg_of(starts, loc.position) in victims
        if loc.type == BlockType.DATA:
            if in_victim:
                copy(score, loc)
                setbit(moved, i)
            setbit(done, i)
            continue
        refs = [c for c in references(*_typed(store, score)) if c != NULL_SCORE]
        if not expanded:
            stack.append((score, True))
            stack.extend((c, False) for c in refs)
            continue
        if in_victim or any(was_moved(c) for c in refs):
            copy(score, loc)
            setbit(moved, i)
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


def prune(store: LocalStore, roots: Iterable[bytes], *, max_unused: float = 10.0,
          dry_run: bool = False, progress: Progress | None = None) -> PruneReport:
    """Mark from *roots*, then compact every segment (but the one being appended to) whose
    dead fraction exceeds *max_unused* percent. With *dry_run*, only mark and report."""
    if store.readonly:
        raise StoreError(f"store {store.path} is open read-only: prune needs the writer")
    t0 = time.monotonic()
    roots = [bytes(r) for r in dict.fromkeys(bytes(r) for r in roots)]
    rep = PruneReport(dry_run=dry_run)
    ms, use = mark(store, roots, progress, rep)
    if rep.missing_roots:
        raise StoreError(f"{len(rep.missing_roots)} root(s) are not in the store (first "
                         f"{rep.missing_roots[0]}); prune stops and removes nothing")
    last = store.segment_starts()[-1]
    victims = {s for s, u in use.items() if s != last and u.dead_fraction * 100 > max_unused}
    if dry_run:
        rep.victims = [f"{s:016x}.seg" for s in sorted(victims)]
        rep.reclaimed_bytes = sum(use[s].dead for s in victims)  # at least; referrers move too
    elif victims:
        compact(store, roots, ms, victims, progress, rep)
        # The victims' dead bytes are gone; referrers copied from other segments left their
        # old records behind, dead.
        victim_live = sum(use[s].live for s in victims)
        rep.dead_bytes += (rep.copied_bytes - victim_live) - sum(use[s].dead for s in victims)
        for s in victims:
            del use[s]
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
