"""bench/ndb: query latency on a 100,000-entry names file with and without the index, and
the append rate.

    .venv/bin/python bench/ndb.py [--entries 100000] [--dir /var/tmp]

Figures:
- index build: the first query of an attribute on the file (parse + LMDB load);
- query, indexed: ``NdbFile.search("name", X)`` for random X, warm (one process, the
  index open), median and p99 — what a daemon or a long command sees;
- query right after an append: the index catches up on the new tail first;
- query, no index: the same search by scanning, cold (read and parse the file, what a
  fresh ``grid`` process without the index pays) and warm (the parse kept in memory);
- appends: ``NameDB.set`` one record at a time (lock, find the latest via the index,
  append, fsync), raw one-entry appends (lock, write, fsync), and a batch of 10,000
  records in one ``merge_from`` (one write, one fsync).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ndb.database import NdbFile
from ndb.names import NameDB, NameRecord
from ndb.syntax import Entry
from ndb.values import format_score


def score(i: int) -> str:
    return format_score(i.to_bytes(32, "big"))


def record_line(i: int) -> str:
    return (
        f"name=proj{i} score={score(i)} user=u{i % 50} "
        f"date=2026-11-22T04:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}000Z\n"
    )


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def us(x: float) -> str:
    return f"{x * 1e6:,.1f} µs" if x < 0.01 else f"{x * 1e3:,.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    args = ap.parse_args()
    n = args.entries
    rng = random.Random(1)
    work = Path(tempfile.mkdtemp(prefix="ndb-bench-", dir=args.dir))
    rows: list[tuple[str, str, str]] = []
    try:
        path = work / "names"
        path.write_text("".join(record_line(i) for i in range(n)))
        size = path.stat().st_size
        print(f"{n:,} entries, {size / 1e6:.1f} MB, in {work}")

        f = NdbFile(path, index=True)
        t = time.perf_counter()
        assert f.search("name", "proj0")
        rows.append(("index build (first query)", us(time.perf_counter() - t), ""))

        keys = [f"proj{rng.randrange(n)}" for _ in range(5000)]
        it = iter(keys)
        ts = timed(lambda: f.search("name", next(it)), len(keys))
        rows.append(
            (
                "query, indexed",
                us(statistics.median(ts)),
                f"p99 {us(sorted(ts)[len(ts) * 99 // 100])}",
            )
        )

        after = []
        for k in range(20):
            f.append(
                [
                    Entry.of(
                        ("name", f"new{k}"),
                        ("score", score(k)),
                        ("user", "u0"),
                        ("date", "2026-11-22T05:00:00Z"),
                    )
                ]
            )
            t = time.perf_counter()
            assert f.search("name", f"new{k}")
            after.append(time.perf_counter() - t)
        rows.append(("query after an append (catch-up)", us(statistics.median(after)), ""))

        ts = timed(lambda: NdbFile(path, index=False).search("name", f"proj{rng.randrange(n)}"), 3)
        rows.append(("query, no index, cold (read+parse)", us(statistics.median(ts)), ""))
        scan = NdbFile(path, index=False)
        scan.parse()
        ts = timed(lambda: scan.search("name", f"proj{rng.randrange(n)}"), 20)
        rows.append(("query, no index, warm (parsed)", us(statistics.median(ts)), ""))

        names = NameDB(path, index=True)
        count = 300
        t = time.perf_counter()
        for i in range(count):
            names.set(f"proj{rng.randrange(n)}", score(i), "u1")
        secs = time.perf_counter() - t
        rows.append(
            (
                "append: NameDB.set (lock, latest, fsync)",
                f"{count / secs:,.0f} /s",
                us(secs / count) + " each",
            )
        )

        raw = NdbFile(work / "raw")
        entry = Entry.of(
            ("name", "x"), ("score", score(1)), ("user", "u"), ("date", "2026-11-22T05:00:00Z")
        )
        t = time.perf_counter()
        for _ in range(count):
            raw.append([entry])
        secs = time.perf_counter() - t
        rows.append(
            (
                "append: one entry (lock, write, fsync)",
                f"{count / secs:,.0f} /s",
                us(secs / count) + " each",
            )
        )

        batch = [
            NameRecord(name=f"b{i}", score=score(i), user="u2", date="2026-11-22T06:00:00.000000Z")
            for i in range(10_000)
        ]
        t = time.perf_counter()
        NameDB(work / "batch").merge_from(batch)
        secs = time.perf_counter() - t
        rows.append(
            (
                "append: 10,000 records, one merge_from",
                f"{len(batch) / secs:,.0f} /s",
                us(secs) + " total",
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measure'.ljust(w0)}  {'value'.rjust(w1)}  note")
    for name, value, note in rows:
        print(f"{name.ljust(w0)}  {value.rjust(w1)}  {note}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
