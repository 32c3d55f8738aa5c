"""Engine.read_snapshot: reads from a thread other than the owner's, without a hop to it,
only while every completed operation is committed (the overlay is clean); otherwise None
(the caller asks the owner). 9P and SFTP reads take this path (spawn.host.SpawnHost.call)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from spawn.cred import ROOT as SU
from spawn.engine import Engine
from spawn.importer import Importer
from spawn.save import save
from store.local import LocalStore


@pytest.fixture
def engine(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(300_000))
    LocalStore.create(tmp_path / "store")
    store = LocalStore.open(tmp_path / "store")
    root = Importer(store).run(src)
    store.sync()
    e = Engine(store, tmp_path / "ov", root)
    yield e
    if not e.ov.closed:
        e.close()
    store.close()


def other(fn, *args):
    """Run *fn* on another thread (as the daemon's asyncio thread would)."""
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(fn, *args).result()


def test_clean_overlay_is_read_from_another_thread(engine):
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    want = e.read(SU, ino, 1000, 200_000)
    assert other(e.read_snapshot, SU, ino, 1000, 200_000) == want
    assert other(e.read_snapshot, SU, ino, 299_990, 100) == e.read(SU, ino, 299_990, 100)
    assert other(e.read_snapshot, SU, ino, 400_000, 10) == b""  # past the end


def test_uncommitted_change_sends_the_read_to_the_owner(engine):
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    e.write(SU, ino, 70_000, b"new bytes")  # journaled, not checkpointed
    assert not e.ov.clean
    assert other(e.read_snapshot, SU, ino, 70_000, 9) is None
    e.checkpoint()
    assert e.ov.clean
    assert other(e.read_snapshot, SU, ino, 70_000, 9) == b"new bytes"
    assert other(e.read_snapshot, SU, ino, 0, 300_000) == e.read(SU, ino, 0, 300_000)


def test_operations_that_change_nothing_leave_it_clean(engine):
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    e.open(SU, ino, os.O_RDONLY)
    e.release(SU, ino)  # used to leave an empty write transaction open (dirty for 2 s)
    with pytest.raises(FileNotFoundError):
        e.unlink(SU, 1, b"missing")  # a refused change
    assert e.ov.clean and not e.ov.dirty
    assert other(e.read_snapshot, SU, ino, 0, 10) == e.read(SU, ino, 0, 10)


def test_a_checkpoint_in_progress_is_not_clean(engine):
    """The owner drops its transaction before committing it: a reader that came then must
    not read the older state (the flag turns True only after the commit)."""
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    e.write(SU, ino, 0, b"X")
    seen = []
    txn = e.ov._txn
    real_commit = txn.commit

    class Spy:
        def __getattr__(self, name):
            return getattr(txn, name)

        def commit(self):
            seen.append(other(e.read_snapshot, SU, ino, 0, 1))
            real_commit()

    e.ov._txn = Spy()
    e.checkpoint()
    assert seen == [None]
    assert other(e.read_snapshot, SU, ino, 0, 1) == b"X"


def test_new_files_orphans_and_non_files(engine):
    e = engine
    a = e.create(SU, 1, b"n", 0o644, open=True)
    e.write(SU, a.ino, 0, b"hello")
    e.checkpoint()
    assert other(e.read_snapshot, SU, a.ino, 0, 100) == b"hello"
    e.unlink(SU, 1, b"n")  # an orphan while open: still readable
    e.checkpoint()
    assert other(e.read_snapshot, SU, a.ino, 0, 100) == b"hello"
    e.release(SU, a.ino)
    e.checkpoint()
    assert other(e.read_snapshot, SU, a.ino, 0, 100) is None  # gone: the owner says ENOENT
    assert other(e.read_snapshot, SU, 1, 0, 100) is None  # a directory: EISDIR from the owner


def test_after_a_save_the_new_base_is_read(engine):
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    before = other(e.read_snapshot, SU, ino, 0, 300_000)
    e.write(SU, ino, 100_000, b"saved")
    save(e)
    e.checkpoint()
    got = other(e.read_snapshot, SU, ino, 0, 300_000)
    assert got == e.read(SU, ino, 0, 300_000)
    assert got != before and got[100_000:100_005] == b"saved"


def test_closed_engine(engine):
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    e.close()
    assert other(e.read_snapshot, SU, ino, 0, 10) is None


def test_concurrent_writer_never_shows_a_torn_or_stale_completed_write(engine):
    """The owner writes generations of a page and checkpoints now and then; a reader on
    another thread must always see a whole generation, never one older than the last
    write that completed before its read began."""
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    e.write(SU, ino, 0, bytes(4096))  # generation 0
    e.checkpoint()
    done = threading.Event()
    completed = [0]
    bad = []

    def reader():
        while not done.is_set():
            floor = completed[0]
            got = e.read_snapshot(SU, ino, 0, 4096)
            if got is None:
                continue
            gen = got[0]
            if got != bytes([gen]) * 4096 or gen < floor:
                bad.append((floor, got[:8]))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for gen in range(1, 200):
            e.write(SU, ino, 0, bytes([gen]) * 4096)
            if gen % 3 == 0:
                e.checkpoint()
            completed[0] = gen
    finally:
        done.set()
        t.join()
    assert not bad


def test_one_reader_thread_sees_base_files_change_and_go(engine):
    """One thread's reader keeps the base archive's inodes decoded: a base file that the
    spawn then truncates, removes or replaces, and a save that moves the base, must show at
    once on that same thread (the overlay's record comes first, a new base drops them)."""
    e = engine
    ino = e.lookup(SU, 1, b"big").ino
    want = e.read(SU, ino, 0, 300_000)
    with ThreadPoolExecutor(1) as one:
        def snap(*args):
            return one.submit(e.read_snapshot, SU, *args).result()
        assert snap(ino, 0, 300_000) == want  # the base inode is now cached on that thread
        e.setattr(SU, ino, size=1000)
        e.checkpoint()
        assert snap(ino, 0, 300_000) == want[:1000]
        e.write(SU, ino, 1000, b"more")
        save(e)  # a new base, which has the file at 1,004 bytes
        e.checkpoint()
        assert snap(ino, 0, 300_000) == want[:1000] + b"more"
        e.unlink(SU, 1, b"big")
        e.checkpoint()
        assert snap(ino, 0, 10) is None  # gone: the owner answers (ENOENT)
