"""bench/spawn (engine level, before the daemon and FUSE exist): what a spawn costs.

    .venv/bin/python bench/spawn.py [--dir /var/tmp]

1. Spawn + first listing of the root, for a 10 MiB root and a 10 GiB root (ten 1 GiB files,
   mostly holes, so the import is quick; spawning reads the same number of blocks whatever
   the size). Each in a fresh process, median of 5.
2. Sequential read of a 1 GiB file through the engine (half random, half zeros), first pass
   (blocks read from the store: page cache warm, block cache cold) and second pass.
3. Save after changing 1 % of a 1 GiB spawn (64 scattered 160 KiB writes): seconds, new
   blocks, bytes added to the store.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spawn.engine import Engine
from spawn.importer import Importer
from spawn.save import save
from store.local import LocalStore
from store.score import format_score

_CHILD = """
import sys, time
t0 = time.perf_counter()
from store.local import LocalStore
from store.score import parse_score
from spawn.engine import Engine
s = LocalStore.open(sys.argv[1], readonly=True)
t1 = time.perf_counter()
e = Engine(s, sys.argv[2], parse_score(sys.argv[3]))
names = [n for n, _ in e.readdir(1)]
t2 = time.perf_counter()
print(t2 - t1, len(names), s.statistics().gets)
"""


def spawn_ls(store_dir: Path, root: bytes, work: Path) -> tuple[float, int]:
    times, gets = [], 0
    for _ in range(5):
        ov = work / f"ov-{os.urandom(4).hex()}"
        out = subprocess.run([sys.executable, "-c", _CHILD, str(store_dir), str(ov), format_score(root)],
                             capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
        t, _n, g = out.stdout.split()
        times.append(float(t))
        gets = int(g)
        shutil.rmtree(ov)
    return statistics.median(times), gets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="grid-bench-spawn-", dir=args.dir))
    rows = []
    try:
        LocalStore.create(work / "store")
        small, big, data = work / "small", work / "big", work / "data"
        small.mkdir()
        for i in range(10):
            (small / f"f{i}").write_bytes(os.urandom(1 << 20))
        big.mkdir()
        for i in range(10):
            with open(big / f"g{i}", "wb") as f:
                f.write(os.urandom(1 << 20))
                f.truncate(1 << 30)
        data.mkdir()
        rng = random.Random(1)
        with open(data / "one-gib", "wb") as f:
            for _ in range(1024):
                f.write(rng.randbytes(1 << 19) + bytes(1 << 19))
        with LocalStore.open(work / "store") as s:
            r_small = Importer(s).run(small)
            r_big = Importer(s).run(big)
            r_data = Importer(s).run(data)
        for label, root in (("10 MiB root", r_small), ("10 GiB root", r_big)):
            t, gets = spawn_ls(work / "store", root, work)
            rows.append((f"spawn + first ls, {label}", f"{t * 1000:.2f} ms (median of 5; {gets} block reads)"))
        with LocalStore.open(work / "store") as s:
            e = Engine(s, work / "ov-read", r_data)
            ino = e.lookup(1, b"one-gib").ino
            for label in ("first", "second"):
                t = time.perf_counter()
                off = 0
                while chunk := e.read(ino, off, 1 << 20):
                    off += len(chunk)
                dt = time.perf_counter() - t
                rows.append((f"sequential read 1 GiB via engine, {label} pass", f"{off / dt / 1e6:.0f} MB/s"))
            rng = random.Random(2)
            size = e.getattr(ino).size
            for _ in range(64):
                e.write(ino, rng.randrange(0, size - 163840), rng.randbytes(163840))
            before = s.statistics()
            t = time.perf_counter()
            save(e, name="bench")
            dt = time.perf_counter() - t
            after = s.statistics()
            rows.append(("save after changing 1 % of 1 GiB", f"{dt:.2f} s, {after.blocks - before.blocks} new blocks, "
                         f"{(after.stored_bytes - before.stored_bytes) / 1e6:.1f} MB added"))
            e.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("bench/spawn (engine level; no daemon, no FUSE yet)")
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{w}}  {b}")


if __name__ == "__main__":
    main()
