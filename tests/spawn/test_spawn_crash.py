"""SIGKILL a process writing into a spawn at random moments, 24 times. After each restart the
spawn must hold every completed operation (each is one committed LMDB transaction, so this is
stronger than "every fsynced byte"), and the file of an interrupted operation must be in its
state before or after it: never torn."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spawn.cred import ROOT as SU
from spawn.importer import Importer
from spawn.spawner import Spawner
from store.local import LocalStore

ROOT = Path(__file__).resolve().parents[2]


def digest(b: bytes) -> str:
    return hashlib.blake2b(b, digest_size=16).hexdigest()


@pytest.mark.slow
def test_sigkill_loses_no_completed_operation(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "base").write_bytes(os.urandom(100_000))
    LocalStore.create(tmp_path / "store")
    with LocalStore.open(tmp_path / "store") as store:
        root = Importer(store).run(src)
        store.sync()
        sid = Spawner(store, tmp_path / "spawns").spawn("t", root, owner="root", uid=0).id
    rng = random.Random(99)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    state: dict[str, str] = {}  # name -> digest after the last completed operation
    interrupted_total = ops_total = 0
    for run in range(24):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/spawn/crash_spawn_writer.py"), str(tmp_path / "store"),
             str(tmp_path / "spawns"), sid, str(run)],
            stdout=subprocess.PIPE, env=env,
        )
        time.sleep(rng.uniform(0.3, 1.0))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the writer must die by the kill"
        pending = None
        for line in out.decode().splitlines():
            if line.startswith("BEGIN "):
                _, name, before, after = line.split()
                pending = (name, before, after)
            elif line == "DONE" and pending is not None:
                name, _before, after = pending
                if after == "-":
                    state.pop(name, None)
                else:
                    state[name] = after
                pending = None
                ops_total += 1
        with LocalStore.open(tmp_path / "store") as store:
            sp = Spawner(store, tmp_path / "spawns")
            e = sp.engine(sid)
            found = {n.decode(): digest(e.read(SU, a.ino, 0, a.size)) for n, a in e.readdir(SU, 1) if n.startswith(b"w")}
            assert e.read(SU, e.lookup(SU, 1, b"base").ino, 0, 100_000) == (src / "base").read_bytes()
            sp.close()
        if pending is not None:
            interrupted_total += 1
            name, before, after = pending
            got = found.get(name, "-")
            assert got in (before, after), f"run {run}: {name} torn"
            if got == "-":
                state.pop(name, None)
            else:
                state[name] = got
            found.pop(name, None)
            others = {k: v for k, v in state.items() if k != name}
        else:
            others = state
        assert {k: v for k, v in found.items() if k != (pending[0] if pending else None)} == others, f"run {run}"
    assert ops_total > 100
    print(f"{ops_total} operations completed, {interrupted_total} of 24 kills landed inside one")
