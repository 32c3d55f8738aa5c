"""grid's 9P2000.L server against diod on random request sequences (tests/spawn/ninep_diff.py):
every reply and the final trees must agree. ``GRID_9P_DIFF_STEPS`` (default 900) sets the
number of steps, ``GRID_9P_DIFF_SEED`` the sequence (default: a fixed seed, so CI is
repeatable; any other finds other sequences)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from spawn.ninep.client import Client
from tests.spawn.ninep_diff import ROOT, Harness, snapshot, tree_paths
from tests.spawn.ninep_env import run, served
from tests.spawn.test_ninep_vs_diod import diod_serving

STEPS = int(os.environ.get("GRID_9P_DIFF_STEPS", "900"))
SEED = int(os.environ.get("GRID_9P_DIFF_SEED", "17"))


async def _attach(sock: Path, aname: bytes) -> Client:
    c = await Client.connect_unix(sock)
    await c.version(b"9P2000.L", 65536)
    root = c.fid()  # the client's first fid, so that its later fid() calls do not reuse it
    assert root == ROOT
    await c.attach(ROOT, b"", aname, n_uname=0)
    return c


def test_random_sequences_agree_with_diod(tmp_path):
    """Both servers act as root (diod -n serves as the user it runs as; grid's attach is
    made root to match): see ninep_diff's docstring for why and what is not compared."""
    async def body(diod_sock: Path, diod_aname: bytes) -> None:
        async with served(tmp_path / "grid") as env:
            env.uid = env.gid = 0
            ref = await _attach(diod_sock, diod_aname)
            grid = await _attach(env.sock, b"spawn")
            h = Harness(ref, grid, SEED, tree_paths(diod_aname.decode()))
            t0 = time.monotonic()
            counts = await h.run(STEPS)
            print(f"{STEPS} steps, seed {SEED}, {time.monotonic() - t0:.1f} s: {counts}")
            await ref.close()
            await grid.close()
            ref, grid = await _attach(diod_sock, diod_aname), await _attach(env.sock, b"spawn")
            a, b = await snapshot(ref, ROOT), await snapshot(grid, ROOT)
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == b[k], (k, a[k], b[k])
            await ref.close()
            await grid.close()
    (tmp_path / "grid").mkdir()
    with diod_serving(tmp_path) as (sock, aname):
        run(body(sock, aname), timeout=600)
