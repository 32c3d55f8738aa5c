"""Decoded file contents kept as plain bytes in memory files, for reads the kernel serves.

A file's content in the store is a hash tree of compressed leaves, each verified against its
score when read: serving a read costs a tree walk, a BLAKE3 hash and a zstd decode per leaf,
several times what a server of plain files spends on a whole request (docs/benchmarks.md). A
content never changes (its score names its bytes), so bytes decoded and verified once stay
true: this cache keeps them, in one memory file (memfd) per content, filled in extents as they
are first read. A reader then takes a range of that file: an exporter hands it to the kernel
(``os.sendfile`` into a socket, docs/9p.md "Reads the kernel serves") or ``pread``\\s it, and
neither decodes nor hashes again.

What it keeps and for how long (docs/store.md, "Decoded contents"):

* contents of at least ``min_size`` bytes only: small files are one or two leaves, which the
  store's leaf cache already holds, and a memory file each would cost a descriptor;
* at most ``limit`` bytes of extents filled, and ``max_entries`` contents; past either, the
  least recently used contents are dropped whole;
* a range handed out holds its memory file open: it stays readable after its content is
  dropped, and the kernel frees the memory when the last holder closes it.

A reader that goes on where its last read ended is taken for a sequential one: its read
decodes RUN_BYTES at once, and the extents after it (AHEAD_BYTES) are decoded by a thread of
the cache's own while the reader is served what it asked for. Hashing, decompressing and the
memory file's writes let go of the interpreter lock, so on a second CPU the decode of the next
megabyte runs beside the sending of this one (docs/store.md, "Decoded contents"); a read
that reaches extents being decoded ahead waits for them, or decodes them itself if their
turn has not come.

The bytes are as trustworthy as the store's own caches in memory (the leaf and interior
caches): verified when they entered, never read from disk again. Thread-safe: fills of one
extent by two threads at once write the same bytes.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from store.base import BlockStore
from store.hashtree import TreeReader

EXTENT = 64 << 10  # the unit filled and remembered as present
RUN_BYTES = 1 << 20  # what a sequential read decodes at once
AHEAD_BYTES = 2 << 20  # what is decoded ahead of a sequential reader, in the background
MISSING, PRESENT, AHEAD = 0, 1, 2  # an extent's state (AHEAD: being decoded ahead)
AHEAD_WAIT = 2.0  # seconds a reader waits for a decode ahead before doing it itself
MIN_SIZE = 1 << 20
MAX_ENTRIES = 512


@dataclass(frozen=True, slots=True)
class PlainRange:
    """Bytes [offset, offset + count) of a content, in *file* (open while this is held)."""

    file: _MemFile
    offset: int
    count: int

    def fileno(self) -> int:
        return self.file.fd

    def read(self) -> bytes:
        """The bytes themselves (for a transport the kernel cannot send a file into)."""
        fd = self.file.fd
        out = os.pread(fd, self.count, self.offset)
        while len(out) < self.count:  # a memory file reads whole; this is only prudence
            more = os.pread(fd, self.count - len(out), self.offset + len(out))
            if not more:
                raise OSError("decoded content cache: short read of a memory file")
            out += more
        return out


class _MemFile:
    """An open memory file, closed when the last reference goes (the cache's or a range's)."""

    __slots__ = ("fd",)

    def __init__(self, size: int) -> None:
        fd = os.memfd_create("grid-content", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)  # sparse: memory is taken as extents are written
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __del__(self) -> None:
        if hasattr(self, "fd"):
            os.close(self.fd)


class Decoder(Protocol):
    """What the cache asks of a decoder process (store.decoder.Decoder)."""

    store: object
    decoded: int

    def submit(self, ident: int, fd: int, size: int, root: bytes, lo: int, hi: int,
               done: Callable[[bool], None]) -> Future[bool] | None: ...

    def forget(self, ident: int) -> None: ...

    def stuck(self, fut: Future[bool]) -> None: ...

    def close(self) -> None: ...


_IDENTS = itertools.count(1)


class _Content:
    __slots__ = ("ahead", "ahead_gen", "ahead_reader", "by_process", "file", "have", "held",
                 "ident", "next", "size")

    def __init__(self, size: int) -> None:
        self.ident = next(_IDENTS)  # its name to a decoder process
        self.by_process = True  # False once the decoder process could not decode part of it
        self.ahead_reader: TreeReader | None = None  # the decode-ahead thread's own reader
        self.file = _MemFile(size)
        self.size = size
        self.have = bytearray(-(-size // EXTENT))  # each extent's state (MISSING, ...)
        self.held = 0  # bytes of extents filled
        self.next = -1  # where the last read ended: a read starting there is sequential
        self.ahead: Future[Any] | None = None  # the decode ahead of a reader, if one is due
        self.ahead_gen = 0  # counts them: a late end of one taken back leaves the next alone


class PlainCache:
    """Decoded contents by score, in memory files. See the module docstring."""

    def __init__(self, limit: int, *, min_size: int = MIN_SIZE,
                 max_entries: int = MAX_ENTRIES, decoder: Decoder | None = None) -> None:
        if limit <= 0 or max_entries <= 0 or min_size < 0:
            raise ValueError("limit and max_entries must be positive, min_size not negative")
        self.limit = limit
        self.min_size = max(min_size, 1)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Content] = OrderedDict()
        self._held = 0
        self.hits = 0  # ranges served without decoding (statistics, for tests and benches)
        self.fills = 0  # extents decoded into the cache
        self.ahead_fills = 0  # of which decoded ahead of a reader
        self.disabled = not hasattr(os, "memfd_create")
        self.read_ahead = True  # until close
        self.decoder = decoder  # decodes ahead in a process of its own (store.decoder)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def held(self) -> int:
        """Bytes of decoded content held."""
        return self._held

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> dict[str, int]:
        """What the cache holds and has done, for the daemon's status and for tests."""
        out = {"limit": self.limit, "held": self._held, "contents": len(self._entries),
               "hits": self.hits, "fills": self.fills, "ahead_fills": self.ahead_fills}
        if self.decoder is not None:
            out["decoder_runs"] = self.decoder.decoded  # ranges the decoder process decoded
        return out

    def range(self, reader: TreeReader, offset: int, count: int) -> PlainRange | None:
        """Bytes [offset, offset + count) of *reader*'s content, clipped to its size, filled
        from the reader where missing; None when this content is not kept here (too small,
        larger than the whole cache, or memory files not to be had): read it from *reader*.
        Errors of the reader (a missing or corrupt block) propagate; nothing wrong is kept.
        A read that continues the previous one of the content decodes RUN_BYTES at once."""
        size = reader.size
        end = min(size, offset + count)
        if self.disabled or size < self.min_size or size > self.limit or offset < 0 or offset >= end:
            return None
        key = bytes(reader.root)
        with self._lock:
            c = self._entries.get(key)
            if c is not None:
                self._entries.move_to_end(key)
        if c is None:
            c = self._new(key, size)
            if c is None:
                return None
        first, last = offset // EXTENT, (end - 1) // EXTENT
        sequential = offset == c.next
        if c.have.count(PRESENT, first, last + 1) == last + 1 - first:
            self.hits += 1
        else:
            if AHEAD in c.have[first:last + 1]:
                self._await_ahead(c)
            if sequential:  # decode the next RUN_BYTES in one tree walk, up to what is
                # being decoded ahead already
                run = min(len(c.have) - 1, first + RUN_BYTES // EXTENT - 1)
                busy = c.have.find(AHEAD, last + 1, run + 1)
                last = max(last, run if busy < 0 else busy - 1)
            try:
                self._fill(reader, c, key, first, last)
            except _NoRoom:
                return None
        c.next = end
        if sequential and self.read_ahead:
            self._start_ahead(reader, c, key, end)
        return PlainRange(c.file, offset, end - offset)

    def read(self, reader: TreeReader, offset: int, count: int) -> bytes:
        """The bytes of ``range``, or read from *reader* when the content is not kept."""
        r = self.range(reader, offset, count)
        return r.read() if r is not None else reader.read(offset, count)

    def clear(self) -> None:
        with self._lock:
            for c in self._entries.values():
                self._forget(c)
            self._entries.clear()
            self._held = 0

    def close(self) -> None:
        """Stop decoding ahead (what is under way finishes); the cache still serves."""
        self.read_ahead = False
        if self.decoder is not None:
            self.decoder.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    # -- decoding ahead of a sequential reader -------------------------------------------------

    def _start_ahead(self, reader: TreeReader, c: _Content, key: bytes, end: int) -> None:
        """Have the extents of [end, end + AHEAD_BYTES) decoded in the background, RUN_BYTES
        from the first one missing, unless a decode ahead of this content is under way."""
        if c.ahead is not None or end >= c.size:
            return
        lo = end // EXTENT
        hi = min(len(c.have), (end + AHEAD_BYTES - 1) // EXTENT + 1)
        with self._lock:
            start = c.have.find(MISSING, lo, hi)
            if start < 0 or c.ahead is not None:
                return
            stop = min(len(c.have), start + RUN_BYTES // EXTENT)
            for x in range(start, stop):
                if c.have[x] == MISSING:
                    c.have[x] = AHEAD
            c.ahead_gen += 1
            gen = c.ahead_gen
            d = self.decoder
            if d is not None and c.by_process and reader.store is d.store:
                c.ahead = d.submit(c.ident, c.file.fd, c.size, bytes(reader.root), start * EXTENT,
                                   min(c.size, stop * EXTENT),
                                   partial(self._ahead_done, c, key, start, stop, gen))
                if c.ahead is not None:
                    return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="grid-decode-ahead")
            try:
                c.ahead = self._pool.submit(self._ahead, reader.store, reader.root, c, key, start,
                                            stop, gen)
            except RuntimeError:  # shut down meanwhile: decode as it comes
                c.ahead = None
                self._undo_ahead_locked(c, start, stop)

    def _ahead(self, store: BlockStore, root: bytes, c: _Content, key: bytes, start: int, stop: int,
               gen: int) -> None:
        """The background decode, by the one thread of the pool: its own tree reader (a
        reader's caches are its thread's), kept with the content."""
        try:
            todo = [x for x in range(start, stop) if c.have[x] == AHEAD]
            if todo:
                if c.ahead_reader is None:  # kept for the next run: its interior nodes
                    c.ahead_reader = TreeReader(store, root)
                self._decode(c.ahead_reader, c, key, todo[0], todo[-1] + 1)
                self.ahead_fills += len(todo)
        except Exception:  # the reader decodes these extents itself and meets the error
            pass
        finally:
            self._ended_ahead(c, start, stop, gen)

    def _ahead_done(self, c: _Content, key: bytes, start: int, stop: int, gen: int,
                    ok: bool) -> None:
        """The decoder process's answer for extents start..stop-1 (its reply thread)."""
        if ok:
            self._present(c, key, start, stop)
            self.ahead_fills += stop - start
        else:  # a block it cannot see (fetched from a peer, newer than its view) or worse
            c.by_process = False
        self._ended_ahead(c, start, stop, gen)

    def _ended_ahead(self, c: _Content, start: int, stop: int, gen: int) -> None:
        """Decode ahead number *gen* of *c* ended: what it left AHEAD is missing again, and
        the next may start (unless this one was taken back and another runs already)."""
        with self._lock:
            self._undo_ahead_locked(c, start, stop)
            if c.ahead_gen == gen:
                c.ahead = None

    @staticmethod
    def _undo_ahead_locked(c: _Content, start: int, stop: int) -> None:
        """Extents start..stop-1 still AHEAD are missing again. The cache's lock is held."""
        for x in range(start, stop):
            if c.have[x] == AHEAD:
                c.have[x] = MISSING

    def _await_ahead(self, c: _Content) -> None:
        """A read reached extents being decoded ahead: wait for that decode, or take it back
        if it has not begun (the reader then decodes them itself, now)."""
        fut = c.ahead
        if fut is None:
            return
        if not fut.cancel():
            try:  # a failure leaves the extents missing, decoded below
                fut.exception(timeout=AHEAD_WAIT)
                return
            except FutureTimeout:  # a decoder process that does not answer (stopped, stuck):
                c.by_process = False  # take them back; its late bytes are the same bytes
                if self.decoder is not None:
                    self.decoder.stuck(fut)
        with self._lock:  # cancelled before it ran, or taken back: its extents are ours
            self._undo_ahead_locked(c, 0, len(c.have))
            if c.ahead is fut:
                c.ahead = None
                c.ahead_gen += 1  # its end, when it comes, is not the current one's

    # -- filling and dropping -----------------------------------------------------------------

    def _new(self, key: bytes, size: int) -> _Content | None:
        try:
            c = _Content(size)
        except OSError:  # no memory files here (or none left): serve from the reader
            return None
        with self._lock:
            have = self._entries.get(key)
            if have is not None:  # another thread made it meanwhile: use that one
                self._entries.move_to_end(key)
                return have
            self._entries[key] = c
            self._drop_over(keep=key)
        return c

    def _fill(self, reader: TreeReader, c: _Content, key: bytes, first: int, last: int) -> None:
        """Make extents first..last present, decoding the missing ones in runs of adjacent
        extents (one tree walk each). Two threads filling one extent at once write the same
        bytes (a content never changes)."""
        missing = [e for e in range(first, last + 1) if c.have[e] != PRESENT]
        i = 0
        while i < len(missing):
            j = i
            while j + 1 < len(missing) and missing[j + 1] == missing[j] + 1:
                j += 1
            self._decode(reader, c, key, missing[i], missing[j] + 1)
            i = j + 1

    def _decode(self, reader: TreeReader, c: _Content, key: bytes, start: int, end: int) -> None:
        """Decode extents start..end-1 (verified, leaf by leaf) into the memory file."""
        decode_range(reader, start * EXTENT, min(c.size, end * EXTENT),
                     lambda pieces, at: self._write(c, key, pieces, at))
        self._present(c, key, start, end)

    def _present(self, c: _Content, key: bytes, start: int, end: int) -> None:
        """Extents start..end-1 hold their bytes: count them and mark them present."""
        added = 0
        with self._lock:
            for x in range(start, end):
                if c.have[x] != PRESENT:
                    c.have[x] = PRESENT
                    added += min(EXTENT, c.size - x * EXTENT)
            self.fills += end - start
            c.held += added
            if self._entries.get(key) is c:
                self._held += added
                self._drop_over(keep=key)

    def _write(self, c: _Content, key: bytes, pieces: list[bytes], offset: int) -> None:
        try:
            pwrite_all(c.file.fd, pieces, offset)
        except OSError as e:  # no memory for the file: give it up, serve from the reader
            self._drop(key)
            raise _NoRoom from e

    def _drop(self, key: bytes) -> None:
        with self._lock:
            c = self._entries.pop(key, None)
            if c is not None:
                self._held -= c.held
                self._forget(c)

    def _forget(self, c: _Content) -> None:
        """*c* leaves the cache: a decoder process lets its memory file go too."""
        if self.decoder is not None:
            self.decoder.forget(c.ident)

    def _drop_over(self, *, keep: bytes) -> None:
        """Drop least recently used contents (not *keep*) while over a bound. Lock held."""
        entries = self._entries
        while (self._held > self.limit or len(entries) > self.max_entries) and len(entries) > 1:
            key, c = next(iter(entries.items()))
            if key == keep:
                entries.move_to_end(key)
                key, c = next(iter(entries.items()))
            del entries[key]
            self._held -= c.held
            self._forget(c)  # the file closes when its last range is let go


def decode_range(reader: TreeReader, lo: int, hi: int,
                 write: Callable[[list[bytes], int], None]) -> None:
    """Bytes [lo, hi) of *reader*'s tree as ``write(pieces, offset)`` of each run of adjacent
    leaves; holes are skipped (a memory file reads zeros there and keeps no memory for them).
    Every leaf is verified by the store as it is read."""
    pos, run, at = lo, [], lo
    for piece in reader.iter_pieces(lo, hi - lo):
        if isinstance(piece, int):
            if run:
                write(run, at)
                run = []
            pos += piece
            at = pos
        else:
            run.append(piece)
            pos += len(piece)
    if run:
        write(run, at)
    if pos != hi:
        raise OSError(f"hash tree {reader.root.hex()[:16]} read short at {lo}")


class _NoRoom(Exception):
    """A memory file could not take its bytes (out of memory): the content is dropped."""


_IOV = 512  # buffers per pwritev (Linux takes up to 1,024)


def pwrite_all(fd: int, pieces: list[bytes], offset: int) -> None:
    """Write *pieces* one after another into *fd* from *offset*."""
    for i in range(0, len(pieces), _IOV):
        group = pieces[i:i + _IOV]
        total = sum(map(len, group))
        n = os.pwritev(fd, group, offset)
        if n < total:  # a memory file takes it all at once; this is only prudence
            rest = memoryview(b"".join(group))[n:]
            while rest:
                k = os.pwrite(fd, rest, offset + n)
                rest = rest[k:]
                n += k
        offset += total
