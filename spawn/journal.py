"""The overlay's redo journal: what makes an operation durable without a disk flush.

A spawn's overlay (spawn.overlay) is an LMDB environment. Committing an LMDB transaction with
a flush costs two ``fdatasync`` calls; committing one per operation made every write request
wait for the disk (measured in docs/spawn.md: 388 µs of a 427 µs operation). Committing
without a flush is not an option: LMDB's own documentation says a machine crash may then
leave the database corrupt, not merely behind.

So operations accumulate in one LMDB write transaction, which is committed (with its flush)
now and then: a *checkpoint*. Every operation, before it returns, appends its writes to this
journal with a plain ``pwritev(2)`` (no flush): once in the kernel's page cache it survives a SIGKILL of
the process, and a background thread flushes the journal to disk every
``FLUSH_INTERVAL`` seconds (and ``fsync`` flushes it at once), so a machine crash loses at
most the last second or so of un-fsync'd operations. On open, the records after the last
checkpoint are applied again.

Record layout (all integers big-endian)::

    u32 body length | u32 crc32 of the body | body
    body   = u64 seq | entry*
    entry  = u8 kind (1 put, 2 delete) | u8 db | u16 key length | u32 value length
             | key | value (empty for a delete)

``seq`` numbers the records one by one; the checkpoint stores the last one it includes in
the overlay's ``meta`` (``jseq``). Replay applies records with seq = jseq + 1, jseq + 2, …
and stops at the first record that is torn, fails its checksum, or breaks the sequence, so
it applies exactly a prefix of the operations: never a torn one, never one twice out of
order (a journal whose truncation at a checkpoint was lost in a crash starts with newer
records and then holds older ones, which the sequence check stops at). Replaying a record
that the checkpoint already holds is harmless: puts and deletes applied again in order leave
each key as the last one left it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

try:  # ISA-L's CRC-32: the same values as zlib's, about ten times faster (docs/benchmarks.md,
    # "9P writes: fewer copies": zlib's was 5-8 % of a spawn host's time on 1 MiB writes)
    from isal.isal_zlib import crc32
except ImportError:  # a venv set up before isal was a dependency
    from zlib import crc32

log = logging.getLogger(__name__)

PUT = 1
DELETE = 2
FLUSH_INTERVAL = 1.0  # seconds between background flushes of a journal with new records

_HEAD = struct.Struct(">II")
_SEQ = struct.Struct(">Q")
_ENTRY = struct.Struct(">BBHI")
_IOV_MAX = 1024  # Linux's limit on the buffers of one writev

Entry = tuple[int, int, bytes, bytes]  # kind, db number, key, value


def record_parts(seq: int, entries: list[Entry]) -> list[bytes]:
    """One record as the buffers that make it up, in order (the head first): written with
    one ``writev`` the values are not copied into a record first (a 1 MiB write's pages
    were copied once more for that)."""
    parts = [b"", _SEQ.pack(seq)]
    for kind, db, key, value in entries:
        parts.append(_ENTRY.pack(kind, db, len(key), len(value)))
        parts.append(key)
        parts.append(value)
    crc = 0
    size = 0
    for p in parts:
        crc = crc32(p, crc)
        size += len(p)
    parts[0] = _HEAD.pack(size, crc)
    return parts


def encode_record(seq: int, entries: list[Entry]) -> bytes:
    return b"".join(record_parts(seq, entries))


def decode_records(buf: bytes) -> Iterator[tuple[int, list[Entry]]]:
    """The intact records at the start of *buf*, in order; stops at the first torn or
    corrupt one."""
    pos = 0
    while pos + _HEAD.size <= len(buf):
        n, crc = _HEAD.unpack_from(buf, pos)
        body = buf[pos + _HEAD.size : pos + _HEAD.size + n]
        if len(body) != n or n < _SEQ.size or crc32(body) != crc:
            return
        (seq,) = _SEQ.unpack_from(body)
        entries: list[Entry] = []
        p = _SEQ.size
        while p < n:
            if p + _ENTRY.size > n:
                return
            kind, db, kl, vl = _ENTRY.unpack_from(body, p)
            p += _ENTRY.size
            if kind not in (PUT, DELETE) or p + kl + vl > n:
                return
            entries.append((kind, db, body[p : p + kl], body[p + kl : p + kl + vl]))
            p += kl + vl
        yield seq, entries
        pos += _HEAD.size + n


class Journal:
    """One overlay's journal file. Appends come from the overlay's owner thread; the
    background flusher (one thread for every journal of the process) calls ``flush``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # no O_APPEND: records go at ``size``, which a reset that keeps the file sets back to 0
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        self._dirty = False
        self._lock = threading.Lock()  # flush vs close
        _flusher.add(self)

    def read_all(self) -> bytes:
        return os.pread(self.fd, os.fstat(self.fd).st_size, 0)

    def append(self, seq: int, entries: list[Entry]) -> None:
        parts = record_parts(seq, entries)
        total = sum(map(len, parts))
        at = self.size
        n = os.pwritev(self.fd, parts, at) if len(parts) <= _IOV_MAX else 0
        if n < total:  # many entries (past IOV_MAX), or a short write: the rest in one piece
            rec = b"".join(parts)
            while n < total:
                n += os.pwrite(self.fd, rec[n:], at + n)
        self.size += total
        self._dirty = True

    def flush(self) -> None:
        """Make every appended record durable (fdatasync)."""
        with self._lock:
            if self._dirty and self.fd >= 0:
                self._dirty = False
                os.fdatasync(self.fd)

    def reset(self, *, keep: bool = False) -> None:
        """Empty the journal: a checkpoint now holds everything it had.

        *keep*: leave the file as it is and write the next records over its start (the
        checkpoints inside a burst of writes). Truncating gives the file's pages and blocks
        back, and the burst's next records then pay for new ones: writing a MiB into pages
        the file already has took a third of the time (docs/benchmarks.md, "9P writes: fewer
        copies"). What is left after the new records is older than the checkpoint, which
        replay skips by sequence number or stops at (as for a lost truncation)."""
        if not keep:
            os.ftruncate(self.fd, 0)
        self.size = 0
        self._dirty = False

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        _flusher.discard(self)


class _Flusher:
    """One daemon thread flushing every open journal with new records, every
    FLUSH_INTERVAL seconds: what bounds the loss in a machine crash."""

    def __init__(self) -> None:
        self._journals: weakref.WeakSet[Journal] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, j: Journal) -> None:
        with self._lock:
            self._journals.add(j)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="grid-journal", daemon=True)
                self._thread.start()

    def discard(self, j: Journal) -> None:
        with self._lock:
            self._journals.discard(j)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            with self._lock:
                todo = list(self._journals)
            for j in todo:
                try:
                    j.flush()
                except OSError as e:  # the disk is failing: say so, keep trying
                    log.warning("flushing journal %s: %s", j.path, e)


_flusher = _Flusher()
