"""bench/markset: the memory and time of prune's mark set (store.prune.MarkSet) at N blocks.

    .venv/bin/python bench/markset.py [--blocks 1000000] [--segment-mib 16] [--workdir DIR]

Makes a synthetic store of N small DATA blocks (32 bytes each, distinct) directly with
LocalStore, then builds the mark set from the index as prune does and reports: the set's own
bytes (8 per block + 1 bit), the peak of Python allocations while it is built (tracemalloc:
the transient), the process's peak RSS, and the seconds. The figure for 10 million blocks
follows from the per-block cost (docs/store.md, "Prune").
"""

from __future__ import annotations

import argparse
import bisect
import resource
import shutil
import sys
import time
import tracemalloc
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store.block import BlockType
from store.local import LocalStore
from store.prune import MarkSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--segment-mib", type=int, default=16)
    ap.add_argument("--workdir", default="/var/tmp/grid-bench-markset")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    LocalStore.create(work)
    t0 = time.monotonic()
    with LocalStore.open(work, segment_size=args.segment_mib << 20) as st:
        for i in range(args.blocks):
            st.put(BlockType.DATA, i.to_bytes(8, "big") * 4)
        st.sync()
    made = time.monotonic() - t0
    with LocalStore.open(work, segment_size=args.segment_mib << 20) as st:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t1 = time.monotonic()
        ms = MarkSet.of_index(st)
        took = time.monotonic() - t1  # untraced: tracemalloc slows every allocation
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del ms
        tracemalloc.start()
        ms = MarkSet.of_index(st)
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        segs = len(st.segment_starts())
        starts = st.segment_starts()
        per_seg = [0] * len(starts)
        for p in ms.positions:
            per_seg[bisect.bisect_right(starts, p) - 1] += 1
        # the former build, for comparison: one sorted list of every position
        tracemalloc.start()
        with st.index_snapshot() as positions:
            old = array("Q", sorted(positions()))
        _c, old_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert old == ms.positions
    n = len(ms)
    print(f"blocks {n:,} in {segs} segments of {args.segment_mib} MiB (store made in {made:.1f} s)")
    print(f"mark set {ms.nbytes:,} bytes ({ms.nbytes / n:.3f} B/block), built in {took:.2f} s")
    print(f"python allocations while building: peak {peak:,} bytes ({peak / n:.2f} B/block), "
          f"kept {cur:,}")
    transient = peak - ms.nbytes
    big = max(per_seg)
    print(f"  transient {transient:,} bytes for the largest segment's {big:,} entries "
          f"({transient / big:.1f} B/entry)")
    print(f"former build (one sorted list of all): peak {old_peak:,} bytes ({old_peak / n:.1f} B/block)")
    print(f"peak RSS before {rss0 / 1024:.1f} MiB, after {rss1 / 1024:.1f} MiB")
    print(f"10 million blocks: mark set {ms.nbytes / n * 1e7 / 1e6:.0f} MB, plus while building "
          f"{transient / big:.0f} B x the largest segment's entries (former build: "
          f"{old_peak / n * 1e7 / 1e6:.0f} MB)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
