"""bench/gentree: deterministic trees for the import benchmarks, and the changes made to them.

    .venv/bin/python bench/gentree.py big DIR [--gib 1] [--seed 1]
    .venv/bin/python bench/gentree.py small DIR [--files 20000] [--seed 1]
    .venv/bin/python bench/gentree.py mutate DIR [--fraction 0.01] [--seed 101]
    .venv/bin/python bench/gentree.py insert DIR [--fraction 0.01] [--n 100] [--seed 202]

Method
------
Everything is drawn from ``random.Random`` seeded with the given seed, so one seed gives the
same tree (names, sizes, bytes) on every machine; only the times differ.

*big*: files of 4 KiB to 4 MiB with log-uniform sizes (mean ~600 KB, so ~1,800 files per GiB),
placed at random in a few hundred directories (300 per GiB, at least 8) up to four levels
deep. Every file's content alternates a run of random bytes with a run of zeros of the same
length (run lengths themselves log-uniform, 4 KiB to 256 KiB, drawn per file), so exactly half
of each file is random: the data is "half compressible" and the zero runs do not line up with
any tool's chunk boundaries. Exactly 30 % of the files by count (every file whose index i has
``floor(0.3 (i+1)) > floor(0.3 i)``, so evenly through the sequence, and placed in random
directories, so through the tree) are exact copies of a randomly chosen earlier original.
Files are added until the total logical size reaches ``gib`` GiB (it overshoots by less than
one file).

*small*: ``files`` files of 4 KiB each of random bytes, in 100 directories (10 x 10, two
levels).

*mutate_inplace*: overwrites ``fraction`` of the tree's total bytes in place: files are taken
in a seeded random order, and each gets one run (64 KiB, or the whole file if smaller, or the
remaining budget) at a random offset. Each new byte is the old one XOR a random non-zero byte,
so every counted byte really changes; sizes stay the same and the writes update mtime/ctime.

*insert_bytes*: inserts ``n`` random bytes at a random offset into ``fraction_of_files`` of the
files (at least one), shifting the rest of each file; bytes changed = n per file.

*restore_from*: puts a tree back to a pristine copy (made with ``shutil.copytree``, which keeps
mtimes) by rewriting, in place (same inodes), every file whose content differs.

Both change functions walk the tree in sorted path order, so the same seed on the same tree
changes the same bytes: each tool in the benchmark sees identical changes.
"""

from __future__ import annotations

import argparse
import math
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

MIN_FILE = 4 * KIB
MAX_FILE = 4 * MIB
MIN_RUN = 4 * KIB
MAX_RUN = 256 * KIB
DUP_TENTHS = 3  # 30 % of files by count are duplicates
MAX_DEPTH = 4
DIRS_PER_GIB = 300
MUTATE_RUN = 64 * KIB


@dataclass(frozen=True, slots=True)
class TreeInfo:
    """What a generator made: counts and byte totals (logical = every file's size summed)."""

    kind: str
    root: str
    seed: int
    files: int
    dirs: int
    logical_bytes: int
    duplicate_files: int
    unique_bytes: int  # bytes in the originals (logical minus duplicates)
    random_bytes: int  # non-zero-run bytes across all files

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def half_random(seed: str, size: int) -> tuple[bytes, int]:
    """``size`` bytes from ``seed``: runs of random bytes, each followed by as many zeros.
    Returns the bytes and how many of them lie in random runs (about half)."""
    rng = random.Random(seed)
    out = bytearray()
    nrand = 0
    while len(out) < size:
        left = size - len(out)
        run = _log_uniform(rng, MIN_RUN, MAX_RUN)
        if 2 * run >= left:
            run = (left + 1) // 2
            out += rng.randbytes(run)
            out += bytes(left - run)
        else:
            out += rng.randbytes(run)
            out += bytes(run)
        nrand += run
    return bytes(out), nrand


def _make_dirs(rng: random.Random, root: Path, n_dirs: int) -> list[Path]:
    """A random tree of ``n_dirs`` directories under ``root``, at most MAX_DEPTH deep."""
    dirs: list[tuple[Path, int]] = [(root, 0)]
    for i in range(n_dirs):
        candidates = [d for d in dirs if d[1] < MAX_DEPTH]
        parent, depth = rng.choice(candidates)
        d = parent / f"d{i:03d}"
        d.mkdir()
        dirs.append((d, depth + 1))
    return [d for d, _ in dirs]


def make_big(root: str | os.PathLike[str], gib: float = 1.0, seed: int = 1) -> TreeInfo:
    """Generate the big tree in ``root`` (created; must not exist or be empty). See module doc."""
    top = Path(root)
    top.mkdir(parents=True, exist_ok=True)
    if any(top.iterdir()):
        raise FileExistsError(f"{top}: not empty")
    rng = random.Random(seed)
    target = int(gib * GIB)
    n_dirs = max(8, round(DIRS_PER_GIB * gib))
    dirs = _make_dirs(rng, top, n_dirs)
    originals: list[tuple[str, int]] = []  # (content seed, size)
    total = unique = rnd = dups = i = 0
    while total < target:
        is_dup = ((i + 1) * DUP_TENTHS) // 10 > (i * DUP_TENTHS) // 10 and bool(originals)
        if is_dup:
            cseed, size = rng.choice(originals)
            dups += 1
        else:
            cseed, size = f"{seed}:{i}", _log_uniform(rng, MIN_FILE, MAX_FILE)
            originals.append((cseed, size))
            unique += size
        data, nrand = half_random(cseed, size)
        path = rng.choice(dirs) / f"f{i:05d}.dat"
        with open(path, "wb") as f:
            f.write(data)
        total += size
        rnd += nrand
        i += 1
    return TreeInfo("big", str(top), seed, i, len(dirs) - 1, total, dups, unique, rnd)


def make_small(root: str | os.PathLike[str], files: int = 20_000, seed: int = 1) -> TreeInfo:
    """Generate ``files`` x 4 KiB random files in 100 directories (10 x 10) under ``root``."""
    top = Path(root)
    top.mkdir(parents=True, exist_ok=True)
    if any(top.iterdir()):
        raise FileExistsError(f"{top}: not empty")
    rng = random.Random(seed)
    dirs = []
    for a in range(10):
        for b in range(10):
            d = top / f"s{a}" / f"s{a}{b}"
            d.mkdir(parents=True)
            dirs.append(d)
    for i in range(files):
        with open(dirs[i % len(dirs)] / f"f{i:05d}", "wb") as f:
            f.write(rng.randbytes(4 * KIB))
    return TreeInfo("small", str(top), seed, files, 110, files * 4 * KIB, 0,
                    files * 4 * KIB, files * 4 * KIB)


def walk_files(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Every regular file under ``root``, in sorted path order (deterministic)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


def tree_bytes(root: str | os.PathLike[str]) -> tuple[int, int]:
    """(file count, logical bytes) of the tree."""
    n = total = 0
    for p in walk_files(root):
        n += 1
        total += p.stat().st_size
    return n, total


def _xor_nonzero(old: bytes, rng: random.Random) -> bytes:
    """``old`` with every byte changed: XOR with a random byte in 1..255."""
    mask = rng.randbytes(len(old)).translate(bytes([1]) + bytes(range(1, 256)))
    x = int.from_bytes(old, "little") ^ int.from_bytes(mask, "little")
    return x.to_bytes(len(old), "little")


def mutate_inplace(root: str | os.PathLike[str], fraction: float = 0.01, seed: int = 101,
                   run: int = MUTATE_RUN) -> int:
    """Change ``fraction`` of the tree's bytes in place, one run per chosen file; return the
    number of bytes changed (every one of them differs from before)."""
    files = [(p, p.stat().st_size) for p in walk_files(root)]
    budget = round(fraction * sum(s for _, s in files))
    rng = random.Random(seed)
    changed = 0
    for idx in rng.sample(range(len(files)), len(files)):
        if changed >= budget:
            break
        path, size = files[idx]
        n = min(run, size, budget - changed)
        if n <= 0:
            continue
        off = rng.randrange(size - n + 1)
        with open(path, "r+b") as f:
            f.seek(off)
            old = f.read(n)
            f.seek(off)
            f.write(_xor_nonzero(old, rng))
        changed += n
    return changed


def insert_bytes(root: str | os.PathLike[str], fraction_of_files: float = 0.01, n: int = 100,
                 seed: int = 202) -> int:
    """Insert ``n`` random bytes at a random offset into ``fraction_of_files`` of the files (at
    least one); return the bytes changed, counted as ``n`` per file."""
    files = list(walk_files(root))
    k = max(1, round(fraction_of_files * len(files)))
    rng = random.Random(seed)
    for idx in sorted(rng.sample(range(len(files)), k)):
        path = files[idx]
        size = path.stat().st_size
        off = rng.randrange(size + 1)
        with open(path, "r+b") as f:
            f.seek(off)
            tail = f.read()
            f.seek(off)
            f.write(rng.randbytes(n) + tail)
    return k * n


def restore_from(tree: str | os.PathLike[str], pristine: str | os.PathLike[str]) -> int:
    """Rewrite in place every file of ``tree`` whose content differs from ``pristine`` (a copy
    made before the changes; same file set). Files whose size and mtime still match the copy's
    are taken as unchanged. Return how many files were rewritten."""
    tree, pristine = Path(tree), Path(pristine)
    n = 0
    for src in walk_files(pristine):
        dst = tree / src.relative_to(pristine)
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
            continue
        want = src.read_bytes()
        with open(dst, "r+b") as f:
            if f.read() == want:
                continue
            f.seek(0)
            f.write(want)
            f.truncate()
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    big = sub.add_parser("big", help="the 1 GiB tree (4 KiB-4 MiB, half random, 30 %% duplicates)")
    big.add_argument("dir")
    big.add_argument("--gib", type=float, default=1.0)
    big.add_argument("--seed", type=int, default=1)
    small = sub.add_parser("small", help="20,000 x 4 KiB random files in 100 directories")
    small.add_argument("dir")
    small.add_argument("--files", type=int, default=20_000)
    small.add_argument("--seed", type=int, default=1)
    mut = sub.add_parser("mutate", help="change 1 %% of the bytes in place")
    mut.add_argument("dir")
    mut.add_argument("--fraction", type=float, default=0.01)
    mut.add_argument("--seed", type=int, default=101)
    ins = sub.add_parser("insert", help="insert 100 bytes into 1 %% of the files")
    ins.add_argument("dir")
    ins.add_argument("--fraction", type=float, default=0.01)
    ins.add_argument("--n", type=int, default=100)
    ins.add_argument("--seed", type=int, default=202)
    args = ap.parse_args()
    if args.cmd == "big":
        print(make_big(args.dir, args.gib, args.seed).as_dict())
    elif args.cmd == "small":
        print(make_small(args.dir, args.files, args.seed).as_dict())
    elif args.cmd == "mutate":
        print(f"{mutate_inplace(args.dir, args.fraction, args.seed)} bytes changed")
    else:
        print(f"{insert_bytes(args.dir, args.fraction, args.n, args.seed)} bytes inserted")


if __name__ == "__main__":
    main()
