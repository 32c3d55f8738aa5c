"""The node daemon killed with SIGKILL at random moments, again and again, while a writer works
through a FUSE mount (and sometimes while a save runs): after each restart every fsynced byte
is there, earlier rounds' files too, and no name points at an incomplete root."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.grid.gridnode import Node, new_node, skip_without_mounts, wait_for

skip_without_mounts()

KILLS = 24
RECORD = 4096

# Appends numbered records to a file in the mount and fsyncs every few; prints the number of
# records fsynced after each fsync. Any error (the daemon died under it) ends it quietly.
WRITER = r"""
import os, sys
path, seed = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
n = 0
try:
    while True:
        for _ in range(1 + n % 5):
            os.write(fd, (f"{seed}:{n}:".encode() * 2000)[:4095] + b"\n")
            n += 1
        os.fsync(fd)
        print(n, flush=True)
except OSError:
    pass
"""


def record(seed: int, n: int) -> bytes:
    return (f"{seed}:{n}:".encode() * 2000)[:RECORD - 1] + b"\n"


@pytest.fixture
def node() -> Iterator[Node]:
    n = new_node()
    try:
        n.init()
        src = n.base / "src"
        src.mkdir()
        (src / "base.txt").write_bytes(os.urandom(300_000))
        n.grid("import", str(src), "crash")
        n.start()
        yield n
    finally:
        n.close()


def test_sigkill_loses_no_fsynced_byte(node: Node) -> None:
    rng = random.Random(os.environ.get("GRID_CRASH_SEED", "5"))
    m = node.base / "m"
    m.mkdir()
    sid = node.grid("spawn", "-q", "crash", "--mount", str(m)).stdout.strip()
    synced: dict[int, int] = {}  # round -> records fsynced
    saves = 0
    for rnd in range(KILLS):
        w = subprocess.Popen([sys.executable, "-c", WRITER, str(m / f"f{rnd}"), str(rnd)],
                             stdout=subprocess.PIPE, text=True)
        saver = None
        if rnd % 3 == 2:
            time.sleep(rng.uniform(0.05, 0.3))
            saver = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "save", sid],
                                     env=node.env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.1, 0.8))
        node.kill9()
        if saver is not None:
            saver.communicate(timeout=60)
            saves += saver.returncode == 0
        # The mount holds calls made while the daemon is down until it is back (a call in
        # flight at the kill fails with EIO, and then the writer stops by itself).
        node.start()
        time.sleep(0.1)
        w.kill()
        out, _ = w.communicate(timeout=60)
        counts = [int(x) for x in out.split()]
        synced[rnd] = counts[-1] if counts else 0
        # the mount re-attaches to the restarted daemon
        assert wait_for(lambda: (m / "base.txt").exists(), timeout=30), f"round {rnd}: mount lost"
        for r, n in synced.items():
            data = (m / f"f{r}").read_bytes()
            assert len(data) >= n * RECORD, f"round {r}: {len(data)} bytes < {n} fsynced records"
            for i in range(n):
                assert data[i * RECORD:(i + 1) * RECORD] == record(r, i), f"round {r} record {i}"
        # a name never points at a root whose blocks are not all there
        node.grid("export", "crash", str(node.base / f"x{rnd}"))
    assert sum(1 for n in synced.values() if n) >= KILLS // 2, synced  # the writers did write
    print(f"{KILLS} kills, {sum(synced.values())} fsynced records checked, {saves} saves done")
    rows = json.loads(node.grid("spawns", "--json").stdout)
    assert [r["id"] for r in rows] == [sid]
    # and the spawn still saves and respawns with everything in it
    node.grid("save", sid)
    m2 = node.base / "m2"
    m2.mkdir()
    node.grid("spawn", "-q", "crash", "--mount", str(m2))
    for r, n in synced.items():
        assert (m2 / f"f{r}").read_bytes()[: n * RECORD] == b"".join(record(r, i) for i in range(n))
