"""A writer process for the crash test: puts blocks (data and pointer trees) forever, and after
each sync() returns prints the scores it made durable, one hex per line, then "SYNCED n".
The test SIGKILLs it at random moments."""

from __future__ import annotations

import os
import random
import sys

from store.block import BlockType
from store.hashtree import write_bytes
from store.local import LocalStore


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = LocalStore.open(path, segment_size=int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 30)
    out = sys.stdout
    batch = 0
    while True:
        unsynced = []
        for _ in range(rng.randrange(1, 40)):
            kind = rng.random()
            if kind < 0.2:
                data = os.urandom(rng.randrange(1, 200_000)) + bytes(rng.randrange(0, 100_000))
                unsynced.append(write_bytes(store, data).score)
            else:
                n = rng.randrange(0, 70_000)
                data = os.urandom(n // 2) + bytes(n - n // 2)
                unsynced.append(store.put(BlockType.DATA, data))
        store.sync()
        batch += 1
        out.write("".join(s.hex() + "\n" for s in unsynced) + f"SYNCED {batch}\n")
        out.flush()


if __name__ == "__main__":
    main()
