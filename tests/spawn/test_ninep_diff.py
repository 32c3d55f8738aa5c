"""grid's 9P2000.L server against diod on random request sequences (tests/spawn/ninep_diff.py):
every reply and the final trees must agree. ``GRID_9P_DIFF_STEPS`` (default 15,000, under
10 s) sets the number of steps, ``GRID_9P_DIFF_SEED`` the sequence (default: a fixed seed,
so CI is repeatable; any other finds other sequences).

Long runs over many seeds, with every difference counted instead of stopping at the first::

    .venv/bin/python -m tests.spawn.test_ninep_diff --seeds 1-40 --steps 20000 --keep-going

After a difference the two trees have parted, so a keep-going run starts both servers afresh
(a new diod, a new spawn of the test tree) and goes on with the next segment of the
sequence (seed "S.1", "S.2", ...) until the seed's steps are done; the summary lists each
kind of difference (request and reply shapes, :func:`ninep_diff.kind_of`) with its count and
its first occurrence.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from spawn.ninep.client import Client
from tests.spawn.ninep_diff import ROOT, Difference, Harness, ReferenceFailed, snapshot, tree_paths
from tests.spawn.ninep_env import run, served
from tests.spawn.test_ninep_vs_diod import diod_serving

STEPS = int(os.environ.get("GRID_9P_DIFF_STEPS", "15000"))
SEED = int(os.environ.get("GRID_9P_DIFF_SEED", "17"))


async def _attach(sock: Path, aname: bytes) -> Client:
    c = await Client.connect_unix(sock)
    await c.version(b"9P2000.L", 65536)
    root = c.fid()  # the client's first fid, so that its later fid() calls do not reuse it
    assert root == ROOT
    await c.attach(ROOT, b"", aname, n_uname=0)
    return c


async def _compare_trees(diod_sock: Path, diod_aname: bytes, grid_sock: Path) -> None:
    ref, grid = await _attach(diod_sock, diod_aname), await _attach(grid_sock, b"spawn")
    try:
        a, b = await snapshot(ref, ROOT), await snapshot(grid, ROOT)
    finally:
        await ref.close()
        await grid.close()
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        raise Difference(f"final trees: paths on one side only: {only}",
                         "tree: paths on one side only")
    for k in sorted(a):
        if a[k] != b[k]:
            raise Difference(f"final trees differ at {k!r}:\n  diod: {a[k]}\n  grid: {b[k]}",
                             f"tree: {sorted(x for x in a[k] if a[k][x] != b[k].get(x))} differ"
                             if isinstance(a[k], dict) and isinstance(b[k], dict)
                             else "tree: entry differs")


async def segment(tmp: Path, seed: int | str, steps: int) -> tuple[dict[str, int], int]:
    """One sequence from fresh servers: its step counts per request kind and its length.
    Raises Difference (or ReferenceFailed) at the first step, or final tree, that differs;
    ``Difference.steps`` then says how many steps were done."""
    (tmp / "grid").mkdir(parents=True)
    with diod_serving(tmp) as (diod_sock, diod_aname):
        async with served(tmp / "grid") as env:
            env.uid = env.gid = 0
            ref = await _attach(diod_sock, diod_aname)
            grid = await _attach(env.sock, b"spawn")
            h = Harness(ref, grid, seed, tree_paths(diod_aname.decode()))
            try:
                counts = await h.run(steps)
            except (Difference, ReferenceFailed) as e:
                e.steps = sum(h.counts.values())  # type: ignore[union-attr]
                raise
            finally:
                await ref.close()
                await grid.close()
            await _compare_trees(diod_sock, diod_aname, env.sock)
            return counts, sum(counts.values())


@dataclass
class Found:
    """One kind of difference: how often, and where first (seed, segment, the report)."""

    count: int = 0
    first: str = ""


@dataclass
class Campaign:
    steps: int = 0
    runs: list[tuple[int | str, int, int, float]] = field(default_factory=list)  # seed, steps, diffs, s
    kinds: dict[str, Found] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.runs)} seeds, {self.steps} steps, "
                 f"{sum(f.count for f in self.kinds.values())} differences of "
                 f"{len(self.kinds)} kinds"]
        lines += [f"  seed {s}: {n} steps, {d} differences, {t:.1f} s" for s, n, d, t in self.runs]
        for kind, f in sorted(self.kinds.items(), key=lambda kv: (-kv[1].count, kv[0])):
            lines.append(f"{f.count:6d}  {kind}")
        return "\n".join(lines)


async def campaign(tmp: Path, seeds: list[int | str], steps: int, keep_going: bool,
                   out=sys.stdout) -> Campaign:
    """Each seed's *steps*, restarting both servers after each difference when *keep_going*
    (else the first difference is raised)."""
    c = Campaign()
    for seed in seeds:
        t0, done, diffs, part = time.monotonic(), 0, 0, 0
        while done < steps:
            name = str(seed) if part == 0 else f"{seed}.{part}"
            try:
                _, n = await segment(tmp / f"s{name}", seed if part == 0 else name, steps - done)
                done += n
            except (Difference, ReferenceFailed) as e:
                if not keep_going:
                    raise
                kind = getattr(e, "kind", "diod dropped the connection")
                found = c.kinds.setdefault(kind, Found())
                found.count += 1
                found.first = found.first or f"segment {name}: {e}"
                done += max(1, getattr(e, "steps", 0))
                diffs += 1
                print(f"seed {name}: {kind}", file=out, flush=True)
            part += 1
        c.steps += done
        c.runs.append((seed, done, diffs, time.monotonic() - t0))
    return c


def test_random_sequences_agree_with_diod(tmp_path):
    """Both servers act as root (diod -n serves as the user it runs as; grid's attach is
    made root to match): see ninep_diff's docstring for why and what is not compared."""
    t0 = time.monotonic()
    c = run(campaign(tmp_path, [SEED], STEPS, keep_going=False), timeout=900)
    print(f"{STEPS} steps, seed {SEED}, {time.monotonic() - t0:.1f} s")
    assert c.steps == STEPS


def _seeds(text: str) -> list[int | str]:
    """"1-40", "3,7,9", or a segment's name as a summary shows it ("3.2")."""
    out: list[int | str] = []
    for part in text.split(","):
        if "." in part:
            out.append(part)
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1-10", help="e.g. 1-40 or 3,7,9")
    ap.add_argument("--steps", type=int, default=20000, help="steps per seed")
    ap.add_argument("--keep-going", action="store_true",
                    help="count every difference (restarting the servers) instead of stopping")
    ap.add_argument("--show", action="store_true", help="print each kind's first report")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ninep-diff-") as tmp:
        c = asyncio.run(campaign(Path(tmp), _seeds(a.seeds), a.steps, a.keep_going))
    print(c.summary())
    if a.show:
        for kind, f in sorted(c.kinds.items()):
            print(f"\n== {kind}\n{f.first}")
    sys.exit(1 if c.kinds else 0)


if __name__ == "__main__":
    main()
