"""Saving while clients write (spawn.save.SaveJob): snapshot, write, finish, interleaved.

Every scenario checks the same three things: the saved root, spawned afresh, shows exactly
the spawn as it was at the snapshot; the live spawn after ``finish`` shows exactly what it
showed before (the rebase changes nothing visible), also after reopening the overlay (a
daemon restart); and a further save of the live spawn, spawned afresh, shows the latest
state. Real LMDB overlays and a real LocalStore in temporary directories throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spawn.archive import Archive
from spawn.cred import ROOT as SU
from spawn.engine import Engine
from spawn.importer import Importer
from spawn.save import SaveBusy, SaveCancelled, SaveJob, save
from store.local import LocalStore

ROOT = Path(__file__).resolve().parents[2]


# -- helpers (test_spill uses them too) ------------------------------------------------------


def describe(e: Engine) -> dict[str, list]:
    """Everything visible in the spawn, by path: numbers, metadata, content digests."""
    out: dict[str, list] = {}

    def walk(ino: int, rel: bytes) -> None:
        for name, a in e.readdir(SU, ino):
            p = rel + b"/" + name if rel else name
            # (A directory's size is its entry count as of the last save: not compared.)
            size = None if stat.S_ISDIR(a.mode) else a.size
            d: list = [a.ino, a.mode, a.nlink, a.uid, a.gid, size, a.mtime_ns, a.ctime_ns]
            if stat.S_ISREG(a.mode):
                d.append(hashlib.blake2b(e.read(SU, a.ino, 0, a.size + 1)).hexdigest())
            elif stat.S_ISLNK(a.mode):
                d.append(e.readlink(SU, a.ino).hex())
            d.append([[k.hex(), e.getxattr(SU, a.ino, k).hex()] for k in e.listxattr(SU, a.ino)])
            out[p.decode("latin-1")] = d
            if stat.S_ISDIR(a.mode):
                walk(a.ino, p)

    walk(1, b"")
    return out


def listing(e: Engine) -> dict[str, int]:
    """Path -> mode of everything visible (cheap: no contents)."""
    out: dict[str, int] = {}

    def walk(ino: int, rel: str) -> None:
        for name, a in e.readdir(SU, ino):
            p = f"{rel}/{name.decode()}" if rel else name.decode()
            out[p] = a.mode
            if stat.S_ISDIR(a.mode):
                walk(a.ino, p)

    walk(1, "")
    return out


def ino_of(e: Engine, path: str) -> int:
    ino = 1
    for part in path.split("/"):
        if part:
            ino = e.lookup(SU, ino, part.encode()).ino
    return ino


def parent_and_name(e: Engine, path: str) -> tuple[int, bytes]:
    head, _, name = path.rpartition("/")
    return ino_of(e, head), name.encode()


def write(e: Engine, path: str, off: int, data: bytes) -> None:
    try:
        ino = ino_of(e, path)
    except FileNotFoundError:
        p, n = parent_and_name(e, path)
        ino = e.create(SU, p, n, 0o644).ino
    e.write(SU, ino, off, data)


def truncate(e: Engine, path: str, size: int) -> None:
    e.setattr(SU, ino_of(e, path), size=size)


def unlink(e: Engine, path: str) -> None:
    e.unlink(SU, *parent_and_name(e, path))


def rename(e: Engine, a: str, b: str) -> None:
    e.rename(SU, *parent_and_name(e, a), *parent_and_name(e, b))


def mkdir(e: Engine, path: str) -> None:
    e.mkdir(SU, *parent_and_name(e, path), 0o755)


def rmdir(e: Engine, path: str) -> None:
    e.rmdir(SU, *parent_and_name(e, path))


def page_bytes_exact(e: Engine) -> bool:
    return e.overlay_bytes == e.ov.count_page_bytes(e.ov.txn())


def make_source(d: Path) -> Path:
    """The base tree: files of a few sizes, a directory tree, a symlink, a hard link."""
    rng = random.Random(7)
    (d / "d" / "sub").mkdir(parents=True)
    (d / "a").write_bytes(rng.randbytes(300_000))
    (d / "big").write_bytes(rng.randbytes(2_000_000))
    (d / "d" / "b").write_bytes(b"base file")
    (d / "d" / "sub" / "c").write_bytes(rng.randbytes(50_000))
    os.symlink("a", d / "link")
    os.link(d / "d" / "b", d / "hard")
    return d


class Spawn:
    """A spawn of the base tree over a real LocalStore, and fresh spawns of saved roots."""

    def __init__(self, tmp: Path, overlay_limit: int | None = None) -> None:
        self.tmp = tmp
        self.limit = overlay_limit
        LocalStore.create(tmp / "store")
        self.store = LocalStore.open(tmp / "store")
        (tmp / "src").mkdir()
        self.root = Importer(self.store).run(make_source(tmp / "src"))
        self.store.sync()
        self.ovdir = tmp / "overlay"
        self.e = Engine(self.store, self.ovdir, self.root, overlay_limit=overlay_limit)
        self.n = 0

    def respawn(self, root: bytes) -> dict[str, list]:
        """What a fresh spawn of *root* shows."""
        self.n += 1
        f = Engine(self.store, self.tmp / f"respawn{self.n}", root)
        try:
            return describe(f)
        finally:
            f.close()

    def reopen(self) -> Engine:
        self.e.close()
        self.e = Engine(self.store, self.ovdir, overlay_limit=self.limit)
        return self.e

    def close(self) -> None:
        self.e.close()
        self.store.close()


@pytest.fixture
def sp(tmp_path):
    s = Spawn(tmp_path)
    yield s
    s.close()


Ops = Callable[[Engine], object]


def interleave(sp: Spawn, after_snapshot: Ops, after_write: Ops,
               after_finish: Ops | None = None) -> bytes:
    """Snapshot, ops, write, ops, finish; then every check of the module docstring."""
    job = SaveJob(sp.e, name="t", user="u")
    job.snapshot()
    at_snapshot = describe(sp.e)
    after_snapshot(sp.e)
    root = job.write()
    assert sp.e.base != root  # written, not yet the base
    after_write(sp.e)
    latest = describe(sp.e)
    assert job.finish() == root
    assert sp.e.base == root
    assert describe(sp.e) == latest, "the rebase changed what the spawn shows"
    assert page_bytes_exact(sp.e)
    assert sp.respawn(root) == at_snapshot, "the saved root is not the snapshot"
    assert Archive(sp.store, root).root.prev == sp.root
    if after_finish is not None:
        after_finish(sp.e)
        latest = describe(sp.e)
    assert describe(sp.reopen()) == latest, "a restart after the rebase changed the spawn"
    again = save(sp.e)
    assert describe(sp.e) == latest
    assert sp.respawn(again) == latest
    return root


# -- the rebase rules, one by one ------------------------------------------------------------


def test_writes_after_snapshot_keep_theirs_and_drop_older_pages(sp):
    write(sp.e, "a", 1000, b"before" * 5000)  # pages at or below G
    write(sp.e, "new", 0, b"n" * 200_000)

    def during(e):
        write(e, "a", 1500, b"during")  # the same page again, above G
        write(e, "a", 250_000, b"far")  # a page of the base content
        write(e, "new", 199_990, b"tail-grows-the-file")

    def later(e):
        write(e, "big", 10, b"x")  # a base file with no record at G
        write(e, "a", 1000, b"later")

    interleave(sp, during, later)


def test_truncation_after_snapshot_stays_cut_over_the_new_base(sp):
    write(sp.e, "a", 0, b"A" * 100_000)  # a record and pages at G

    def during(e):
        truncate(e, "a", 10_000)
        truncate(e, "a", 200_000)  # re-extended: 10_000.. reads zeros, not the snapshot's

    def later(e):
        write(e, "a", 150_000, b"tail")
        truncate(e, "a", 120_000)  # cut again, above the earlier cut
        truncate(e, "big", 5_000)  # a base file without a record at G
        truncate(e, "big", 70_000)

    interleave(sp, during, later)
    a = ino_of(sp.e, "a")
    assert sp.e.read(SU, a, 9_990, 20) == b"A" * 10 + bytes(10)
    assert sp.e.read(SU, a, 100_000, 20_000) == bytes(20_000)


def test_truncation_to_less_than_before_snapshot_then_write_past_it(sp):
    truncate(sp.e, "a", 50_000)
    write(sp.e, "a", 40_000, b"B" * 30_000)  # size 70_000 at G, base_limit 50_000

    def during(e):
        truncate(e, "a", 45_000)
        write(e, "a", 100_000, b"C")

    interleave(sp, during, lambda e: None)
    assert sp.e.read(SU, ino_of(sp.e, "a"), 44_990, 20) == b"B" * 10 + bytes(10)


def test_names_made_before_and_removed_after_the_snapshot_stay_gone(sp):
    write(sp.e, "x", 0, b"x")
    write(sp.e, "y", 0, b"y")
    write(sp.e, "z", 0, b"z")
    mkdir(sp.e, "nd")
    write(sp.e, "nd/inner", 0, b"i")

    def during(e):
        unlink(e, "x")  # neither in the old base: only a whiteout hides it over the new one
        rename(e, "y", "y2")
        unlink(e, "nd/inner")
        rmdir(e, "nd")

    def later(e):
        rename(e, "z", "d/z")
        write(e, "y", 0, b"a new y")  # the name again, another inode
        unlink(e, "d/b")  # a base name, with a hard link left
        unlink(e, "link")

    interleave(sp, during, later)
    names = describe(sp.e)
    assert "x" not in names and "nd" not in names and "z" not in names
    assert "d/z" in names and "y2" in names and "hard" in names


def test_directories_changed_on_both_sides_of_the_snapshot(sp):
    mkdir(sp.e, "n1")
    write(sp.e, "n1/f", 0, b"f")
    mkdir(sp.e, "d/sub/deep")

    def during(e):
        rename(e, "n1", "d/n1")
        mkdir(e, "d/n1/inner")
        write(e, "d/n1/inner/g", 0, b"g" * 70_000)
        rename(e, "d/sub/c", "d/n1/c")

    def later(e):
        mkdir(e, "late")
        rename(e, "d/n1/f", "late/f")
        rmdir(e, "d/sub/deep")
        rename(e, "d/sub", "late/sub")

    interleave(sp, during, later)


def test_rename_over_and_hard_links_across_the_snapshot(sp):
    write(sp.e, "p", 0, b"p" * 1000)
    write(sp.e, "q", 0, b"q" * 1000)
    e = sp.e
    e.link(SU, ino_of(e, "p"), 1, b"p2")

    def during(e):
        rename(e, "p", "q")  # q's inode goes
        e.link(SU, ino_of(e, "a"), ino_of(e, "d"), b"a-link")

    def later(e):
        unlink(e, "q")
        write(e, "p2", 500, b"still here")  # p's inode, through its other name
        unlink(e, "a")

    interleave(sp, during, later)


def test_metadata_changes_after_the_snapshot(sp):
    write(sp.e, "m", 0, b"m")
    e = sp.e
    e.setxattr(SU, ino_of(e, "m"), b"user.k", b"v1")

    def during(e):
        i = ino_of(e, "m")
        e.setattr(SU, i, mode=0o600, uid=7, gid=8, mtime_ns=123456789)
        e.setxattr(SU, i, b"user.k", b"v2")
        e.setxattr(SU, ino_of(e, "d"), b"user.dir", b"yes")

    def later(e):
        e.setattr(SU, ino_of(e, "d/sub"), mode=0o700)
        e.symlink(SU, 1, b"sl", b"somewhere")

    interleave(sp, during, later)


def test_orphans_across_the_snapshot(sp):
    e = sp.e
    write(e, "o1", 0, b"1" * 100_000)
    o1 = ino_of(e, "o1")
    e.open(SU, o1)
    unlink(e, "o1")  # an orphan at G: the save leaves it out, the spawn keeps it
    write(e, "o2", 0, b"2" * 100_000)
    o2 = ino_of(e, "o2")

    def during(e):
        e.write(SU, o1, 0, b"written-after-G")
        e.open(SU, o2)
        unlink(e, "o2")  # an orphan made after G
        e.write(SU, o2, 5, b"X")

    interleave(sp, during, lambda e: None)
    # interleave reopened the engine: opens do not survive a restart, orphans are purged.
    with pytest.raises(FileNotFoundError):
        sp.e.getattr(SU, o1)


def test_orphans_readable_until_released_after_finish(sp):
    e = sp.e
    write(e, "o1", 0, b"1" * 100_000)
    o1 = ino_of(e, "o1")
    e.open(SU, o1)
    unlink(e, "o1")
    job = SaveJob(e)
    job.snapshot()
    e.write(SU, o1, 0, b"ABC")
    write(e, "o2", 0, b"2" * 70_000)
    o2 = ino_of(e, "o2")
    e.open(SU, o2)
    unlink(e, "o2")
    job.write()
    e.write(SU, o2, 65_536, b"Z")
    job.finish()
    assert e.read(SU, o1, 0, 5) == b"ABC11"
    assert e.read(SU, o1, 99_998, 5) == b"11"
    assert e.read(SU, o2, 65_530, 10) == b"222222Z222"
    e.release(SU, o1)
    e.release(SU, o2)
    with pytest.raises(FileNotFoundError):
        e.getattr(SU, o2)
    assert page_bytes_exact(e)


def test_inode_numbers_never_go_back(sp):
    e = sp.e
    made = {e.create(SU, 1, b"n%d" % i, 0o644).ino for i in range(3)}
    job = SaveJob(e)
    job.snapshot()
    made |= {e.create(SU, 1, b"m%d" % i, 0o644).ino for i in range(3)}
    root = job.write()
    made.add(e.create(SU, 1, b"w", 0o644).ino)
    job.finish()
    high = Archive(sp.store, root).root.ino_high
    assert high < max(made)  # the root's mark is the snapshot's; the spawn went on
    after = e.create(SU, 1, b"after", 0o644).ino
    assert after > max(made)
    after2 = sp.reopen().create(SU, 1, b"after2", 0o644).ino
    assert after2 > after


def test_the_snapshot_holds_while_the_owner_churns_the_overlay(sp):
    """The snapshot's read transaction is opened on the owner thread, which then opens and
    commits many more: LMDB must not reuse the pages the snapshot still reads (py-lmdb opens
    environments with MDB_NOTLS, so each transaction has its own reader slot)."""
    e = sp.e
    rng = random.Random(8)
    write(e, "churn", 0, rng.randbytes(2_000_000))
    for i in range(20):
        write(e, f"gone{i}", 0, rng.randbytes(30_000))

    def churn(e):
        for _ in range(5):
            write(e, "churn", 0, rng.randbytes(2_000_000))
            describe(e)  # read transactions on the same thread, between the commits

    def during(e):
        churn(e)
        for i in range(20):
            unlink(e, f"gone{i}")

    interleave(sp, during, churn)


def test_untouched_spawn_saves_only_a_root(sp):
    before = sp.store.statistics().blocks
    job = SaveJob(sp.e)
    job.snapshot()
    job.write()
    job.finish()
    assert sp.store.statistics().blocks - before == 1


# -- one save at a time, aborts, closing ----------------------------------------------------


def test_a_second_save_is_refused_while_one_runs(sp):
    job = SaveJob(sp.e)
    job.snapshot()
    with pytest.raises(SaveBusy):
        SaveJob(sp.e).snapshot()
    with pytest.raises(SaveBusy):
        save(sp.e)
    job.write()
    with pytest.raises(SaveBusy):
        save(sp.e)
    job.finish()
    save(sp.e)  # and then it is fine again


def test_abort_leaves_the_spawn_as_it_was(sp):
    e = sp.e
    write(e, "x", 0, b"x" * 1000)
    job = SaveJob(e)
    job.snapshot()
    unlink(e, "x")  # leaves a whiteout for a name the base never had: harmless
    write(e, "a", 0, b"after")
    job.write()
    truncate(e, "a", 3)
    job.abort()
    latest = describe(e)
    assert e.saving is None and e.base == sp.root
    with pytest.raises(RuntimeError):
        job.finish()
    assert describe(sp.reopen()) == latest
    root = save(sp.e)
    assert sp.respawn(root) == latest


def test_abort_stops_a_write_running_in_another_thread(sp):
    e = sp.e
    write(e, "big", 0, os.urandom(1_500_000))
    started = threading.Event()
    real_put = sp.store.put

    def slow_put(btype, data):
        started.set()
        time.sleep(0.002)
        return real_put(btype, data)

    sp.store.put = slow_put  # type: ignore[method-assign]
    job = SaveJob(e)
    job.snapshot()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            job.write()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(10)
    job.abort()  # waits for the writer to notice
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SaveCancelled)
    del sp.store.put
    assert e.saving is None
    save(e)  # a new save works


def test_close_during_a_save_aborts_it(sp):
    write(sp.e, "a", 0, b"z")
    job = SaveJob(sp.e)
    job.snapshot()
    sp.reopen()  # close() aborts the save (its read transaction goes with it)
    assert job.state == "aborted"
    with pytest.raises(SaveCancelled):
        job.write()
    assert sp.e.read(SU, ino_of(sp.e, "a"), 0, 1) == b"z"


# -- random interleavings --------------------------------------------------------------------


def random_op(rng: random.Random, e: Engine) -> None:
    """One random operation on whatever is there; errors (EEXIST, ENOTEMPTY...) are fine."""
    tree = listing(e)
    files = [p for p, m in tree.items() if stat.S_ISREG(m)]
    dirs = [""] + [p for p, m in tree.items() if stat.S_ISDIR(m)]
    anyp = list(tree)
    name = rng.choice(["f1", "f2", "f3", "g", "h"])
    where = rng.choice(dirs)
    new = f"{where}/{name}" if where else name
    kind = rng.randrange(12)
    try:
        if kind <= 3 or not files:
            target = rng.choice(files) if files and kind < 3 else new
            size = rng.choice([10, 5000, 70_000, 140_000])
            write(e, target, rng.randrange(0, 300_000), rng.randbytes(size))
        elif kind == 4:
            truncate(e, rng.choice(files), rng.randrange(0, 400_000))
        elif kind == 5:
            unlink(e, rng.choice(files))
        elif kind == 6:
            rename(e, rng.choice(anyp), new)
        elif kind == 7:
            mkdir(e, new)
        elif kind == 8:
            rmdir(e, rng.choice(dirs[1:] or ["nothing"]))
        elif kind == 9:
            e.link(SU, ino_of(e, rng.choice(files)), ino_of(e, where), name.encode())
        elif kind == 10:
            e.setattr(SU, ino_of(e, rng.choice(anyp)), mode=rng.choice([0o600, 0o755]))
        else:
            e.spill(0)
    except OSError:
        pass


@pytest.mark.parametrize("seed", range(16))
def test_random_interleavings(tmp_path, seed):
    rng = random.Random(seed)
    sp = Spawn(tmp_path, overlay_limit=(256 << 10) if seed % 2 else None)
    try:
        for _ in range(8):
            random_op(rng, sp.e)
        interleave(
            sp,
            lambda e: [random_op(rng, e) for _ in range(8)],
            lambda e: [random_op(rng, e) for _ in range(8)],
        )
        assert page_bytes_exact(sp.e)
    finally:
        sp.close()


# -- threads: the owner serves writers while another thread saves -------------------------------


def test_threaded_save_with_a_writer_hammering_the_owner(sp):
    e = sp.e
    ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="owner")
    states: list[dict] = []
    done = [0]
    at_snapshot = [0]

    def owner(fn):
        def run():
            result = fn()
            if not states:  # the snapshot: the state the saved root must show
                states.append(describe(e))
                at_snapshot[0] = done[0]
            return result

        return ex.submit(run).result()

    write(e, "big", 0, os.urandom(1_000_000))  # something for the save to write
    e.checkpoint()  # the owner thread takes over from here (spawn.overlay: one owner)
    real_put = sp.store.put
    saver = threading.current_thread()

    def put(btype, data):
        # The save's first block waits for a few operations after the snapshot, so that
        # they certainly come between the snapshot and the rebase.
        if threading.current_thread() is saver:
            deadline = time.monotonic() + 10
            while done[0] < at_snapshot[0] + 5 and time.monotonic() < deadline:
                time.sleep(0.001)
        return real_put(btype, data)

    sp.store.put = put  # type: ignore[method-assign]
    stop = threading.Event()
    rng = random.Random(5)

    def writer() -> None:
        while not stop.is_set():
            op_rng = random.Random(rng.random())
            ex.submit(random_op, op_rng, e).result()
            done[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.05)
        root = save(e, name="threaded", owner=owner)
        time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    del sp.store.put
    latest = ex.submit(describe, e).result()
    ex.submit(e.checkpoint).result()  # back to this thread
    ex.shutdown()
    assert done[0] >= at_snapshot[0] + 5
    assert sp.respawn(root) == states[0]
    assert describe(sp.reopen()) == latest
    assert sp.respawn(save(sp.e)) == latest


def test_writers_progress_while_blocks_are_written(sp):
    """The save's long part does not hold the owner thread: operations complete, quickly,
    all the while the save thread is writing blocks (made slow here on purpose)."""
    e = sp.e
    write(e, "big", 0, os.urandom(1_500_000))
    e.checkpoint()  # the owner thread takes over from here (spawn.overlay: one owner)
    ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="owner")
    saver: dict[str, object] = {}
    puts: list[float] = []
    real_put = sp.store.put

    def slow_put(btype, data):
        if threading.current_thread() is saver.get("thread"):
            puts.append(time.monotonic())
            time.sleep(0.004)
        return real_put(btype, data)

    sp.store.put = slow_put  # type: ignore[method-assign]

    def run_save() -> None:
        saver["thread"] = threading.current_thread()
        saver["root"] = save(e, owner=lambda fn: ex.submit(fn).result())

    a_ino = ex.submit(ino_of, e, "a").result()  # on the owner: only it may use its transaction
    t = threading.Thread(target=run_save)
    t.start()
    ops: list[tuple[float, float]] = []
    i = 0
    while t.is_alive():
        t0 = time.monotonic()
        ex.submit(e.write, SU, a_ino, (i * 4096) % 300_000, b"w" * 4096).result()
        ops.append((t0, time.monotonic()))
        i += 1
    t.join()
    ex.submit(e.checkpoint).result()  # back to this thread
    ex.shutdown()
    del sp.store.put
    assert len(puts) > 50, "the save should have written its blocks on its own thread"
    first, last = puts[0], puts[-1]
    during = [(a, b) for a, b in ops if a >= first and b <= last]
    assert len(during) >= 10, f"only {len(during)} writes completed while the save wrote"
    worst = max(b - a for a, b in during)
    print(f"{len(during)} writes during {last - first:.3f}s of block writing, worst {worst:.4f}s")
    assert worst < (last - first) / 2, f"a write waited {worst:.3f}s of {last - first:.3f}s"


# -- crash safety: SIGKILL in the write phase, inside the rebase, and after it ------------------

CHILD = r"""
import json, sys, threading, time
import spawn.save as S
from spawn.engine import Engine
from spawn.cred import ROOT as SU
from store.local import LocalStore
from tests.spawn.test_save_concurrent import after_snapshot_ops, after_write_ops, describe

store_dir, ov, mode = sys.argv[1:4]
store = LocalStore.open(store_dir)
e = Engine(store, ov)

def emit(tag, obj=None):
    sys.stdout.write(tag + ("" if obj is None else " " + json.dumps(obj)) + "\n")
    sys.stdout.flush()

def hang(*a, **k):
    emit("READY")
    time.sleep(60)

job = S.SaveJob(e, name="crash")
job.snapshot()
emit("SNAP", describe(e))
after_snapshot_ops(e)
if mode == "write":
    # The write phase runs in another thread and stops after a few blocks; meanwhile the
    # owner (this thread) goes on changing the spawn, then the process is killed.
    real_put, n, busy = store.put, [0], threading.Event()
    def put(t, d):
        n[0] += 1
        if n[0] == 10:
            busy.set()
            time.sleep(60)
        return real_put(t, d)
    store.put = put
    threading.Thread(target=job.write, daemon=True).start()
    busy.wait()
    after_write_ops(e)
    emit("STATE", describe(e))
    hang()
root = job.write()
emit("ROOT", bytes(root).hex())
after_write_ops(e)
emit("STATE", describe(e))
if mode == "rebase":
    S.encode_oinode = hang  # inside the rebase transaction, before it commits
else:
    S.Archive = hang  # the rebase has committed; the engine has not yet moved on
job.finish()
"""


def after_snapshot_ops(e: Engine) -> None:
    write(e, "a", 0, b"S" * 70_000)
    unlink(e, "made")
    truncate(e, "big", 100_000)
    mkdir(e, "ndir")


def after_write_ops(e: Engine) -> None:
    write(e, "ndir/f", 0, b"W" * 1000)
    write(e, "a", 200_000, b"late")
    rename(e, "d/b", "d/b2")
    truncate(e, "big", 50_000)
    e.fsync(SU)


@pytest.mark.parametrize("mode", ["write", "rebase", "committed"])
def test_sigkill_during_save_leaves_a_consistent_spawn(tmp_path, mode):
    sp = Spawn(tmp_path)
    write(sp.e, "a", 100, os.urandom(500_000))
    write(sp.e, "made", 0, b"m" * 10)
    write(sp.e, "big", 1_000_000, os.urandom(600_000))
    sp.e.close()
    sp.store.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "store"), str(sp.ovdir), mode],
        stdout=subprocess.PIPE, env=env, cwd=ROOT,
    )
    lines: dict[str, str] = {}
    assert proc.stdout is not None
    for raw in proc.stdout:
        tag, _, rest = raw.decode().rstrip("\n").partition(" ")
        lines[tag] = rest
        if tag == "READY":
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"child ended early: {lines}"
    snap, state = json.loads(lines["SNAP"]), json.loads(lines["STATE"])
    sp.store = LocalStore.open(tmp_path / "store")
    sp.e = Engine(sp.store, sp.ovdir)
    if mode == "committed":
        root = bytes.fromhex(json.loads(lines["ROOT"]))
        assert sp.e.base == root  # the new base, with every change made after G
        assert sp.respawn(root) == snap
    else:
        assert sp.e.base == sp.root  # the old base, with every committed change
    assert describe(sp.e) == state
    assert page_bytes_exact(sp.e)
    again = save(sp.e)
    assert sp.respawn(again) == state
    assert sp.store.check().ok
    sp.close()
