"""bench/store: block store throughput beside the raw disk, in one run.

    .venv/bin/python bench/store.py [--gib 1] [--dir /var/tmp]

Data: 64 KiB blocks, each half random and half zeros (so zstd halves them), 1 GiB by default.
Figures: raw file write+fsync MB/s; put MB/s (then sync); duplicate put rate; get MB/s in
random order (page cache warm: the store's own cost); a 1 GiB hash tree written through the
CDC chunker, then random 4 KiB and 64 KiB reads at random offsets.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store.block import BlockType
from store.hashtree import TreeReader, TreeWriter
from store.local import LocalStore

BLOCK = 64 << 10


def gen_blocks(total: int, seed: int = 1):
    rng = random.Random(seed)
    for _ in range(total // BLOCK):
        yield rng.randbytes(BLOCK // 2) + bytes(BLOCK // 2)


def mbps(nbytes: int, secs: float) -> float:
    return nbytes / secs / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    total = int(args.gib * (1 << 30))
    blocks = list(gen_blocks(total))
    nbytes = len(blocks) * BLOCK
    work = Path(tempfile.mkdtemp(prefix="grid-bench-store-", dir=args.dir))
    rows: list[tuple[str, str]] = []
    try:
        # Raw disk: the same bytes, one file, fsync at the end.
        t = time.perf_counter()
        with open(work / "raw", "wb") as f:
            for b in blocks:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        rows.append(("raw file write + fsync", f"{mbps(nbytes, time.perf_counter() - t):.0f} MB/s"))
        os.unlink(work / "raw")

        LocalStore.create(work / "s")
        with LocalStore.open(work / "s") as s:
            t = time.perf_counter()
            scores = [s.put(BlockType.DATA, b) for b in blocks]
            s.sync()
            dt = time.perf_counter() - t
            rows.append(("put 64 KiB blocks (+ sync)", f"{mbps(nbytes, dt):.0f} MB/s ({len(blocks) / dt:.0f} blocks/s)"))
            st = s.statistics()
            rows.append(("  stored / logical", f"{st.stored_bytes / st.logical_bytes:.2f}"))

            t = time.perf_counter()
            for b in blocks:
                s.put(BlockType.DATA, b)
            dt = time.perf_counter() - t
            rows.append(("duplicate put", f"{len(blocks) / dt:.0f} blocks/s ({mbps(nbytes, dt):.0f} MB/s)"))

            order = scores[:]
            random.Random(2).shuffle(order)
            t = time.perf_counter()
            for sc in order:
                s.get(sc)
            dt = time.perf_counter() - t
            rows.append(("get, random order (verified)", f"{mbps(nbytes, dt):.0f} MB/s ({len(order) / dt:.0f} blocks/s)"))

        shutil.rmtree(work / "s")
        LocalStore.create(work / "t")
        with LocalStore.open(work / "t") as s:
            rng = random.Random(3)
            # Fresh bytes in 8 MiB pieces (1 MiB runs, half random / half zero), made first.
            pieces = [b"".join(rng.randbytes(1 << 19) + bytes(1 << 19) for _ in range(8))
                      for _ in range(max(1, total // (8 << 20)))]
            del blocks
            t = time.perf_counter()
            w = TreeWriter(s)
            for p in pieces:
                w.write(p)
            ref = w.finish()
            s.sync()
            dt = time.perf_counter() - t
            rows.append(("hash tree write, CDC 16 KiB leaves (+ sync)", f"{mbps(ref.size, dt):.0f} MB/s"))
            del pieces
            r = TreeReader(s, ref.score)
            for size, count in ((4096, 20000), (65536, 5000)):
                offs = [rng.randrange(0, ref.size - size) for _ in range(count)]
                t = time.perf_counter()
                for o in offs:
                    assert len(r.read(o, size)) == size
                dt = time.perf_counter() - t
                rows.append((f"tree read {size // 1024} KiB at random offsets",
                             f"{count / dt:.0f} reads/s ({dt / count * 1e6:.0f} µs each)"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench/store: {nbytes / (1 << 30):.2f} GiB, {nbytes // BLOCK} blocks of 64 KiB (half random, half zero)")
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{w}}  {b}")


if __name__ == "__main__":
    main()
