"""`grid prune` while the node daemon runs (docs/store.md, "Online prune"), with real
processes: a spawn mounted over FUSE and being written (spilling to the store), saves,
imports through the daemon's block socket, all while prunes run; a dry run that changes
nothing; and the daemon killed with SIGKILL during online prunes. Afterwards `grid store
check` is clean, every retained name exports identically, and the mount reads everything."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grid.gridnode import (
    Node,
    make_user,
    new_node,
    skip_without_mounts,
    tree_digest,
    wait_for,
)

skip_without_mounts()

SEGMENT = 96 << 10

# Writes files of known content into the mount, fsyncing each; prints each file's number once
# it is fsynced. Stops at the first error or when told (stdin closes).
WRITER = r"""
import os, random, sys
d, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    data = random.Random(seed * 100000 + i).randbytes(60_000)
    fd = os.open(os.path.join(d, f"w{seed}-{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    print(i, flush=True)
"""


def wdata(seed: int, i: int) -> bytes:
    return random.Random(seed * 100000 + i).randbytes(60_000)


def make_src(d: Path, rng: random.Random, files: int = 10) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (d / f"f{i}").write_bytes(rng.randbytes(rng.randrange(2000, 40_000)))


def history(node: Node, names: dict[str, int], seed: int = 7) -> None:
    rng = random.Random(seed)
    for name, n in names.items():
        src = node.base / f"src-{name}"
        make_src(src, rng, 12)
        for _ in range(n):
            for i in rng.sample(range(12), 4):
                (src / f"f{i}").write_bytes(rng.randbytes(rng.randrange(2000, 40_000)))
            node.grid("import", "--no-cache", str(src), name)


def exports(node: Node, names: list[str]) -> dict[str, str]:
    out = {}
    for n in names:
        d = node.base / f"export-{n}-{time.monotonic_ns()}"
        node.grid("export", n, str(d))
        out[n] = tree_digest(d)
        subprocess.run(["rm", "-rf", str(d)], check=True)
    return out


def check_clean(node: Node) -> dict:
    ck = json.loads(node.grid("store", "check", "--json").stdout)
    assert ck["ok"], ck["errors"]
    return ck


def prune(node: Node, *args: str) -> dict:
    p = node.grid("prune", "--json", *args, timeout=300)
    rep = json.loads(p.stdout)
    assert rep.get("daemon_pid") == node.proc.pid, "prune did not go through the daemon"
    return rep


@pytest.fixture
def node() -> Iterator[Node]:
    n = new_node()
    try:
        n.init()
        (n.home / "store" / "segment_size").write_text(str(SEGMENT))
        history(n, {"proj": 8, "other": 3})
        n.grid("forget", "proj", "--keep-last", "2")
        yield n
    finally:
        n.close()


def test_prune_beside_mount_writer_save_and_import(node: Node) -> None:
    before = exports(node, ["proj", "other"])
    node.start("--overlay-limit", "256K")  # the mount's writes spill into the store
    m = node.base / "m"
    m.mkdir()
    sid = node.grid("spawn", "-q", "proj", "--mount", str(m)).stdout.strip()
    base_files = {p.name: p.read_bytes() for p in m.iterdir() if p.is_file()}
    rng = random.Random(11)
    writers = []
    reps = []
    imports: dict[str, str] = {}
    saves = []
    for rnd in range(4):
        w = subprocess.Popen([sys.executable, "-c", WRITER, str(m), str(rnd), "12"],
                             stdout=subprocess.PIPE, text=True)
        writers.append(w)
        # an import through the daemon's block socket, racing the prune
        src = node.base / f"isrc{rnd}"
        make_src(src, rng, 8)
        if rnd == 0:  # one import large enough to be writing for sure when prune starts
            for i in range(40):
                (src / f"big{i}").write_bytes(rng.randbytes(1 << 20))
        pos0 = json.loads(node.grid("store", "stat", "--json").stdout)["position"]
        imp = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "import", "--no-cache",
                                str(src), f"imp{rnd}"], env=node.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        saver = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "save", sid,
                                  f"saved{rnd}"], env=node.env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        if rnd == 0:
            assert wait_for(lambda p=pos0: json.loads(node.grid("store", "stat", "--json")
                                                      .stdout)["position"] > p + (4 << 20), 60)
        else:
            time.sleep(rng.uniform(0.0, 0.3))
        reps.append(prune(node, "--max-unused", "0"))
        while imp.poll() is None or saver.poll() is None:  # prune again while they write
            reps.append(prune(node, "--max-unused", "0"))
        _out, err = imp.communicate(timeout=120)
        assert imp.returncode == 0, err
        imports[f"imp{rnd}"] = tree_digest(src)
        _out, err = saver.communicate(timeout=120)
        assert saver.returncode == 0, err
        saves.append(f"saved{rnd}")
        check_clean(node)
    for w in writers:
        w.communicate(timeout=120)
        assert w.returncode == 0
    reps.append(prune(node, "--max-unused", "0"))
    assert sum(r["reclaimed_bytes"] for r in reps) > 0
    assert sum(r["copied_records"] for r in reps) > 0
    assert any(r["late_blocks"] for r in reps)
    check_clean(node)
    assert exports(node, ["proj", "other"]) == before
    for name, want in imports.items():
        d = node.base / f"x-{name}"
        node.grid("export", name, str(d))
        assert tree_digest(d) == want, name
    # the mount reads everything: the base files and every file the writers wrote
    for rnd in range(4):
        for i in range(12):
            assert (m / f"w{rnd}-{i}").read_bytes() == wdata(rnd, i)
    for name, data in base_files.items():
        assert (m / name).read_bytes() == data
    # a save after the prunes exports what the mount holds
    node.grid("save", sid, "final")
    d = node.base / "x-final"
    node.grid("export", "final", str(d))
    for rnd in range(4):
        for i in range(12):
            assert (d / f"w{rnd}-{i}").read_bytes() == wdata(rnd, i)
    # every save made during the prunes still exports whole
    for name in saves:
        node.grid("export", name, str(node.base / f"x-{name}"))
    check_clean(node)


def test_online_dry_run_changes_nothing(node: Node) -> None:
    node.start()
    st0 = json.loads(node.grid("store", "stat", "--json").stdout)
    segs0 = sorted(os.listdir(node.home / "store" / "segments"))
    rep = prune(node, "--dry-run")
    assert rep["dry_run"] and rep["victims"] and rep["copied_records"] == 0
    assert rep["reclaimed_bytes"] > 0
    assert sorted(os.listdir(node.home / "store" / "segments")) == segs0
    st1 = json.loads(node.grid("store", "stat", "--json").stdout)
    assert st1["position"] == st0["position"] and st1["blocks"] == st0["blocks"]


def test_prune_refused_to_others_and_with_bad_arguments(node: Node) -> None:
    from grid.daemon.client import DaemonClient, DaemonError

    node.start()
    with DaemonClient(node.home / "run" / "grid.sock", timeout=30) as c:
        for kw in ({"max_unused": 101.0}, {"max_unused": "x"}, {"dry_run": 1}, {"bogus": True}):
            with pytest.raises(DaemonError) as e:
                c.call_with_notices("prune", lambda _m: None, **kw)
            assert e.value.errno == 22, kw
    segs0 = sorted(os.listdir(node.home / "store" / "segments"))
    alice = make_user("gridtest-alice")
    p = node.grid("prune", user=alice, check=False)
    assert p.returncode != 0 and "only root or the daemon's user may prune" in p.stderr, p.stderr
    assert sorted(os.listdir(node.home / "store" / "segments")) == segs0


def _log_count(node: Node, what: str) -> int:
    return node.log.read_text(errors="replace").count(what) if node.log.exists() else 0


def test_sigkill_daemon_during_online_prune(node: Node) -> None:
    rng = random.Random(os.environ.get("GRID_CRASH_SEED", "13"))
    src = node.base / "src-proj"
    for i in range(24):  # larger files: a prune that lasts long enough to be killed in
        (src / f"f{i}").write_bytes(rng.randbytes(300_000))
    node.grid("import", "--no-cache", str(src), "proj")
    node.start()
    took = None
    kills = 0
    for rnd in range(12):
        # more dead data each round: a new proj snapshot, the oldest forgotten
        for i in range(24):  # small changes all over: every segment partly dead, copies
            data = bytearray((src / f"f{i}").read_bytes())
            for _ in range(2):
                at = rng.randrange(0, len(data) - 8192)
                data[at : at + 8192] = rng.randbytes(8192)
            (src / f"f{i}").write_bytes(bytes(data))
        node.grid("import", "--no-cache", str(src), "proj")
        node.grid("forget", "proj", "--keep-last", "2")
        before = exports(node, ["proj", "other"])
        if took is None:  # the first round measures how long the daemon's prune takes
            first = prune(node, "--max-unused", "0")
            took = first["seconds"]
            assert first["copied_records"] > 0
            continue
        started, finished = _log_count(node, "prune (uid"), _log_count(node, "reclaimed in")
        p = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "prune", "--max-unused", "0"],
                             env=node.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert wait_for(lambda s=started: _log_count(node, "prune (uid") > s, timeout=30)
        time.sleep(rng.uniform(0.0, 1.0) * took)
        node.kill9()
        p.communicate(timeout=60)
        kills += _log_count(node, "reclaimed in") == finished  # killed before it finished
        node.start()
        check_clean(node)
        assert exports(node, ["proj", "other"]) == before, f"round {rnd}"
    assert kills >= 5, (kills, took)
    rep = prune(node, "--max-unused", "0")
    assert rep["live_blocks"] > 0
    check_clean(node)
    assert exports(node, ["proj", "other"]) == before
    print(f"{kills} kills during online prunes (a whole prune took {took:.2f} s in the daemon)")


def big_import_under_way(node: Node, seed: int) -> tuple[Path, subprocess.Popen[str]]:
    """`grid import` of 120 MiB started in the background and already writing (its block
    connection is a writer session) when this returns."""
    src = node.base / "big"
    rng = random.Random(seed)
    make_src(src, rng, 0)
    for i in range(120):
        (src / f"b{i}").write_bytes(rng.randbytes(1 << 20))
    imp = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "import", "--no-cache",
                            str(src), "big"], env=node.env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    st0 = json.loads(node.grid("store", "stat", "--json").stdout)["position"]
    assert wait_for(lambda: json.loads(node.grid("store", "stat", "--json").stdout)["position"]
                    > st0 + (8 << 20), timeout=60)
    return src, imp


def test_prune_waits_for_an_import_in_flight(node: Node) -> None:
    """An import through the daemon's block socket that began before prune: prune says it
    waits for it, and the import's whole tree survives (its name exports what was read)."""
    node.start()
    src, imp = big_import_under_way(node, 21)
    p = node.grid("prune", "--max-unused", "0", timeout=300)
    _out, err = imp.communicate(timeout=300)
    assert imp.returncode == 0, err
    assert "waiting for 1 writer(s)" in p.stderr and "block connection" in p.stderr, p.stderr
    d = node.base / "x-big"
    node.grid("export", "big", str(d))
    assert tree_digest(d) == tree_digest(src)
    check_clean(node)


def test_daemon_stops_cleanly_during_prune(node: Node) -> None:
    """`grid stop` while an online prune waits for an import: the daemon stops (the prune
    ends with an error or finishes, never hangs), and the store checks clean afterwards."""
    before = exports(node, ["proj", "other"])
    node.start()
    _src, imp = big_import_under_way(node, 22)
    p = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "prune"], env=node.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: _log_count(node, "prune (uid") > 0, timeout=30)
    t0 = time.monotonic()
    node.grid("stop")
    assert node.proc is not None
    node.proc.wait(timeout=60)
    assert time.monotonic() - t0 < 30
    p.communicate(timeout=60)
    imp.communicate(timeout=60)
    assert node.proc.returncode == 0, node.log.read_text()[-2000:]
    check_clean(node)
    assert exports(node, ["proj", "other"]) == before


def test_name_set_through_the_daemon_keeps_a_forgotten_root(node: Node) -> None:
    """`grid name set` of a root nothing names any more, with the daemon up: the presence
    check goes to the daemon's store (so a running prune keeps the block), an absent score
    is refused, and the tree named again survives the next prune whole."""
    src = node.base / "solo"
    make_src(src, random.Random(99), 6)
    node.grid("import", "--no-cache", str(src), "solo")
    score = node.grid("name", "get", "solo").stdout.strip()
    node.grid("name", "rm", "solo")
    node.grid("forget", "solo")  # a deleted name, forgotten whole: its tree is dead now
    node.start()
    bad = node.grid("name", "set", "ghost", "blake3:" + "ab" * 32, check=False)
    assert bad.returncode != 0 and "not in this node's store" in bad.stderr
    node.grid("name", "set", "back", score)
    rep = prune(node, "--max-unused", "0")
    assert rep["reclaimed_bytes"] > 0  # proj's forgotten history went
    check_clean(node)
    d = node.base / "export-back"
    node.grid("export", "back", str(d))
    assert tree_digest(d) == tree_digest(src)
