"""The decoder process (store.decoder) behind the decoded-content cache: a real process over
a real Unix socket, reading a real store on disk read-only. What it decodes ahead equals the
tree; what it cannot decode (a block it cannot see yet, a corrupt one, itself killed) the
cache decodes itself, so readers get the right bytes or the ordinary error; dropped contents'
memory files are let go in the process too; closing ends it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import store.decoder as decoder_mod
from store.decoder import Decoder
from store.errors import CorruptBlock
from store.hashtree import TreeReader, write_bytes
from store.local import LocalStore
from store.plaincache import EXTENT, PlainCache
from tests.store.trees import content, store_with_a_bad_leaf

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(store: LocalStore) -> Iterator[tuple[Decoder, PlainCache]]:
    """A decoded-content cache of 64 MiB whose decodes ahead go to a decoder process."""
    d = Decoder(store, store.path)
    pc = PlainCache(64 * MIB, decoder=d)
    yield d, pc
    pc.close()
    assert d._proc is None or d._proc.poll() is not None  # closing ended the process


def _read_all(pc: PlainCache, r: TreeReader, size: int, n: int = 65512) -> bytes:
    out = bytearray()
    off = 0
    while off < size:
        got = pc.range(r, off, n)
        assert got is not None
        out += got.read()
        off += n
    return bytes(out)


def _settle(pc: PlainCache, r: TreeReader) -> None:
    c = pc._entries.get(bytes(r.root))
    deadline = time.monotonic() + 10
    while c is not None and c.ahead is not None and time.monotonic() < deadline:
        time.sleep(0.01)


def _memfds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "grid-content" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                n += 1
        except OSError:
            pass
    return n


def _on_disk(store: LocalStore, *datas: bytes) -> list[TreeReader]:
    """Readers of *datas* written into *store* and synced, so that a process opening the
    store read-only sees them."""
    refs = [write_bytes(store, x) for x in datas]
    store.sync()
    return [TreeReader(store, ref.score) for ref in refs]


def _removed_segments(pid: int) -> int:
    """Segment files process *pid* holds open that were removed."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        n += target.endswith(".seg (deleted)")
    return n


def test_the_process_decodes_ahead_and_the_bytes_are_the_tree(
        store: LocalStore, cache: tuple[Decoder, PlainCache]) -> None:
    data = content(1, 8 * MIB + 999)
    (r,) = _on_disk(store, data)
    d, pc = cache
    assert _read_all(pc, r, len(data)) == data
    _settle(pc, r)
    assert d.running and d.decoded > 0  # the process did part of the work
    assert pc.ahead_fills > 0
    assert set(pc._entries[bytes(r.root)].have) == {1}
    assert pc.held == len(data)
    again = pc.range(r, 5 * MIB + 3, 2 * MIB)  # and what it wrote reads back whole
    assert again is not None and again.read() == data[5 * MIB + 3:7 * MIB + 3]


def test_a_block_the_process_cannot_see_is_decoded_here(
        store: LocalStore, cache: tuple[Decoder, PlainCache]) -> None:
    first = content(2, 3 * MIB)
    (r1,) = _on_disk(store, first)
    d, pc = cache
    assert _read_all(pc, r1, len(first)) == first
    _settle(pc, r1)
    assert d.running and d.decoded > 0  # the process is up, the store open in it
    later = content(3, 4 * MIB)
    ref2 = write_bytes(store, later)  # not synced: in this process's store only
    r2 = TreeReader(store, ref2.score)
    assert _read_all(pc, r2, len(later)) == later
    _settle(pc, r2)
    assert pc._entries[bytes(r2.root)].by_process is False  # asked once, then not again
    assert set(pc._entries[bytes(r2.root)].have) == {1}


def test_a_corrupt_leaf_is_the_readers_error(tmp_path: Path) -> None:
    data = os.urandom(4 * MIB)
    store, root = store_with_a_bad_leaf(tmp_path / "s", data, 2 * MIB + 8192)  # decoded ahead
    d = Decoder(store, store.path)
    pc = PlainCache(64 * MIB, decoder=d)
    try:
        r = TreeReader(store, root)
        off = 0
        with pytest.raises(CorruptBlock):
            while off < len(data):
                got = pc.range(r, off, EXTENT)
                assert got is not None and got.read() == data[off:off + EXTENT]
                off += EXTENT
        assert MIB < off <= 2 * MIB + 8192
        _settle(pc, r)
        with pytest.raises(CorruptBlock):  # nothing of it was marked present
            pc.range(r, 2 * MIB + 8192, 100)
        assert pc.read(r, 3 * MIB, 100) == data[3 * MIB:3 * MIB + 100]
    finally:
        pc.close()
        store.close()


def test_a_killed_process_leaves_the_reads_right_and_is_started_again(
        store: LocalStore, cache: tuple[Decoder, PlainCache], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_mod, "RESTART_AFTER", 0.3)
    datas = [content(10 + i, 4 * MIB) for i in range(3)]
    r0, r1, r2 = _on_disk(store, *datas)
    d, pc = cache
    assert _read_all(pc, r0, 2 * MIB) == datas[0][:2 * MIB + 65512 - (2 * MIB) % 65512]
    assert d._proc is not None
    old = d._proc
    os.kill(old.pid, signal.SIGKILL)  # mid-way through the reader's file
    got = bytearray(datas[0][:0])
    off = 0
    while off < len(datas[0]):
        got += pc.read(r0, off, 65512)
        off += 65512
    assert bytes(got) == datas[0]
    old.wait(10)
    deadline = time.monotonic() + 10
    while d.running and time.monotonic() < deadline:  # the reply thread saw it end
        time.sleep(0.01)
    assert not d.running
    assert _read_all(pc, r1, len(datas[1])) == datas[1]  # decoded by a thread meanwhile
    time.sleep(0.4)
    decoded = d.decoded
    assert _read_all(pc, r2, len(datas[2])) == datas[2]
    _settle(pc, r2)
    assert d.running and d._proc is not old and d.decoded > decoded  # a new process


def test_dropped_contents_are_let_go_by_the_process(store: LocalStore) -> None:
    datas = [content(20 + i, 3 * MIB) for i in range(4)]
    readers = _on_disk(store, *datas)
    d = Decoder(store, store.path)
    pc = PlainCache(7 * MIB, decoder=d)  # two contents fit, not three
    try:
        for r, x in zip(readers, datas, strict=True):
            assert _read_all(pc, r, len(x)) == x
            _settle(pc, r)
        assert d._proc is not None
        pid = d._proc.pid
        deadline = time.monotonic() + 10
        while _memfds(pid) > len(pc) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(pc) == 2 and _memfds(pid) <= 2  # the dropped ones' memory files closed
        pc.clear()
        deadline = time.monotonic() + 10
        while _memfds(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _memfds(pid) == 0
    finally:
        pc.close()
    assert d._proc.poll() is not None  # closing ended the process


def test_the_process_refuses_a_wrong_command_line() -> None:
    p = subprocess.run([sys.executable, "-m", "store.decoder"], capture_output=True, text=True,
                       cwd=ROOT, check=False)
    assert p.returncode == 2 and "usage" in p.stderr


def test_started_beforehand_once_and_not_after_close(store: LocalStore) -> None:
    d = Decoder(store, store.path)
    assert d.start() and d.running
    proc = d._proc
    assert d.start() and d._proc is proc  # already up: the same process
    d.close()
    assert proc is not None and proc.poll() is not None
    assert not d.start()  # closed: nothing more starts
    assert d.submit(1, 0, 1, bytes(32), 0, 1, lambda ok: None) is None


def test_a_stopped_process_holds_no_reader_up_and_is_killed(
        store: LocalStore, cache: tuple[Decoder, PlainCache], monkeypatch: pytest.MonkeyPatch) -> None:
    import store.plaincache as plaincache_mod

    monkeypatch.setattr(plaincache_mod, "AHEAD_WAIT", 0.3)
    data = content(30, 6 * MIB)
    (r,) = _on_disk(store, data)
    d, pc = cache
    assert _read_all(pc, r, 2 * MIB) == data[:2 * MIB + 65512 - (2 * MIB) % 65512]
    stopped = d._proc
    assert stopped is not None
    os.kill(stopped.pid, signal.SIGSTOP)  # alive, holding its requests, answering nothing
    try:
        t0 = time.monotonic()
        got = bytearray()
        off = 0
        while off < len(data):
            got += pc.read(r, off, 65512)
            off += 65512
        assert bytes(got) == data
        assert time.monotonic() - t0 < 5  # one wait of AHEAD_WAIT, then decoded here
        assert pc._entries[bytes(r.root)].by_process is False
        stopped.wait(10)  # and the process that answered nothing was killed
        assert stopped.returncode == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped.pid, signal.SIGCONT)
    _settle(pc, r)
    assert pc.read(r, 3 * MIB, MIB) == data[3 * MIB:4 * MIB]
    assert set(pc._entries[bytes(r.root)].have) == {1}


def test_a_prune_under_the_process_is_no_damage_to_it(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Segments the process has open are compacted away by a prune in the daemon's store:
    the process reads what is left right (after a fresh look) and logs no damage."""
    from store.prune import prune

    LocalStore.create(tmp_path / "s")
    (tmp_path / "s" / "segment_size").write_text(str(1 << 20))  # many small segments
    store = LocalStore.open(tmp_path / "s")
    try:
        gone, kept = content(40, 4 * MIB), os.urandom(4 * MIB)
        r, r2 = _on_disk(store, gone, kept)
        d = Decoder(store, store.path)
        pc = PlainCache(64 * MIB, decoder=d)
        try:
            assert _read_all(pc, r, len(gone)) == gone  # the process opens their segments
            _settle(pc, r)
            pc.clear()
            report = prune(store, [r2.root], max_unused=0)
            assert report.victims and report.copied_records > 0, report.as_dict()
            decoded = d.decoded
            assert _read_all(pc, r2, len(kept)) == kept
            _settle(pc, r2)
            assert d.decoded > decoded  # the process went on decoding after the prune
            assert d._proc is not None
            pid = d._proc.pid
            assert _removed_segments(pid) == 0  # it let go of the removed ones (disk space)
            _settle(pc, r2)
            pc.clear()
            prune(store, [], max_unused=0)  # everything dead, while the process is idle
            deadline = time.monotonic() + 10
            while _removed_segments(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _removed_segments(pid) == 0  # looked, and let go, with nothing asked of it
        finally:
            pc.close()
    finally:
        store.close()
    err = capfd.readouterr().err
    assert "deleted while in use" not in err and "cannot be read" not in err, err
