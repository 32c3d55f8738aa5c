"""A bounded overlay: past ``overlay_limit`` page bytes, file contents spill into the store.

A spilled file's overlay record names a spliced hash tree in the store (below
``base_limit`` = its size) instead of holding pages, so reads, truncation, restarts, saves
and concurrent saves must all see exactly the bytes that were written.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys

import pytest

from spawn.archive import Archive
from spawn.cred import ROOT as SU
from spawn.engine import Engine
from spawn.overlay import META_PAGE_BYTES
from spawn.save import SaveJob, save
from store.errors import StoreError
from store.local import LocalStore
from tests.spawn.test_save_concurrent import (
    ROOT,
    Spawn,
    describe,
    ino_of,
    page_bytes_exact,
    write,
)

MiB = 1 << 20


@pytest.fixture
def limited(tmp_path):
    s = Spawn(tmp_path, overlay_limit=MiB)
    yield s
    s.close()


def read_all(e: Engine, ino: int) -> bytes:
    return e.read(SU, ino, 0, e.getattr(SU, ino).size + 1)


def test_a_20_mib_file_through_a_1_mib_overlay(limited):
    sp = limited
    e = sp.e
    rng = random.Random(1)
    ino = e.create(SU, 1, b"huge", 0o644).ino
    model = bytearray()
    peak = 0
    while len(model) < 20 * MiB:
        piece = rng.randbytes(rng.randrange(50_000, 300_000))
        e.write(SU, ino, len(model), piece)
        model += piece
        peak = max(peak, e.overlay_bytes)
    assert peak <= MiB
    # Overwrite pieces here and there: spilled trees get spliced again.
    for _ in range(40):
        off = rng.randrange(0, len(model) - 10_000)
        patch = rng.randbytes(rng.randrange(1, 10_000))
        e.write(SU, ino, off, patch)
        model[off : off + len(patch)] = patch
        peak = max(peak, e.overlay_bytes)
    assert peak <= MiB
    assert page_bytes_exact(e)
    assert read_all(e, ino) == model
    assert e.read(SU, ino, 7 * MiB + 3, 100_000) == model[7 * MiB + 3 : 7 * MiB + 100_003]
    # A restart: the spilled trees are in the store, the count in the overlay.
    e = sp.reopen()
    assert read_all(e, ino) == model
    assert e.overlay_bytes <= MiB and page_bytes_exact(e)
    # Saving writes what the pages hold and reuses the spilled trees' leaves.
    before = sp.store.statistics()
    root = save(e)
    added = sp.store.statistics().logical_bytes - before.logical_bytes
    assert added < 2 * MiB, f"save after spilling wrote {added} bytes"
    a = Archive(sp.store, root)
    assert a.open(a.resolve("huge")).read(0, 21 * MiB) == model
    assert sp.respawn(root) == describe(e)


def test_save_after_everything_spilled_writes_a_few_blocks(limited):
    sp = limited
    e = sp.e
    ino = e.create(SU, 1, b"f", 0o644).ino
    data = random.Random(2).randbytes(5 * MiB)
    for off in range(0, len(data), 256 << 10):
        e.write(SU, ino, off, data[off : off + (256 << 10)])
    e.spill()
    assert e.overlay_bytes == 0
    blocks = sp.store.statistics().blocks
    root = save(e)
    # The file's tree is the spilled one: the directory leaf, the inode table's path and
    # the root are all that is new.
    assert sp.store.statistics().blocks - blocks <= 6
    a = Archive(sp.store, root)
    assert a.open(a.resolve("f")).read(0, 6 * MiB) == data


def test_truncate_and_extend_a_spilled_file(limited):
    e = limited.e
    ino = e.create(SU, 1, b"t", 0o644).ino
    data = random.Random(3).randbytes(3 * MiB)
    e.write(SU, ino, 0, data)
    assert e.overlay_bytes == 0  # one write over the limit spills before it returns
    e.setattr(SU, ino, size=100_000)
    e.setattr(SU, ino, size=2 * MiB)
    e.write(SU, ino, MiB, b"mid")
    expect = data[:100_000] + bytes(MiB - 100_000) + b"mid" + bytes(MiB - 3)
    assert read_all(e, ino) == expect
    e.spill()
    assert read_all(e, ino) == expect
    root = save(e)
    assert read_all(e, ino) == expect
    a = Archive(limited.store, root)
    assert a.open(a.resolve("t")).read(0, 3 * MiB) == expect


def test_many_small_files_largest_first(tmp_path):
    sp = Spawn(tmp_path, overlay_limit=256 << 10)
    try:
        e = sp.e
        rng = random.Random(4)
        want = {}
        for i in range(60):
            name = b"s%02d" % i
            data = rng.randbytes(rng.randrange(1000, 40_000))
            e.write(SU, e.create(SU, 1, name, 0o644).ino, 0, data)
            want[name] = data
            assert e.overlay_bytes <= 256 << 10
        for name, data in want.items():
            assert read_all(e, e.lookup(SU, 1, name).ino) == data
        e = sp.reopen()
        root = save(e)
        a = Archive(sp.store, root)
        for name, data in want.items():
            assert a.open(a.resolve(name)).read(0, 50_000) == data
    finally:
        sp.close()


def test_an_open_unlinked_file_spills_and_goes_at_release(limited):
    e = limited.e
    ino = e.create(SU, 1, b"o", 0o644, open=True).ino
    e.unlink(SU, 1, b"o")
    data = random.Random(5).randbytes(3 * MiB)
    for off in range(0, len(data), 200_000):
        e.write(SU, ino, off, data[off : off + 200_000])
    assert e.overlay_bytes <= MiB
    assert read_all(e, ino) == data
    save(e)  # orphans are left out of saves and kept by the rebase
    assert read_all(e, ino) == data
    e.release(SU, ino)
    with pytest.raises(FileNotFoundError):
        e.getattr(SU, ino)
    assert page_bytes_exact(e)


def test_spilling_during_a_concurrent_save(limited):
    sp = limited
    e = sp.e
    rng = random.Random(6)
    write(e, "a", 0, rng.randbytes(600_000))  # pages at or below G
    write(e, "c", 0, rng.randbytes(300_000))
    job = SaveJob(e)
    job.snapshot()
    at_snapshot = describe(e)
    write(e, "a", 100_000, rng.randbytes(900_000))  # over the limit: "a" spills after G
    assert e.saving is not None and ino_of(e, "a") in e.saving.spilled
    job.write()
    e.setattr(SU, ino_of(e, "a"), size=300_000)  # truncating the spilled tree, after G
    write(e, "a", 400_000, b"after")
    write(e, "c", 10, b"c after")  # "c" still has pages at or below G
    latest = describe(e)
    root = job.finish()
    assert describe(e) == latest
    assert sp.respawn(root) == at_snapshot
    assert describe(sp.reopen()) == latest
    assert sp.respawn(save(sp.e)) == latest
    assert page_bytes_exact(sp.e)


def test_a_failing_store_keeps_the_data_in_the_overlay(limited):
    sp = limited
    e = sp.e
    ino = e.create(SU, 1, b"f", 0o644).ino
    real_put = sp.store.put

    def full(btype, data):
        raise OSError(errno.ENOSPC, "no space left on device")

    sp.store.put = full  # type: ignore[method-assign]
    data = random.Random(7).randbytes(2 * MiB)
    for off in range(0, len(data), 100_000):
        assert e.write(SU, ino, off, data[off : off + 100_000]) == len(data[off : off + 100_000])
    assert e.overlay_bytes > MiB  # over the limit, but nothing lost and no write failed
    assert read_all(e, ino) == data
    sp.store.put = real_put  # type: ignore[method-assign]
    e.write(SU, ino, 0, data[:10])
    assert e.overlay_bytes > MiB  # no new attempt until another quarter of the limit...
    tail = b"t" * (300_000)
    e.write(SU, ino, len(data), tail)  # ...has been written: then it spills
    assert e.overlay_bytes <= MiB
    assert read_all(e, ino) == data + tail
    del sp.store.put


def test_store_errors_during_spill_do_not_fail_writes(limited):
    sp = limited
    e = sp.e
    ino = e.create(SU, 1, b"f", 0o644).ino

    def broken():
        raise StoreError("store closed")

    sp.store.sync = broken  # type: ignore[method-assign]
    e.write(SU, ino, 0, b"x" * (2 * MiB))
    assert e.overlay_bytes == 2 * MiB  # the spill's transaction was rolled back
    del sp.store.sync
    assert read_all(e, ino) == b"x" * (2 * MiB)


def test_an_overlay_without_a_page_count_gets_one(tmp_path):
    sp = Spawn(tmp_path)
    try:
        write(sp.e, "a", 0, b"q" * 200_000)
        n = sp.e.overlay_bytes
        assert n > 0 and page_bytes_exact(sp.e)
        sp.e.checkpoint()
        with sp.e.ov.env.begin(write=True) as txn:
            txn.delete(META_PAGE_BYTES, db=sp.e.ov.meta)  # as an overlay made before the count
        assert sp.reopen().overlay_bytes == n
    finally:
        sp.close()


def test_overlay_limit_must_be_positive(tmp_path, limited):
    with pytest.raises(ValueError):
        Engine(limited.store, tmp_path / "bad", limited.root, overlay_limit=0)


SPILL_CHILD = r"""
import random, sys, time
from spawn.engine import Engine
from spawn.cred import ROOT
from store.local import LocalStore

store = LocalStore.open(sys.argv[1])
e = Engine(store, sys.argv[2], overlay_limit=1 << 20)
ino = e.lookup(ROOT, 1, b"grow").ino
rng = random.Random(9)
real_sync, spills = store.sync, [0]

def sync():
    spills[0] += 1
    if spills[0] == 3:  # the third spill: its tree is built, its transaction not committed
        print("READY", flush=True)
        time.sleep(60)
    real_sync()

store.sync = sync
i = 0
while True:
    e.write(ROOT, ino, i * 100_000, rng.randbytes(100_000))
    print("DONE", i, flush=True)
    i += 1
"""


def test_sigkill_inside_a_spill_loses_nothing(tmp_path):
    sp = Spawn(tmp_path)
    sp.e.create(SU, 1, b"grow", 0o644)
    sp.e.close()
    sp.store.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", SPILL_CHILD, str(tmp_path / "store"), str(sp.ovdir)],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
    )
    done = -1
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(b"READY"):
            break
        done = int(line.split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    rng = random.Random(9)
    # The write that triggered the spill had committed before the spill began.
    expect = b"".join(rng.randbytes(100_000) for _ in range(done + 2))
    sp.store = LocalStore.open(tmp_path / "store")
    sp.e = Engine(sp.store, sp.ovdir, overlay_limit=MiB)
    assert read_all(sp.e, sp.e.lookup(SU, 1, b"grow").ino) == expect
    assert page_bytes_exact(sp.e) and sp.e.overlay_bytes > MiB  # the spill did not happen
    sp.e.write(SU, sp.e.lookup(SU, 1, b"grow").ino, len(expect), b"more" * 100_000)
    assert sp.e.overlay_bytes <= MiB  # and happens now
    assert read_all(sp.e, sp.e.lookup(SU, 1, b"grow").ino) == expect + b"more" * 100_000
    sp.close()
