"""SIGKILL of the replicator and of the receiving daemon at random moments, 24 times, with
new data each time; then one more run: both stores hold the same blocks, both nodes the
same names, and no name on the receiver lacks its tree."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

from tests.replication.grid3 import make_grid

RUNS = 24


def test_kills_at_random_moments_then_rerun_converges(tmp_path):
    seed = int(os.environ.get("GRID_KILL_SEED", int.from_bytes(os.urandom(4), "big")))
    rng = random.Random(seed)
    a, b = make_grid(2, tmp_path)
    try:
        a.start()
        b.start()
        kinds = {"replicator": 0, "daemon": 0, "both": 0}
        interrupted = 0  # runs the kill actually cut short
        hi = 0.6  # the latest a kill comes; lowered when runs finish before it (a fast machine)
        for i in range(RUNS * 2):
            if i >= RUNS and interrupted >= RUNS // 4:
                break
            last = i
            src = tmp_path / f"t{i}"
            src.mkdir()
            (src / "data").write_bytes(os.urandom(rng.randrange(4, 12) << 20))
            (src / "note").write_text(f"run {i}\n")
            a.grid("import", str(src), f"n{i % 7}")  # names get histories too
            kind = rng.choice(list(kinds))
            kinds[kind] += 1
            proc = subprocess.Popen(
                [sys.executable, "-m", "grid.cli.main", "replicate", "--peer", "b"],
                env=a.node.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, hi))  # a run takes ~0.3-0.8 s: most kills land in one
            if proc.poll() is not None:
                hi = max(0.1, hi * 0.8)
            if kind in ("replicator", "both") and proc.poll() is None:
                proc.kill()
            if kind in ("daemon", "both"):
                b.node.kill9()
            interrupted += proc.wait(timeout=60) != 0
            if kind in ("daemon", "both"):
                b.start()
            # At every moment: a name on b has its root block (so, by closure, its tree).
            have = b.scores()
            for rec in b.names().values():
                if rec["score"]:
                    assert rec["score"].removeprefix("blake3:") in have, (i, kind, rec, seed)
        assert min(kinds.values()) >= 1, kinds
        assert interrupted >= RUNS // 4, (interrupted, kinds, f"GRID_KILL_SEED={seed}")
        a.grid("replicate", "--peer", "b")
        assert a.scores() == b.scores()
        assert a.names() == b.names()
        for name in a.names():
            assert a.history(name) == b.history(name)
        check = b.grid("store", "check", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        b.grid("export", f"n{last % 7}", str(tmp_path / "out"))
        assert (tmp_path / "out" / "data").read_bytes() == (
            tmp_path / f"t{last}" / "data").read_bytes()
    finally:
        a.node.close()
        b.node.close()
