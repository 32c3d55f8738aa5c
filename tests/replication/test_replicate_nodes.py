"""`grid replicate` between three real nodes (own homes, own `grid serve --blocks` daemons on
loopback, one grid CA): chains, pull, concurrent saves, tombstones, refusals, corruption."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from replication.replicate import PUSH, Cursors, run_lock
from store.segment import segment_name
from tests.grid.gridnode import Node, new_node
from tests.replication.grid3 import Peer, make_grid


@pytest.fixture(scope="module")
def grid3(tmp_path_factory):
    peers = make_grid(3, tmp_path_factory.mktemp("grid3"))
    try:
        for p in peers:
            p.start()
        yield peers
    finally:
        for p in peers:
            p.node.close()


def make_tree(root: Path, seed: int, size: int = 300_000) -> Path:
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "small.txt").write_text(f"tree {seed}\n" * 50)
    (root / "sub" / "big.bin").write_bytes(os.urandom(size))
    os.symlink("small.txt", root / "link")
    return root


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    def clean(c: filecmp.dircmp) -> bool:
        if c.left_only or c.right_only or c.diff_files or c.funny_files:
            return False
        return all(clean(s) for s in c.subdirs.values())
    return clean(cmp)


def replicate(p: Peer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return p.grid("replicate", *args, check=check)


def test_chain_a_to_b_to_c_and_read_on_c(grid3, tmp_path):
    a, b, c = grid3
    src = make_tree(tmp_path / "src", 1)
    a.grid("import", str(src), "chain")
    out = replicate(a, "--peer", "b").stdout
    assert out.startswith("-> b: ") and "1 names" in out
    again = replicate(a, "--peer", "b").stdout  # idempotent: nothing left to send
    assert again.startswith("-> b: 0 blocks") and "0 names" in again
    replicate(b, "--peer", "c")
    assert "peer a connected" in b.node.log.read_text()  # the identity is the certificate's
    assert "as 'a'" in b.node.log.read_text()  # and the block server logs it per connection
    assert a.names()["chain"]["score"] == c.names()["chain"]["score"]
    c.grid("export", "chain", str(tmp_path / "out"))
    assert same_tree(src, tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "link") == "small.txt"


def test_pull_fetches_blocks_then_names(grid3, tmp_path):
    a, b, _ = grid3
    src = make_tree(tmp_path / "src", 2)
    b.grid("import", str(src), "pulled")
    out = replicate(a, "--pull", "--peer", "b").stdout
    assert out.startswith("<- b: ") and "names" in out
    a.grid("export", "pulled", str(tmp_path / "out"))
    assert same_tree(src, tmp_path / "out")
    assert replicate(a, "--pull", "--peer", "b").stdout.startswith("<- b: 0 blocks")


def test_concurrent_saves_and_a_tombstone_converge(grid3, tmp_path):
    a, b, _ = grid3
    a.grid("import", str(make_tree(tmp_path / "on-a", 3)), "both")
    b.grid("import", str(make_tree(tmp_path / "on-b", 4)), "both")
    replicate(a, "--peer", "b")
    replicate(b, "--peer", "a")
    ha, hb = a.history("both"), b.history("both")
    assert ha == hb and len([line for line in ha if "blake3:" in line]) >= 2
    assert a.names()["both"] == b.names()["both"]
    a.grid("name", "rm", "both")
    replicate(a, "--peer", "b")
    assert b.names()["both"]["deleted"] is True
    assert b.grid("name", "get", "both", check=False).returncode != 0


def test_every_peer_by_default_and_summary_per_peer(grid3, tmp_path):
    a, _, _ = grid3
    a.grid("import", str(make_tree(tmp_path / "src", 5)), "fanout")
    lines = replicate(a).stdout.splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["-> b", "-> c"]


def test_overlapping_run_exits_at_once(grid3):
    a = grid3[0]
    with run_lock(a.node.home / "replication" / "lock"):
        p = replicate(a, check=False)
    assert p.returncode == 75 and "another grid replicate is running" in p.stderr
    assert p.stdout == ""


def test_unknown_peer_name_and_unreachable_peer(grid3):
    a = grid3[0]
    p = replicate(a, "--peer", "nosuch", check=False)
    assert p.returncode == 1 and "no such peer: nosuch" in p.stderr
    a.grid("peer", "add", "gone", "127.0.0.1:1")
    try:
        p = replicate(a, "--peer", "gone", check=False)
    finally:
        a.grid("peer", "rm", "gone")
    assert p.returncode == 1 and "cannot reach gone at 127.0.0.1:1" in p.stderr
    assert "Traceback" not in p.stderr


def test_bad_options_are_refused(grid3):
    a = grid3[0]
    for args in (("--every", "soon"), ("--limit-rate", "fast"), ("--limit-rate", "0")):
        p = replicate(a, *args, check=False)
        assert p.returncode == 2 and "bad " in p.stderr


def test_a_node_of_another_ca_is_refused_both_ways(grid3, tmp_path):
    a = grid3[0]
    other = Peer(new_node(), "a")  # same name as a, different CA
    other.grid("init", "--node-name", "a", "--grid-name", "evil")
    os.chmod(other.node.home, 0o711)
    other.grid("peer", "add", "b", grid3[1].addr)
    before = grid3[1].scores()
    try:
        other.grid("import", str(make_tree(tmp_path / "src", 6)), "evil")
        p = replicate(other, "--peer", "b", check=False)
        assert p.returncode == 1 and "certificate" in p.stderr, p.stderr
        assert grid3[1].scores() == before and "evil" not in grid3[1].names()
        other.start()
        a.grid("peer", "add", "intruder", other.addr)
        try:
            p = replicate(a, "--peer", "intruder", check=False)
        finally:
            a.grid("peer", "rm", "intruder")
        assert p.returncode == 1 and "certificate" in p.stderr, p.stderr
    finally:
        other.node.close()


def test_corrupt_block_in_the_senders_log_is_reported_not_sent(tmp_path):
    a, b = make_grid(2, tmp_path)
    try:
        b.start()
        a.grid("import", str(make_tree(tmp_path / "src", 7, size=200_000)), "bad")
        from store.local import LocalStore

        s = LocalStore.open(a.node.home / "store", readonly=True)
        try:
            recs = list(s.iter_log(0))
        finally:
            s.close()
        victim = max(recs, key=lambda r: len(r.data))
        segs = sorted((a.node.home / "store" / "segments").glob("*.seg"))
        assert [p.name for p in segs] == [segment_name(0)]  # positions are file offsets
        with open(segs[0], "r+b") as f:
            f.seek(victim.next_position - 10)  # inside the payload, the record's tail
            byte = f.read(1)
            f.seek(victim.next_position - 10)
            f.write(bytes([byte[0] ^ 0xFF]))
        p = replicate(a, "--peer", "b", check=False)
        assert p.returncode == 1 and victim.score.hex() in p.stderr, p.stderr
        assert victim.score.hex() not in b.scores()
        assert "bad" not in b.names()  # its tree is incomplete there: no name
    finally:
        for n in (a, b):
            n.node.close()


def test_help_has_an_example():
    p = subprocess.run([sys.executable, "-m", "grid.cli.main", "replicate", "--help"],
                       capture_output=True, text=True, check=True)
    assert "grid replicate --pull --every 5m" in p.stdout


def test_spawn_the_replicated_root_on_c_and_read_it(grid3, tmp_path):
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (the export test reads it instead)")
    a, b, c = grid3
    src = make_tree(tmp_path / "src", 8)
    a.grid("import", str(src), "spawned")
    replicate(a, "--peer", "b")
    replicate(b, "--peer", "c")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sid = c.grid("spawn", "-q", "spawned", "--mount", str(mnt)).stdout.strip()
    try:
        assert (mnt / "sub" / "big.bin").read_bytes() == (src / "sub" / "big.bin").read_bytes()
        assert (mnt / "small.txt").read_text() == (src / "small.txt").read_text()
    finally:
        c.grid("unmount", str(mnt), check=False)
        c.grid("kill", "-f", sid, check=False)


def test_every_repeats_until_stopped_and_limit_rate_is_accepted(grid3, tmp_path):
    a = grid3[0]
    a.grid("import", str(make_tree(tmp_path / "src", 9)), "looped")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grid.cli.main", "replicate", "--peer", "b", "--every", "1s",
         "--limit-rate", "50M"], env=a.node.env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        assert proc.stdout is not None
        while len(lines) < 2 and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert lines[0].startswith("-> b: ") and lines[1].startswith("-> b: 0 blocks"), lines


def test_a_full_receiving_disk_fails_cleanly_then_converges(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs as the receiver's disk")
    (a,) = make_grid(1, tmp_path)
    base = Path(tempfile.mkdtemp(prefix="grid-full-", dir="/tmp"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0711", "tmpfs", str(base)],
                      capture_output=True).returncode:
        shutil.rmtree(base)
        pytest.skip("cannot mount tmpfs here")
    b = Peer(Node(base), "b")
    try:
        a.grid("join-bundle", "b", "-o", str(tmp_path / "b.bundle"))
        b.grid("init", "--join", str(tmp_path / "b.bundle"))
        a.grid("peer", "add", "b", b.addr)
        b.grid("peer", "add", "a", a.addr)
        b.start()
        src = tmp_path / "src"
        src.mkdir()
        (src / "big").write_bytes(os.urandom(12 << 20))  # more than b's disk
        a.grid("import", str(src), "big")
        p = replicate(a, "--peer", "b", check=False)
        assert p.returncode == 1 and "disk is full" in p.stderr, p.stderr
        assert "big" not in b.names()
        assert Cursors(a.node.home / "replication" / "cursors").get(PUSH, "b") == 0
        subprocess.run(["mount", "-o", "remount,size=64m", str(base)], check=True)
        again = replicate(a, "--peer", "b", check=False)
        # the store cuts a record torn by ENOSPC back out of its log, so the rerun converges
        assert again.returncode == 0, again.stderr
        assert a.scores() == b.scores() and b.names()["big"] == a.names()["big"]
        assert b.grid("store", "check", check=False).returncode == 0
    finally:
        b.node.stop()
        subprocess.run(["umount", "-l", str(base)], check=False)
        b.node.close()
        a.node.close()
