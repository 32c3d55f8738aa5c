"""Save writes what changed: spliced hash trees, correct bytes around every kind of change.

(Saving while clients write is tested in test_save_concurrent.py, spilling in test_spill.py.)
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from spawn.archive import Archive
from spawn.cred import ROOT
from spawn.engine import Engine
from spawn.importer import Importer
from spawn.save import save
from store.memory import MemoryStore


def test_splice_keeps_untouched_leaves(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    base = bytearray(os.urandom(3_000_000))
    (src / "big").write_bytes(base)
    store = MemoryStore()
    root = Importer(store).run(src)
    e = Engine(store, tmp_path / "ov", root)
    ino = e.lookup(ROOT, 1, b"big").ino
    model = bytearray(base)
    for off, data in ((1_000_000, b"A" * 5000), (2_999_990, b"B" * 30), (10, b"C")):
        e.write(ROOT, ino, off, data)
        end = off + len(data)
        if end > len(model):
            model.extend(bytes(end - len(model)))
        model[off:end] = data
    before = store.statistics()
    new = save(e, name="t")
    added = store.statistics().logical_bytes - before.logical_bytes
    a = Archive(store, new)
    assert a.open(a.resolve("big")).read(0, 4_000_000) == bytes(model)
    assert added < 400_000  # three small changes: a few leaves and pointers, not 3 MB


def test_truncate_then_extend_reads_zeros_after_save(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(500_000))
    store = MemoryStore()
    e = Engine(store, tmp_path / "ov", Importer(store).run(src))
    ino = e.lookup(ROOT, 1, b"f").ino
    head = e.read(ROOT, ino, 0, 100_000)
    e.setattr(ROOT, ino, size=100_000)
    e.setattr(ROOT, ino, size=300_000)
    e.write(ROOT, ino, 250_000, b"tail")
    expect = head + bytes(150_000) + b"tail" + bytes(300_000 - 250_004)
    assert e.read(ROOT, ino, 0, 400_000) == expect
    new = save(e)
    assert e.read(ROOT, ino, 0, 400_000) == expect  # the same after the rebase
    a = Archive(store, new)
    assert a.open(a.resolve("f")).read(0, 400_000) == expect


def test_save_of_unchanged_spawn_reuses_everything(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_bytes(os.urandom(100_000))
    store = MemoryStore()
    root = Importer(store).run(src)
    e = Engine(store, tmp_path / "ov", root)
    before = store.statistics().blocks
    new = save(e, name="same", time_ns=123)
    assert store.statistics().blocks - before == 1  # only the new root block
    assert Archive(store, new).root.inode_table == Archive(store, root).root.inode_table


def test_owner_runs_the_short_steps_and_the_caller_writes_the_blocks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(200_000))
    store = MemoryStore()
    e = Engine(store, tmp_path / "ov", Importer(store).run(src))
    e.write(ROOT, e.lookup(ROOT, 1, b"f").ino, 0, os.urandom(150_000))
    e.checkpoint()  # the owner thread takes over from here (spawn.overlay: one owner)
    ex = ThreadPoolExecutor(max_workers=1)
    owner_thread = ex.submit(threading.current_thread).result()
    on_owner: list[str] = []
    putters: set[threading.Thread] = set()
    real_put = store.put

    def put(btype, data):
        putters.add(threading.current_thread())
        return real_put(btype, data)

    store.put = put  # type: ignore[method-assign]

    def owner(fn):
        def run():
            on_owner.append(fn.__name__)
            return fn()

        return ex.submit(run).result()

    root = save(e, name="o", owner=owner)
    ex.submit(e.checkpoint).result()  # back to this thread
    ex.shutdown()
    assert on_owner == ["snapshot", "finish"]
    assert putters == {threading.current_thread()} and owner_thread not in putters
    assert e.base == root and e.saving is None


def test_sparse_extension_is_saved_as_a_hole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"head")
    store = MemoryStore()
    e = Engine(store, tmp_path / "ov", Importer(store).run(src))
    ino = e.lookup(ROOT, 1, b"f").ino
    e.setattr(ROOT, ino, size=1 << 30)  # a GiB of zeros nobody wrote
    e.write(ROOT, ino, 512 << 20, b"middle")
    before = store.statistics().logical_bytes
    new = save(e)
    assert store.statistics().logical_bytes - before < 200_000  # no GiB fed to the chunker
    r = Archive(store, new).open(Archive(store, new).resolve("f"))
    assert r.size == 1 << 30
    assert r.read(0, 8) == b"head" + bytes(4)
    assert r.read((512 << 20) - 2, 10) == bytes(2) + b"middle" + bytes(2)
