"""`grid forget` and `grid prune` as a user runs them (real processes, a real home): space is
reclaimed, every retained name exports identically, `grid store check` is clean; and the
same after prune is killed with SIGKILL at random moments (mark, copy, index switch, segment
removal), each kill followed by check + export, and a last prune that finishes the job."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.grid.conftest import ROOT, run_grid
from tests.grid.gridnode import tree_digest

grid = run_grid
SEGMENT = 96 << 10


def _history(home: Path, tmp: Path, names: dict[str, int], seed: int = 7) -> None:
    (home / "store" / "segment_size").write_text(str(SEGMENT))
    rng = random.Random(seed)
    for name, n in names.items():
        src = tmp / f"src-{name}"
        src.mkdir()
        for i in range(12):
            (src / f"f{i}").write_bytes(rng.randbytes(rng.randrange(2000, 40_000)))
        for _ in range(n):
            for i in rng.sample(range(12), 4):
                (src / f"f{i}").write_bytes(rng.randbytes(rng.randrange(2000, 40_000)))
            grid(home, "import", "--no-cache", str(src), name)
            time.sleep(0.01)


def _exports(home: Path, tmp: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for n in names:
        d = tmp / f"export-{n}-{time.monotonic_ns()}"
        grid(home, "export", n, str(d))
        out[n] = tree_digest(d)
        shutil.rmtree(d)
    return out


def _check(home: Path) -> dict:
    ck = json.loads(grid(home, "store", "check", "--json").stdout)
    assert ck["ok"], ck["errors"]
    return ck


def test_forget_then_prune(home, tmp_path):
    _history(home, tmp_path, {"proj": 8, "other": 3})
    before = _exports(home, tmp_path, ["proj", "other"])
    plan = json.loads(grid(home, "forget", "proj", "--keep-last", "2", "--dry-run", "--json").stdout)
    assert len(plan[0]["keep"]) == 2 and len(plan[0]["forget"]) == 6
    grid(home, "forget", "proj", "--keep-last", "2")
    hist = json.loads(grid(home, "history", "proj", "--json").stdout)
    assert len(hist) == 2
    st0 = json.loads(grid(home, "store", "stat", "--json").stdout)
    dry = json.loads(grid(home, "prune", "--dry-run", "--json").stdout)
    assert dry["victims"] and dry["dead_bytes"] > 0
    st1 = json.loads(grid(home, "store", "stat", "--json").stdout)
    assert st1["dead_bytes"] == dry["dead_bytes"] and st1["live_bytes"] == dry["live_bytes"]
    assert st1["position"] == st0["position"]  # a dry run writes nothing to the log
    rep = json.loads(grid(home, "prune", "--json").stdout)
    assert rep["reclaimed_bytes"] > 0 and rep["spawns"] == 0
    st2 = json.loads(grid(home, "store", "stat", "--json").stdout)
    assert st2["stored_bytes"] < st0["stored_bytes"]
    _check(home)
    assert _exports(home, tmp_path, ["proj", "other"]) == before
    # text output, and a deleted name forgotten whole
    grid(home, "name", "rm", "other")
    out = grid(home, "forget", "other").stdout.decode()
    assert "other: kept 0, forgot" in out
    assert b"reclaimed" in grid(home, "prune").stdout
    _check(home)
    assert _exports(home, tmp_path, ["proj"]) == {"proj": before["proj"]}


def test_prune_keeps_what_a_spawn_holds(home, tmp_path):
    """A spawn's base is kept although every name record of it is forgotten."""
    _history(home, tmp_path, {"proj": 4})
    first = json.loads(grid(home, "history", "proj", "--json").stdout)[-1]["score"]
    sid = None
    # a spawn's registry entry and overlay, made as the spawner makes them, without a daemon
    code = (
        "import sys; from pathlib import Path; from store.local import LocalStore;"
        "from spawn.spawner import Spawner; from store.score import parse_score;"
        "s = LocalStore.open(Path(sys.argv[1]) / 'store');"
        "sp = Spawner(s, Path(sys.argv[1]) / 'spawns');"
        "print(sp.spawn('proj', parse_score(sys.argv[2]), owner='root', uid=0).id); sp.close(); s.close()"
    )
    sid = subprocess.run([sys.executable, "-c", code, str(home), first], capture_output=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout.decode().strip()
    assert sid
    grid(home, "forget", "proj", "--keep-last", "1")
    rep = json.loads(grid(home, "prune", "--max-unused", "0", "--json").stdout)
    assert rep["spawns"] == 1
    _check(home)
    d = tmp_path / "old"
    grid(home, "export", first, str(d))  # the spawn's base is whole


def test_sigkill_during_prune(home, tmp_path):
    """Rounds (until 22 kills), each from the same forgotten-but-unpruned home: prune killed
    (twice) at random moments, then store check clean and every retained name exporting identically,
    then a prune that finishes the job (and check again)."""
    rng = random.Random(11)
    _history(home, tmp_path, {"a": 10, "b": 6, "c": 4})
    grid(home, "forget", "a", "--keep-last", "2")
    grid(home, "forget", "b", "--keep-last", "1")
    expect = _exports(home, tmp_path, ["a", "b", "c"])
    probe = tmp_path / "probe"
    shutil.copytree(home, probe)
    t0 = time.monotonic()
    grid(probe, "prune", "--max-unused", "0")
    full = time.monotonic() - t0  # a whole prune, the interpreter's start-up included
    probe_stored = json.loads(grid(probe, "store", "stat", "--json").stdout)["stored_bytes"]
    kills = 0
    for r in range(80):
        if kills >= 22:
            break
        work = tmp_path / f"round{r}"
        shutil.copytree(home, work)
        env = dict(os.environ, GRID_HOME=str(work), PYTHONPATH=str(ROOT))
        for _ in range(2):
            p = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "prune", "--max-unused", "0"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.1, full * 0.9))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            else:  # it finished first: the machine is faster now than when timed
                full = max(0.3, full * 0.7)
            p.wait()
        _check(work)
        assert _exports(work, tmp_path, ["a", "b", "c"]) == expect
        grid(work, "prune", "--max-unused", "0")  # finishes the job
        _check(work)
        assert _exports(work, tmp_path, ["a"]) == {"a": expect["a"]}
        st = json.loads(grid(work, "store", "stat", "--json").stdout)
        assert st["stored_bytes"] <= probe_stored * 1.05  # as small as an uninterrupted prune's
        shutil.rmtree(work)
    assert kills >= 20, kills
    assert _exports(probe, tmp_path, ["a", "b", "c"]) == expect
