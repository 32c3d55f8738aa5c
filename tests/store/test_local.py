"""The local store's own promises: verification, recovery, the writer lock, rebuilding, the log."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.base import walk
from store.block import BlockType, encode_refs
from store.errors import CorruptBlock, StoreError, StoreLocked
from store.hashtree import write_bytes
from store.local import LocalStore
from store.segment import RECORD_HEADER_SIZE

ROOT = Path(__file__).resolve().parents[2]


def _segments(path: Path) -> list[Path]:
    return sorted((path / "segments").glob("*.seg"))


def test_reopen_keeps_blocks(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        scores = [s.put(BlockType.DATA, os.urandom(1000)) for _ in range(100)]
    with LocalStore.open(tmp_path / "s") as s:
        assert all(s.has(x) for x in scores)
        assert s.statistics().blocks == 100


def test_corrupt_payload_named_never_returned(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        a = s.put(BlockType.DATA, os.urandom(5000))  # incompressible: stored raw
        s.sync()
        pos = s.statistics().position
    seg = _segments(tmp_path / "s")[0]
    with open(seg, "r+b") as f:
        f.seek(pos - 100)
        b = f.read(1)
        f.seek(pos - 100)
        f.write(bytes([b[0] ^ 0xFF]))
    with LocalStore.open(tmp_path / "s", readonly=True) as s:
        with pytest.raises(CorruptBlock) as ei:
            s.get(a)
        msg = str(ei.value)
        assert a.hex() in msg and seg.name in msg
        report = s.check()
        assert not report.ok and a.hex() in report.errors[0]


def test_corrupt_compressed_payload(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        a = s.put(BlockType.DATA, b"abc" * 10000)  # compresses
        s.sync()
        pos = s.statistics().position
    with open(_segments(tmp_path / "s")[0], "r+b") as f:
        f.seek(pos - 5)
        f.write(b"\xff\xff\xff")
    with LocalStore.open(tmp_path / "s", readonly=True) as s, pytest.raises(CorruptBlock):
        s.get(a)


def test_torn_tail_dropped_on_open(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        good = s.put(BlockType.DATA, os.urandom(3000))
        s.sync()
        end = s.position()
    seg = _segments(tmp_path / "s")[0]
    # A half-written record after the synced one (header, part of its payload).
    with LocalStore.open(tmp_path / "s") as s:
        pass
    with open(seg, "ab") as f:
        from store.score import score_of
        from store.segment import encode_record_header

        payload = os.urandom(4000)
        f.write(encode_record_header(1, 0, 4000, 4000, score_of(1, payload)) + payload[:1234])
    assert seg.stat().st_size == end + RECORD_HEADER_SIZE + 1234
    with LocalStore.open(tmp_path / "s") as s:
        assert s.get(good).type == BlockType.DATA
        assert s.position() == end
        assert s.check().ok
    assert seg.stat().st_size == end


def test_garbage_tail_dropped(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        s.put(BlockType.DATA, b"x" * 500)
        end = s.position()
    with open(_segments(tmp_path / "s")[0], "ab") as f:
        f.write(os.urandom(777))
    with LocalStore.open(tmp_path / "s") as s:
        assert s.position() == end


def test_unsynced_tail_reindexed(tmp_path):
    """Records in the log but not the index (crash before the index commit) come back."""
    LocalStore.create(tmp_path / "s")
    code = (
        "import os,sys\n"
        "from store.local import LocalStore\n"
        "s=LocalStore.open(sys.argv[1])\n"
        "x=s.put(1,b'tail'*100)\n"
        "print(x.hex(), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL
    score = bytes.fromhex(out.stdout.strip())
    with LocalStore.open(tmp_path / "s") as s:
        assert s.get(score).data == b"tail" * 100


def test_second_writer_refused_with_pid(tmp_path):
    LocalStore.create(tmp_path / "s")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time\nfrom store.local import LocalStore\n"
         "s=LocalStore.open(sys.argv[1]); print('ready', flush=True); time.sleep(60)", str(tmp_path / "s")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked, match=f"process {holder.pid}"):
            LocalStore.open(tmp_path / "s")
        with LocalStore.open(tmp_path / "s", readonly=True) as ro:
            assert ro.statistics().blocks == 0
    finally:
        holder.kill()
        holder.wait()
    LocalStore.open(tmp_path / "s").close()  # lock freed by the kernel on SIGKILL


def test_readonly_refuses_writes(local_store, tmp_path):
    local_store.close()
    with LocalStore.open(tmp_path / "store", readonly=True) as s, pytest.raises(StoreError, match="read-only"):
        s.put(BlockType.DATA, b"x")


def test_missing_store_message(tmp_path):
    with pytest.raises(StoreError, match="no block store"):
        LocalStore.open(tmp_path / "nowhere")


def test_segments_roll_and_log_positions(tmp_path):
    LocalStore.create(tmp_path / "s")
    blocks = [os.urandom(random.randrange(1, 20_000)) for _ in range(200)]
    with LocalStore.open(tmp_path / "s", segment_size=64 << 10) as s:
        scores = [s.put(BlockType.DATA, b) for b in blocks]
        recs = list(s.iter_log(0))
        assert [r.score for r in recs] == scores
        positions = [r.position for r in recs]
        assert positions == sorted(positions)
        assert all(a.next_position <= b.position for a, b in itertools.pairwise(recs))
        # Resume from any record boundary, and from the end.
        k = 137
        assert [r.score for r in s.iter_log(recs[k].position)] == scores[k:]
        assert [r.score for r in s.iter_log(recs[k - 1].next_position)] == scores[k:]
        assert list(s.iter_log(s.position())) == []
    assert len(_segments(tmp_path / "s")) > 10
    with LocalStore.open(tmp_path / "s", segment_size=64 << 10) as s:
        assert [s.get(x).data for x in scores] == blocks
        assert s.check().ok


def test_rebuild_index_from_log(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s", segment_size=128 << 10) as s:
        ref = write_bytes(s, os.urandom(1_000_000))
        before = {x for x, _ in walk(s, ref.score)}
    import shutil

    shutil.rmtree(tmp_path / "s" / "index")
    (tmp_path / "s" / "index").mkdir()
    with LocalStore.open(tmp_path / "s", segment_size=128 << 10) as s:
        # Opening re-indexes the whole log as its tail.
        assert {x for x, _ in walk(s, ref.score)} == before
        n = s.rebuild_index().blocks
        assert n == len(before)
        assert s.check().ok


def test_index_ahead_of_log_refused(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        s.put(BlockType.DATA, os.urandom(5000))
        s.sync()
    seg = _segments(tmp_path / "s")[0]
    os.truncate(seg, 16)
    with pytest.raises(StoreError, match="--rebuild"):
        LocalStore.open(tmp_path / "s")


def test_closure_survives_reopen(tmp_path):
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        leaf = s.put(BlockType.DATA, b"leaf")
        s.put(BlockType.ROOT, encode_refs([leaf]))
    with LocalStore.open(tmp_path / "s") as s:
        recs = list(s.iter_log())
        seen = set()
        from store.block import references

        for r in recs:  # every prefix of the log is closed under reference
            assert all(x in seen for x in references(r.type, r.data))
            seen.add(r.score)


@pytest.mark.slow
def test_sigkill_writer_loses_no_synced_block(tmp_path):
    """SIGKILL a writer at random moments (24 times); every block acknowledged by a returned
    sync() must be readable and verify afterwards, and the store must open cleanly."""
    LocalStore.create(tmp_path / "s")
    rng = random.Random(1234)
    acknowledged: list[bytes] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    kills = 0
    for run in range(24):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/store/crash_writer.py"), str(tmp_path / "s"), str(run), str(2 << 20)],
            stdout=subprocess.PIPE, env=env,
        )
        time.sleep(rng.uniform(0.15, 0.9))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the writer must die by SIGKILL, not by itself"
        kills += 1
        pending: list[bytes] = []
        for line in out.decode().splitlines():
            if line.startswith("SYNCED"):
                acknowledged += pending
                pending = []
            elif len(line) == 64:
                pending.append(bytes.fromhex(line))
        with LocalStore.open(tmp_path / "s", segment_size=2 << 20) as s:
            for score in acknowledged:
                for _x, blk in walk(s, score):  # whole trees, verified block by block
                    assert blk.type in (BlockType.DATA, BlockType.POINTER)
    assert kills == 24
    assert len(acknowledged) > 100
    with LocalStore.open(tmp_path / "s") as s:
        report = s.check()
        assert report.ok, report.errors[:5]
        assert report.records >= len(set(acknowledged))


def test_leaf_cache_serves_rereads_and_is_off_by_default(tmp_path):
    """The daemon's store keeps decoded leaves (leaf_cache_bytes): a re-read leaf comes from
    memory, without reading or hashing it again; interior blocks keep their own cache. Other
    opens (tools, check) read every leaf from disk."""
    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        leaves = [s.put(BlockType.DATA, os.urandom(20000)) for _ in range(8)]
        s.sync()
    with LocalStore.open(tmp_path / "s", readonly=True) as s:
        for _ in range(3):
            assert all(s.get(x).data for x in leaves)
        assert s.statistics().cache_hits == 0  # off: every get went to the log
    with LocalStore.open(tmp_path / "s", readonly=True, leaf_cache_bytes=100_000) as s:
        first = [s.get(x).data for x in leaves]
        assert s.statistics().cache_hits == 0
        seg = _segments(tmp_path / "s")[0]
        fd = os.open(seg, os.O_WRONLY)  # damage the log under the cached leaves
        try:
            os.pwrite(fd, b"\0" * 4096, 64)
        finally:
            os.close(fd)
        # the last four leaves fit in 100,000 bytes: they are the ones answered from memory
        assert [s.get(x).data for x in leaves[4:]] == first[4:]
        assert s.statistics().cache_hits == 4


def test_get_many_reads_runs_of_records_at_once_and_verifies_each(tmp_path):
    """Blocks written one after another come back from get_many in one pread per run,
    each verified: the same bytes as get, in the order asked, duplicates and cached ones
    included; a corrupt record in the middle of a run raises CorruptBlock as get does, and
    the others of the run are still served; an unknown score raises BlockNotFound."""
    from store.errors import BlockNotFound

    LocalStore.create(tmp_path / "s")
    with LocalStore.open(tmp_path / "s") as s:
        datas = [os.urandom(random.randrange(100, 40000)) for _ in range(200)]
        scores = [s.put(BlockType.DATA, d) for d in datas]
        s.sync()
        victim = scores[100]
        pos = s._locate(victim).position  # where to damage it
    seg = _segments(tmp_path / "s")[0]
    with open(seg, "r+b") as f:
        f.seek(pos + RECORD_HEADER_SIZE + 10)
        b = f.read(1)
        f.seek(pos + RECORD_HEADER_SIZE + 10)
        f.write(bytes([b[0] ^ 0xFF]))
    with LocalStore.open(tmp_path / "s", readonly=True) as s:
        order = list(range(200))
        random.Random(3).shuffle(order)
        good = [i for i in order if i != 100]
        got = s.get_many([scores[i] for i in good] + [scores[good[0]]])
        assert [g.data for g in got] == [datas[i] for i in good] + [datas[good[0]]]
        with pytest.raises(CorruptBlock):
            s.get_many(scores[90:110])
        assert [g.data for g in s.get_many(scores[101:120])] == datas[101:120]
        with pytest.raises(BlockNotFound):
            s.get_many([scores[0], bytes(31) + b"\x01"])
        assert s.get_many([]) == []
