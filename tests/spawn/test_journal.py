"""The overlay's journal (spawn.journal): operations survive a kill of the process without a
flush each, and a machine crash (a journal cut anywhere) leaves exactly a prefix of them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import lmdb
import pytest

from spawn.cred import ROOT as SU
from spawn.engine import Engine
from spawn.importer import Importer
from spawn.journal import DELETE, PUT, decode_records, encode_record
from spawn.overlay import META_JSEQ, Overlay
from store.local import LocalStore
from tests.spawn.test_save_concurrent import ROOT


def test_records_round_trip_and_stop_at_damage():
    recs = [(1, [(PUT, 1, b"k", b"v" * 100)]), (2, [(DELETE, 2, b"x", b""), (PUT, 0, b"a", b"")]),
            (3, [])]
    buf = b"".join(encode_record(s, e) for s, e in recs)
    assert list(decode_records(buf)) == recs
    cut = len(encode_record(*recs[0])) + 5
    assert list(decode_records(buf[:cut])) == recs[:1]  # torn second record
    flipped = bytearray(buf)
    flipped[len(encode_record(*recs[0])) + 12] ^= 1  # inside the second record's body
    assert list(decode_records(bytes(flipped))) == recs[:1]
    assert list(decode_records(b"\xff" * 3)) == []


@pytest.fixture
def base(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_bytes(b"old contents")
    LocalStore.create(tmp_path / "store")
    with LocalStore.open(tmp_path / "store") as store:
        root = Importer(store).run(src)
        store.sync()
    return tmp_path, root


CHILD = textwrap.dedent("""
    import os, sys
    from store.local import LocalStore
    from spawn.engine import Engine
    from spawn.cred import ROOT as SU
    store = LocalStore.open(sys.argv[1])
    e = Engine(store, sys.argv[2], bytes.fromhex(sys.argv[3]) if sys.argv[3] != "-" else None)
    sizes = []
    for i in range(int(sys.argv[4])):
        a = e.create(SU, 1, b"f%d" % i, 0o644)
        sizes.append(e.ov.journal.size)
        e.write(SU, a.ino, 0, b"%d" % i * 1000)
        sizes.append(e.ov.journal.size)
    e.unlink(SU, 1, b"old")
    sizes.append(e.ov.journal.size)
    print(e.ov.checkpoints, *sizes, flush=True)
    os._exit(0)  # as a SIGKILL would: no close, no checkpoint, no flush
""")


def run_child(tmp_path, root, n):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "store"), str(tmp_path / "ov"),
         root.hex() if root is not None else "-", str(n)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, check=True, text=True,
    ).stdout.split()
    return int(out[0]), [int(x) for x in out[1:]]


def names(e: Engine) -> dict[bytes, bytes]:
    return {n: e.read(SU, a.ino, 0, a.size) for n, a in e.readdir(SU, 1)}


def expected(k: int, n: int) -> dict[bytes, bytes]:
    """The tree after the first *k* journal records of the child (2 per file, then unlink)."""
    out = {b"old": b"old contents"}
    for i in range(min(k, 2 * n) // 2):
        out[b"f%d" % i] = b"%d" % i * 1000
    if k < 2 * n and k % 2:
        out[b"f%d" % (k // 2)] = b""
    if k > 2 * n:
        del out[b"old"]
    return out


def test_operations_survive_a_kill_without_a_checkpoint(base):
    tmp_path, root = base
    checkpoints, _ = run_child(tmp_path, root, 50)
    assert checkpoints == 1  # the spawn's creation only: the 101 operations are journal-only
    with LocalStore.open(tmp_path / "store") as store:
        env = lmdb.open(str(tmp_path / "ov"), max_dbs=8, subdir=True, readonly=True, lock=False)
        with env.begin() as txn:  # what LMDB itself holds: the creation only
            assert txn.get(META_JSEQ, db=env.open_db(b"meta", txn=txn)) is not None
        env.close()
        e = Engine(store, tmp_path / "ov")
        try:
            assert names(e) == expected(101, 50)
            assert os.path.getsize(tmp_path / "ov" / "journal") == 0  # replayed, checkpointed
        finally:
            e.close()


def test_a_journal_cut_anywhere_leaves_a_prefix_of_the_operations(base):
    """A machine crash keeps some prefix of the journal's bytes: whatever it is, the spawn
    opens with exactly the operations whose records are whole, none torn."""
    tmp_path, root = base
    n = 20
    _, sizes = run_child(tmp_path, root, n)
    journal = (tmp_path / "ov" / "journal").read_bytes()
    lmdb_copy = tmp_path / "ov.lmdb"
    os.makedirs(lmdb_copy)
    for f in ("data.mdb", "lock.mdb"):
        (lmdb_copy / f).write_bytes((tmp_path / "ov" / f).read_bytes())
    cuts = sorted({0, 1, sizes[0] - 1, sizes[0], sizes[0] + 7, sizes[5], sizes[5] + 3,
                   sizes[-2], sizes[-1] - 1, sizes[-1]})
    with LocalStore.open(tmp_path / "store") as store:
        for cut in cuts:
            ov = tmp_path / f"ov-{cut}"
            os.makedirs(ov)
            for f in ("data.mdb", "lock.mdb"):
                (ov / f).write_bytes((lmdb_copy / f).read_bytes())
            (ov / "journal").write_bytes(journal[:cut])
            k = sum(1 for s in sizes if s <= cut)  # whole records in the cut journal
            e = Engine(store, ov)
            try:
                assert names(e) == expected(k, n), f"cut at {cut}"
            finally:
                e.close()


def test_a_lost_truncation_does_not_replay_older_records(tmp_path):
    """After a checkpoint the journal is truncated; if a crash loses the truncation but keeps
    newer records written over its start, the older records after them must not be applied."""
    ov = Overlay(tmp_path / "ov")
    try:
        with ov.op() as txn:
            txn.put(b"k", b"1", db=ov.meta)
        with ov.op() as txn:
            txn.put(b"k", b"2", db=ov.meta)
        old = (tmp_path / "ov" / "journal").read_bytes()
        ov.checkpoint()
        with ov.op() as txn:
            txn.put(b"k", b"3", db=ov.meta)
        new = (tmp_path / "ov" / "journal").read_bytes()
        ov.journal.close()
        ov.env.close()  # no checkpoint: k=3 lives in the journal only
    except BaseException:
        ov.close()
        raise
    assert len(new) < len(old)
    (tmp_path / "ov" / "journal").write_bytes(new + old[len(new):])
    ov = Overlay(tmp_path / "ov")
    try:
        assert ov.txn().get(b"k", db=ov.meta) == b"3"
    finally:
        ov.close()


def test_a_failed_operation_changes_nothing(base):
    tmp_path, root = base
    with LocalStore.open(tmp_path / "store") as store:
        e = Engine(store, tmp_path / "ov", root)
        try:
            a = e.create(SU, 1, b"f", 0o644)
            e.write(SU, a.ino, 0, b"x" * 100_000)
            before = e.ov.journal.size, names(e), e.overlay_bytes
            e.mkdir(SU, 1, b"d", 0o755)
            e.create(SU, e.lookup(SU, 1, b"d").ino, b"inside", 0o644)
            with pytest.raises(OSError):
                e.rename(SU, 1, b"f", 1, b"d")  # a file over a non-empty directory: EISDIR
            with pytest.raises(OSError):
                e.rmdir(SU, 1, b"d")  # not empty
            e.unlink(SU, e.lookup(SU, 1, b"d").ino, b"inside")
            e.rmdir(SU, 1, b"d")
            assert names(e) == before[1] and e.overlay_bytes == before[2]
            size = e.ov.journal.size
            with pytest.raises(OSError):
                e.setattr(SU, e.lookup(SU, 1, b"old").ino, size=-1)
            assert e.ov.journal.size == size  # a refused operation writes no record
        finally:
            e.close()
        e = Engine(store, tmp_path / "ov")
        try:
            assert names(e) == before[1]
        finally:
            e.close()


BURST = textwrap.dedent("""
    import os, sys
    import spawn.overlay
    spawn.overlay.CHECKPOINT_BYTES = 200_000  # a few checkpoints inside the burst
    from store.local import LocalStore
    from spawn.engine import Engine
    from spawn.cred import ROOT as SU
    store = LocalStore.open(sys.argv[1])
    e = Engine(store, sys.argv[2], bytes.fromhex(sys.argv[3]))
    a = e.create(SU, 1, b"burst", 0o644)
    for i in range(int(sys.argv[4])):
        e.write(SU, a.ino, i % 5 * 30_000, bytes([i]) * 30_000)  # the same five places
    print(e.ov.checkpoints, e.ov.journal.size, os.path.getsize(sys.argv[2] + "/journal"), flush=True)
    os._exit(0)  # as a SIGKILL would
""")


def test_checkpoints_inside_a_burst_write_over_the_journal(base):
    """A checkpoint forced by the journal's size keeps its file and writes the next records
    over its start (spawn.journal ``reset(keep=True)``): after a kill, what is left of the
    older records after the newer ones does not disturb the replay, and every write is there
    (each of five places with its last write; the lost-truncation test above has older
    records that parse); an idle
    checkpoint (here: the reopened engine's close) gives the file back."""
    tmp_path, root = base
    n = 38  # (the last write does not end on a checkpoint)
    out = subprocess.run(
        [sys.executable, "-c", BURST, str(tmp_path / "store"), str(tmp_path / "ov"), root.hex(),
         str(n)], env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, check=True,
        text=True).stdout.split()
    checkpoints, live, on_disk = map(int, out)
    assert checkpoints >= 4  # the creation, and three or more inside the burst
    assert 0 < live < on_disk  # newer records over the start, older ones after them
    # each place holds its last write: an older record applied after it would show
    want = b"".join(bytes([max(i for i in range(n) if i % 5 == j)]) * 30_000 for j in range(5))
    with LocalStore.open(tmp_path / "store") as store:
        e = Engine(store, tmp_path / "ov")
        try:
            assert names(e)[b"burst"] == want
        finally:
            e.close()
        assert os.path.getsize(tmp_path / "ov" / "journal") == 0
        e = Engine(store, tmp_path / "ov")  # and once more, from the checkpoint alone
        try:
            assert names(e)[b"burst"] == want
        finally:
            e.close()


def test_the_record_checksum_is_zlibs_crc32():
    """Whichever implementation computes it (ISA-L's when installed), a record's checksum is
    zlib's CRC-32 of its body: journals written by either are read by either."""
    import struct
    import zlib

    rec = encode_record(7, [(PUT, 3, b"key", os.urandom(70_000)), (DELETE, 1, b"gone", b"")])
    size, crc = struct.unpack_from(">II", rec)
    assert size == len(rec) - 8 and crc == zlib.crc32(rec[8:])
    assert [seq for seq, _ in decode_records(rec)] == [7]
