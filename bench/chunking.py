"""bench/chunking: fixed vs content-defined leaves on re-ingest, to choose the default.

    .venv/bin/python bench/chunking.py [--mib 256]

A stream (half random, half zeros in 1 MiB runs, like the import benchmark's files) is stored;
then (a) 1 % of its bytes are changed in place, in 64 scattered runs, and (b) 100 bytes are
inserted at one point; each variant is stored into the same store. Reported: new bytes stored
(logical payload of new blocks) / bytes changed, and leaf count.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store.chunker import CdcChunker, Chunker, FixedChunker
from store.hashtree import write_bytes
from store.memory import MemoryStore


def make(size: int, rng: random.Random) -> bytearray:
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(1 << 19) + bytes(1 << 19)
    return out[:size]


def added(store: MemoryStore, data: bytes, chunker: Chunker) -> int:
    before = store.statistics().logical_bytes
    write_bytes(store, data, chunker)
    return store.statistics().logical_bytes - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    rng = random.Random(42)
    base = make(args.mib << 20, rng)
    # 1 % in place, 64 runs at random places.
    changed = bytearray(base)
    run = len(base) // 100 // 64
    for _ in range(64):
        o = rng.randrange(0, len(base) - run)
        changed[o : o + run] = rng.randbytes(run)
    n_changed = run * 64
    inserted = bytearray(base)
    at = rng.randrange(len(base))
    inserted[at:at] = rng.randbytes(100)
    chunkers: list[Chunker] = [
        FixedChunker(64 << 10), FixedChunker(16 << 10),
        CdcChunker(64 << 10, 16 << 10, 256 << 10), CdcChunker(16 << 10, 4 << 10, 64 << 10),
    ]
    print(f"bench/chunking: {args.mib} MiB stream; 1 % in place = {n_changed} bytes in 64 runs; 100-byte insertion")
    print(f"  {'chunker':<36} {'in-place: added/changed':>24} {'insert: added/100 B':>20} {'insert: added':>14}")
    for ch in chunkers:
        s = MemoryStore(verify=False)
        added(s, bytes(base), ch)
        a1 = added(s, bytes(changed), ch)
        s2 = MemoryStore(verify=False)
        added(s2, bytes(base), ch)
        a2 = added(s2, bytes(inserted), ch)
        print(f"  {ch.describe():<36} {a1 / n_changed:>24.2f} {a2 / 100:>20.0f} {a2:>14}")


if __name__ == "__main__":
    main()
