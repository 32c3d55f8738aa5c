"""The local block store: append-only segment files (the log) plus an LMDB index.

The log is the truth. Every block is appended as a record (store.segment) to the current
segment file; the LMDB index maps score -> record location and is only an accelerator that
``rebuild_index`` can recreate from the log.

Durability (DESIGN invariant 3): ``sync`` fsyncs the segment files, then commits the index
entries of everything written since the last sync, with ``indexed_to`` = the log position
they cover, in one LMDB transaction. Writers are not stopped while the fsync runs (group
commit: concurrent ``sync`` callers share one fsync). On open, the writer re-indexes the log
beyond ``indexed_to`` and truncates a torn final record, so a crash loses at most unsynced
writes and never the store's consistency.

One writer process per store, enforced with ``flock`` on ``LOCK`` (released by the kernel
when the holder dies, even by SIGKILL); the file holds the writer's pid for the error
message. Read-only opens take no lock and see what the index has committed.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import zstandard

from store.barrier import Gate, WriterSessions
from store.base import BlockStore, LogRecord, StoreStats
from store.block import Block, BlockType, check_size, check_type, references
from store.cache import BlockCache
from store.errors import (
    BlockNotFound,
    CorruptBlock,
    MissingReference,
    StoreClosed,
    StoreError,
    StoreLocked,
)
from store.logscan import Bad, Good, scan_segment
from store.score import Score, format_score, score_of
from store.segment import (
    CODEC_RAW,
    CODEC_ZSTD,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    BadRecord,
    Location,
    RecordHeader,
    decode_record_header,
    decode_segment_header,
    encode_record_header,
    encode_segment_header,
    segment_name,
)

log = logging.getLogger(__name__)

FORMAT_LINE = "grid-store 1\n"
DEFAULT_SEGMENT_SIZE = 16 << 20  # why this size: docs/store.md, "Segment size"
AUTO_SYNC_BYTES = 256 << 20  # bound the unindexed tail (and the work of recovery)
_META_INDEXED_TO = b"indexed_to"
_META_BLOCKS = b"blocks"
_META_STORED = b"stored_bytes"
_META_LOGICAL = b"logical_bytes"
_META_DOOMED = b"doomed"  # segment starts (u64 each) prune has emptied and is removing
_COMPLETE = "COMPLETE"  # in index.new: the rebuilt index is whole and may be swapped in
_MDB_MAGIC = 0xBEEFC0DE
#: Decoded file leaves a serving process keeps in memory (``open(leaf_cache_bytes=)``; off
#: by default, so that tools and ``check`` read every block from disk).
LEAF_CACHE_BYTES = 32 << 20
_UNLINKED_EVERY = 2.0  # seconds between looks for segment files deleted under a running store
MAX_READ_FDS = 256  # segment files kept open for reading; the oldest opened is closed first
COALESCE_BYTES = 4 << 20  # get_many reads adjacent records in one pread of up to this


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


class _Compressor(threading.local):
    def __init__(self, level: int) -> None:
        self.c = zstandard.ZstdCompressor(level=level)
        self.fast = zstandard.ZstdCompressor(level=1)
        self.d = zstandard.ZstdDecompressor()


class LocalStore(BlockStore):
    """Segment files + LMDB index in one directory. See the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool,
        segment_size: int,
        cache_bytes: int,
        compress_level: int,
        rebuild: bool = False,
        leaf_cache_bytes: int = 0,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.segment_size = segment_size
        self._zstd = _Compressor(compress_level)
        self._wlock = threading.Lock()  # appends, pending, segment list
        self._sync_lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        self._pending: dict[bytes, Location] = {}
        self._unsynced_fds: set[int] = set()
        self._retired_fds: list[int] = []  # rolled-over segments, fsynced and closed at the next sync
        self._unsynced_bytes = 0
        self._read_fds: dict[int, int] = {}
        self._gone_logged: set[tuple[int, bool]] = set()  # missing segments already logged
        self._unlinked_checked = time.monotonic()
        self._cache = BlockCache(cache_bytes)
        # DATA blocks (file leaves) in an LRU of their own, so that a stream of file reads
        # cannot push the interior blocks out of the one above. A hit skips pread, BLAKE3
        # and zstd; a score names immutable content, so nothing is ever invalidated (only
        # dropped with the other cache when blocks are deleted or the index is rebuilt).
        self._leaves = BlockCache(leaf_cache_bytes)
        # Online prune (store.barrier, docs/store.md "Online prune"): puts hold the gate
        # shared; while prune runs, every put's score goes into the late set.
        self._gate = Gate()
        self.writers = WriterSessions()
        self._late: set[bytes] | None = None
        # Bumped when a read descriptor may close under a reader (prune removes segments, the
        # descriptor cache evicts one): a read that fails after it moved looks again.
        self._read_gen = 0
        self._prune_cancel = threading.Event()  # a closing owner stops a prune before it copies
        self._puts = self._dups = self._gets = 0
        self._blocks = self._stored = self._logical = 0
        self._starts: list[int] = []
        self._append_fd = -1
        self._cur_start = 0
        self._cur_size = 0
        self.last_rebuild: RebuildReport | None = None
        self._env: lmdb.Environment = None  # type: ignore[assignment]  # set by _open_index
        if rebuild and readonly:
            raise StoreError(f"store {path}: a read-only open cannot rebuild the index")
        if not readonly:
            self._take_lock()
        try:
            if not readonly:
                self._finish_swap()
            self._load_segments()
            if rebuild:
                self.last_rebuild = self._rebuild_aside()
            self._open_index()
            self._load_meta()
            self._finish_drop()
            if not readonly:
                self._recover()
        except BaseException:
            self._release()
            raise

    def _open_index(self) -> None:
        """Open the LMDB index, refusing a data.mdb that would crash the process.

        LMDB maps the file and trusts it: a data.mdb shorter than its own meta page says
        (truncated, partly zeroed) makes the first read past the end a SIGBUS, which no
        exception handler catches. So the file's meta pages are checked before mapping."""
        where = self.path / "index"
        why = _index_file_problem(where / "data.mdb")
        if why is not None:
            raise StoreError(
                f"the store index {where} is damaged ({why}); run `grid store check --rebuild` "
                "to recreate it from the log"
            )
        self._env = _open_env(
            str(where), map_size=1 << 40, max_dbs=4, readonly=self.readonly, readahead=False, subdir=True
        )
        try:
            self._db = self._env.open_db(b"blocks", create=not self.readonly)
            self._meta = self._env.open_db(b"meta", create=not self.readonly)
        except lmdb.Error as e:
            self._env.close()
            self._env = None  # type: ignore[assignment]
            raise StoreError(
                f"the store index {where} is unreadable ({e}); run `grid store check --rebuild` "
                "to recreate it from the log"
            ) from None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, exist_ok: bool = False) -> None:
        """Make an empty store at *path* (a directory)."""
        p = Path(path)
        fmt = p / "FORMAT"
        if fmt.exists():
            if exist_ok:
                return
            raise StoreError(f"store {p} already exists")
        (p / "segments").mkdir(parents=True, exist_ok=True)
        (p / "index").mkdir(exist_ok=True)
        first = p / "segments" / segment_name(0)
        if not first.exists():
            with open(first, "wb") as f:
                f.write(encode_segment_header(0))
                f.flush()
                os.fsync(f.fileno())
        env = lmdb.open(str(p / "index"), map_size=1 << 40, max_dbs=4, subdir=True)
        env.open_db(b"blocks")
        env.open_db(b"meta")
        env.close()
        tmp = p / "FORMAT.tmp"
        tmp.write_text(FORMAT_LINE)
        os.replace(tmp, fmt)
        _fsync_dir(p / "segments")
        _fsync_dir(p)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        segment_size: int | None = None,
        cache_bytes: int = 16 << 20,
        compress_level: int = 3,
        rebuild: bool = False,
        leaf_cache_bytes: int = 0,
    ) -> LocalStore:
        """Open the store at *path*. With *rebuild* (writer only), first recreate the index
        from the log beside the old one and swap it in (see ``rebuild_index``); the old
        index is never opened, so a damaged one cannot stop the rebuild."""
        p = Path(path)
        fmt = p / "FORMAT"
        if not fmt.is_file():
            raise StoreError(f"no block store at {p} (run `grid init`)")
        if fmt.read_text() != FORMAT_LINE:
            raise StoreError(f"store {p} has an unknown format {fmt.read_text().strip()!r}")
        if segment_size is None:
            # A store may fix its own segment size (docs/store.md): small stores and tests.
            try:
                segment_size = int((p / "segment_size").read_text())
            except (FileNotFoundError, ValueError):
                segment_size = DEFAULT_SEGMENT_SIZE
        return cls(
            p,
            readonly=readonly,
            segment_size=segment_size,
            cache_bytes=cache_bytes,
            compress_level=compress_level,
            rebuild=rebuild,
            leaf_cache_bytes=leaf_cache_bytes,
        )

    def _take_lock(self) -> None:
        fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreLocked(
                    f"store {self.path} is in use by its writer, process {holder}; "
                    "stop that process or go through it"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release(self) -> None:
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        if self._append_fd >= 0:
            os.close(self._append_fd)
            self._append_fd = -1
        if self._env is not None:
            self._env.close()
            self._env = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _seg_path(self, start: int) -> Path:
        return self.path / "segments" / segment_name(start)

    def _load_segments(self) -> None:
        starts = []
        for name in os.listdir(self.path / "segments"):
            if name.endswith(".seg"):
                try:
                    starts.append(int(name[:-4], 16))
                except ValueError:
                    continue
        starts.sort()
        if not starts:
            raise StoreError(f"store {self.path} has no segment files")
        self._starts = starts
        last = starts[-1]
        size = os.path.getsize(self._seg_path(last))
        if not self.readonly:
            if size < SEGMENT_HEADER_SIZE and len(starts) > 1:
                # A crash while rolling over: the new segment's header never landed.
                os.unlink(self._seg_path(last))
                starts.pop()
                last = starts[-1]
                size = os.path.getsize(self._seg_path(last))
            fd = os.open(self._seg_path(last), os.O_RDWR | os.O_APPEND)
            if size < SEGMENT_HEADER_SIZE:
                os.ftruncate(fd, 0)
                os.write(fd, encode_segment_header(last))
                os.fsync(fd)
                size = SEGMENT_HEADER_SIZE
            self._append_fd = fd
        self._cur_start, self._cur_size = last, size

    def _load_meta(self) -> None:
        with self._env.begin(db=self._meta) as txn:

            def num(key: bytes, default: int) -> int:
                v = txn.get(key)
                return int.from_bytes(v, "big") if v is not None else default

            self._indexed_to = num(_META_INDEXED_TO, 0)
            self._blocks = num(_META_BLOCKS, 0)
            self._stored = num(_META_STORED, 0)
            self._logical = num(_META_LOGICAL, 0)

    # -- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        """Index the log beyond ``indexed_to``; move a torn tail of the last segment aside."""
        end = self.position()
        if self._indexed_to > end:
            raise StoreError(
                f"store {self.path}: the index covers log position {self._indexed_to} but the "
                f"log ends at {end} (a segment was truncated or removed); "
                "run `grid store check --rebuild`"
            )
        added = self._index_log_from(self._indexed_to)
        if added:
            log.info("store %s: re-indexed %d record(s) from the log tail", self.path, added)

    def _index_log_from(self, start: int) -> int:
        """Verify and index every record from *start* that the index lacks, then sync.

        Damage followed by valid records is skipped and logged, never cut (docs/store.md,
        "Recovery"); a torn tail of the last segment is moved to ``quarantine/`` and cut
        off. Returns how many records were added."""
        added = 0
        last = self._starts[-1]
        for seg, item in self._scan_log(start):
            if isinstance(item, Bad):
                if item.torn and seg == last:
                    self._cut_tail(item)
                    break
                log.warning("store %s: %s", self.path, describe_bad(item, self._seg_path(seg).name))
                continue
            hdr = item.header
            if hdr.score not in self._pending and self._index_get(hdr.score) is None:
                self._pending[hdr.score] = Location(item.position, hdr.type, hdr.codec, hdr.stored_len, hdr.raw_len)
                self._blocks += 1
                self._stored += hdr.total_len
                self._logical += hdr.raw_len
                added += 1
        self._unsynced_fds.add(self._append_fd)
        self.sync()
        return added

    def _cut_tail(self, bad: Bad) -> None:
        """Move a torn tail of the last segment to quarantine/, then truncate it off."""
        start = self._starts[-1]
        off = bad.position - start
        kept = _quarantine(self.path, self._seg_path(start), off, bad.length)
        log.warning(
            "store %s: a torn record at %d (%d bytes: %s) was cut off the log; its bytes are in %s",
            self.path, bad.position, bad.length, bad.reason, kept,
        )
        os.ftruncate(self._append_fd, off)
        os.fsync(self._append_fd)
        self._cur_size = off

    def _scan_log(self, start: int, end: int | None = None) -> Iterator[tuple[int, Good | Bad]]:
        """(segment start, Good or Bad) for the whole log from *start* up to *end* (default:
        its current end); see store.logscan."""
        with self._wlock:
            starts = list(self._starts)
            cur_start, cur_size = self._cur_start, self._cur_size
        i = max(0, bisect.bisect_right(starts, start) - 1)
        for seg_start in starts[i:]:
            if end is not None and seg_start >= end:
                return
            path = self._seg_path(seg_start)
            try:
                f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115
            except FileNotFoundError:
                yield seg_start, Bad(seg_start, 0, None, f"segment file {path.name} is missing", torn=False)
                continue
            with f:
                size = cur_size if (seg_start == cur_start and not self.readonly) else os.fstat(f.fileno()).st_size
                if end is not None:
                    size = min(size, end - seg_start)
                head = f.read(SEGMENT_HEADER_SIZE)
                try:
                    if decode_segment_header(head) != seg_start:
                        raise BadRecord("segment header names another start")
                except BadRecord as e:
                    # Records are still found by resynchronising past the damaged header.
                    yield seg_start, Bad(seg_start, SEGMENT_HEADER_SIZE, None, f"segment header: {e}", torn=False)
                first = max(SEGMENT_HEADER_SIZE, start - seg_start)
                yield from ((seg_start, it) for it in scan_segment(f, seg_start, first, size, self._decode_payload))

    def _segment_of(self, pos: int) -> int:
        i = bisect.bisect_right(self._starts, pos) - 1
        return self._starts[max(i, 0)]

    # -- reading ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")

    def _index_get(self, score: bytes) -> Location | None:
        try:
            with self._env.begin(db=self._db) as txn:
                v = txn.get(score)
        except lmdb.Error as e:
            raise StoreError(
                f"the store index {self.path / 'index'} is damaged ({e}); "
                "run `grid store check --rebuild` to recreate it from the log"
            ) from None
        return Location.unpack(v) if v is not None else None

    def _locate(self, score: bytes) -> Location | None:
        loc = self._pending.get(score)
        if loc is None:
            loc = self._index_get(score)
        return loc

    def has(self, score: bytes) -> bool:
        self._check_open()
        score = bytes(score)
        if self._late is None:
            return self._locate(score) is not None
        # While prune runs, a block found is kept: its finder may name it (store.barrier).
        with self._gate.shared():
            found = self._locate(score) is not None
            late = self._late
            if found and late is not None:
                late.add(score)
            return found

    def _put_if_absent_fast(self, score: Score) -> bool:
        self._check_open()
        self._puts += 1
        if self._locate(score) is not None:
            self._dups += 1
            return True
        return False

    def _read_fd(self, seg_start: int) -> int:
        fd = self._read_fds.get(seg_start)
        if fd is None:
            with self._wlock:
                fd = self._read_fds.get(seg_start)
                if fd is None:
                    fd = os.open(self._seg_path(seg_start), os.O_RDONLY)
                    if len(self._read_fds) >= MAX_READ_FDS:
                        # A store of many segments must not run out of descriptors. A reader
                        # still using the evicted one fails and looks again (get).
                        old = self._read_fds.pop(next(iter(self._read_fds)))
                        self._read_gen += 1
                        os.close(old)
                    self._read_fds[seg_start] = fd
        return fd

    def _segment_gone(self, score: bytes, seg: int, pos: int | None = None) -> CorruptBlock:
        """The error for a block whose segment file is missing; logged once per segment."""
        what = (f"segment file {self._seg_path(seg).name} is missing" if pos is None else
                f"no segment file holds log position {pos} (after {self._seg_path(seg).name})")
        if (seg, pos is None) not in self._gone_logged:
            self._gone_logged.add((seg, pos is None))
            log.error("store %s: %s: blocks the index places there cannot be read; run `grid store "
                      "check`, then `grid store repair`", self.path, what)
        return CorruptBlock(score, f"store {self.path}", f"{what} (deleted?)")

    def _removed_open_segments(self) -> list[int]:
        """The segments this store has open for reading whose files were removed meanwhile."""
        out = []
        for seg, fd in list(self._read_fds.items()):
            try:
                if os.fstat(fd).st_nlink == 0:
                    out.append(seg)
            except OSError:
                continue
        return out

    def _notice_unlinked(self) -> None:
        """Log, once each, segment files deleted while this store had them open. Their blocks
        stay readable through the open descriptor only until the store is closed."""
        for seg in self._removed_open_segments():
            if (seg, True) not in self._gone_logged:
                self._gone_logged.add((seg, True))
                log.error("store %s: segment file %s was deleted while in use: its blocks are read "
                          "from the open file until this process stops, then lost; run `grid store "
                          "check`, then `grid store repair` from a peer", self.path,
                          self._seg_path(seg).name)

    def _decode_payload(self, hdr: RecordHeader, payload: bytes | memoryview) -> bytes:
        if hdr.codec == CODEC_RAW:
            return bytes(payload)  # the same object when it is bytes already
        try:
            data = self._zstd.d.decompress(payload, max_output_size=hdr.raw_len)
        except zstandard.ZstdError as e:
            raise CorruptBlock(hdr.score, "zstd payload", str(e)) from None
        if len(data) != hdr.raw_len:
            raise CorruptBlock(hdr.score, "zstd payload", "wrong decompressed size")
        return data

    def get(self, score: bytes) -> Block:
        self._check_open()
        score = bytes(score)
        self._gets += 1
        blk = self._cache.get(score)
        if blk is None:
            blk = self._leaves.get(score)
        if blk is not None:
            return blk
        for attempt in range(5):
            gen = self._read_gen
            loc = self._locate(score)
            if loc is None:
                raise BlockNotFound(score)
            try:
                return self._read_at(score, loc)
            except (CorruptBlock, OSError):
                # Prune may have removed the segment between the look-up and the read, or
                # the descriptor was evicted and its number reused: the index names the
                # block's current record, and a fresh descriptor reads it.
                if self._read_gen == gen or attempt == 4:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def get_many(self, scores: Sequence[bytes]) -> list[Block]:
        """``get`` of each score, with the records that lie next to each other in a segment
        (a file's leaves, as an import wrote them) read in one ``pread`` of up to
        COALESCE_BYTES: one system call and one index transaction for a run of leaves
        instead of one each. Every block is verified as ``get`` verifies it; one that cannot
        be had this way (not found, corrupt, its segment gone) is asked of ``get``, which
        answers or raises as it always does."""
        self._check_open()
        out: list[Block | None] = [None] * len(scores)
        want: list[tuple[int, bytes, Location]] = []
        pending = self._pending
        with self._env.begin(db=self._db) as txn:
            for i, s in enumerate(scores):
                s = bytes(s)
                blk = self._cache.get(s) or self._leaves.get(s)
                if blk is not None:
                    out[i] = blk
                    continue
                loc = pending.get(s)
                if loc is None:
                    v = txn.get(s)
                    loc = Location.unpack(v) if v is not None else None
                if loc is not None:
                    want.append((i, s, loc))
        want.sort(key=lambda w: w[2].position)
        j = 0
        while j < len(want):
            start = want[j][2].position
            seg = self._segment_of(start)
            end = start + RECORD_HEADER_SIZE + want[j][2].stored_len
            k = j
            while (k + 1 < len(want) and want[k + 1][2].position == end
                   and self._segment_of(end) == seg and end - start < COALESCE_BYTES):
                k += 1
                end += RECORD_HEADER_SIZE + want[k][2].stored_len
            try:
                raw = memoryview(self._read_raw(want[j][1], seg, start, end - start))
            except (OSError, CorruptBlock):
                raw = memoryview(b"")  # each of them through get, which says why
            where = _Where(self, seg)
            for i, s, loc in want[j:k + 1]:
                off = loc.position - start
                piece = raw[off:off + RECORD_HEADER_SIZE + loc.stored_len]
                try:
                    out[i] = self._verify(s, loc, piece, where)
                except CorruptBlock:
                    pass
            j = k + 1
        self._gets += sum(1 for b in out if b is not None)
        return [b if b is not None else self.get(s) for s, b in zip(scores, out, strict=True)]

    def _read_raw(self, score: bytes, seg: int, position: int, n: int) -> bytes:
        """*n* bytes of segment *seg* from *position* (the store's offset)."""
        now = time.monotonic()
        if now - self._unlinked_checked > _UNLINKED_EVERY:
            self._unlinked_checked = now
            self._notice_unlinked()
        try:
            fd = self._read_fd(seg)
        except FileNotFoundError:
            raise self._segment_gone(score, seg) from None
        raw = os.pread(fd, n, position - seg)
        if len(raw) < n and position - seg >= os.fstat(fd).st_size:
            # Past this file's end: the index places the block in a segment file that is
            # no longer there (a read-only open lists only the files that exist).
            raise self._segment_gone(score, seg, position)
        return raw

    def _read_at(self, score: bytes, loc: Location) -> Block:
        seg = self._segment_of(loc.position)
        where = _Where(self, seg)  # formatted only if an error needs it
        total = RECORD_HEADER_SIZE + loc.stored_len
        raw = self._read_raw(score, seg, loc.position, total)
        return self._verify(score, loc, raw, where)

    def _verify(self, score: bytes, loc: Location, raw: bytes | memoryview, where: _Where) -> Block:
        """The block in record bytes *raw* read for *score* at *loc*, checked against the
        index and its score, and kept in the cache of its kind; else CorruptBlock. *raw* may
        be a view into a larger read: the block's payload is copied out of it once."""
        total = RECORD_HEADER_SIZE + loc.stored_len
        try:
            hdr = decode_record_header(raw)
        except BadRecord as e:
            raise CorruptBlock(score, str(where), str(e)) from None
        if hdr.score != score or len(raw) != total or hdr.stored_len != loc.stored_len:
            raise CorruptBlock(score, str(where), "record does not match the index")
        try:
            data = self._decode_payload(hdr, raw[RECORD_HEADER_SIZE:])
        except CorruptBlock as e:
            raise CorruptBlock(score, str(where), str(e)) from None
        if score_of(hdr.type, data) != score:
            raise CorruptBlock(score, str(where))
        blk = Block(BlockType(hdr.type), data)
        (self._cache if hdr.type != BlockType.DATA else self._leaves).put(score, blk)
        return blk

    # -- writing ----------------------------------------------------------------------------

    def put(self, btype: int, data: bytes | bytearray | memoryview) -> Score:
        """BlockStore.put, inside the gate, noting the score in the late set while prune
        runs (store.barrier)."""
        with self._gate.shared():
            score = super().put(btype, data)
            late = self._late
            if late is not None:
                late.add(bytes(score))
            return score

    def _store(self, score: Score, btype: BlockType, payload: bytes) -> None:
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        codec, stored = CODEC_RAW, payload
        if len(payload) >= 128 and self._worth_compressing(payload):
            packed = self._zstd.c.compress(payload)
            if len(packed) < len(payload) - (len(payload) >> 4):
                codec, stored = CODEC_ZSTD, packed
        header = encode_record_header(btype, codec, len(stored), len(payload), score)
        total = len(header) + len(stored)
        with self._wlock:
            self._check_open()
            # put() checked the index just before; a block another thread added meanwhile is
            # in _pending (or, after a sync in between, costs a harmless duplicate record).
            if score in self._pending:
                self._dups += 1
                return
            if self._cur_size + total > self.segment_size and self._cur_size > SEGMENT_HEADER_SIZE:
                self._roll()
            pos = self._cur_start + self._cur_size
            try:
                _write_all(self._append_fd, header, stored)
            except OSError:
                # A torn record (ENOSPC, EIO part way) must not stay in the log: the next
                # record would land after it while the index places it at _cur_size. Cut the
                # segment back to where this record began; the caller gets the error.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._append_fd, self._cur_size)
                raise
            self._cur_size += total
            self._pending[score] = Location(pos, btype, codec, len(stored), len(payload))
            self._unsynced_fds.add(self._append_fd)
            self._unsynced_bytes += total
            self._blocks += 1
            self._stored += total
            self._logical += len(payload)
            auto = self._unsynced_bytes >= AUTO_SYNC_BYTES
        if auto:
            self.sync()

    def restore(self, btype: int, data: bytes) -> Score:
        """Append *data* as a new record even when the index names the block (``grid store
        repair``): the index then names the new record, so a block whose only record was
        damaged, or lay in a deleted segment, is whole again. Closure is checked as for
        ``put`` (the caller restores children first). Writer only."""
        bt = check_type(btype)
        check_size(data)
        payload = bytes(data)
        score = score_of(bt, payload)
        if bt != BlockType.DATA:
            refs = references(bt, payload)
            missing = self.missing(refs) if refs else []
            if missing:
                raise MissingReference(missing)
        old = self._locate(score)
        with self._wlock:
            self._pending.pop(score, None)  # _store appends only what _pending lacks
        self._store(score, bt, payload)
        if old is not None:
            with self._wlock:  # the block was counted when first stored: count the new record
                self._blocks -= 1
                self._stored -= RECORD_HEADER_SIZE + old.stored_len
                self._logical -= len(payload)
        return score

    def _worth_compressing(self, payload: bytes) -> bool:
        """A cheap test before zstd: compress 3 KiB sampled at the start, middle and end at
        level 1. Random data (compressed media, encrypted files) fails it and skips the full
        attempt, which would be thrown away."""
        n = len(payload)
        if n <= 8192:
            return True
        mid = n // 2
        sample = payload[:1024] + payload[mid : mid + 1024] + payload[-1024:]
        return len(self._zstd.fast.compress(sample)) < 2900

    def _roll(self) -> None:
        """Start a new segment (under _wlock). The old one stays open until the next sync."""
        new_start = self._cur_start + self._cur_size
        path = self._seg_path(new_start)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(fd, encode_segment_header(new_start))
        os.fsync(fd)
        _fsync_dir(self.path / "segments")
        old = self._append_fd
        self._retired_fds.append(old)
        self._append_fd = fd
        self._starts.append(new_start)
        self._cur_start, self._cur_size = new_start, SEGMENT_HEADER_SIZE

    def sync(self) -> None:
        """Make every earlier put durable: fsync the log, then commit the index."""
        self._check_open()
        if self.readonly:
            return
        with self._sync_lock:
            with self._wlock:
                batch = dict(self._pending)
                fds = set(self._unsynced_fds)
                self._unsynced_fds.clear()
                retired, self._retired_fds = self._retired_fds, []
                end = self._cur_start + self._cur_size
                self._unsynced_bytes = 0
                counters = (self._blocks, self._stored, self._logical)
            for fd in fds:
                os.fsync(fd)
            with self._env.begin(write=True) as txn:
                for score, loc in batch.items():
                    txn.put(score, loc.pack(), db=self._db)
                txn.put(_META_INDEXED_TO, _u64(end), db=self._meta)
                txn.put(_META_BLOCKS, _u64(counters[0]), db=self._meta)
                txn.put(_META_STORED, _u64(counters[1]), db=self._meta)
                txn.put(_META_LOGICAL, _u64(counters[2]), db=self._meta)
            self._indexed_to = end
            with self._wlock:
                for score, loc in batch.items():
                    if self._pending.get(score) == loc:
                        del self._pending[score]
            for fd in retired:
                if fd not in fds:
                    os.fsync(fd)
                os.close(fd)

    # -- the log --------------------------------------------------------------------------

    def position(self) -> int:
        if self.readonly:
            last = self._starts[-1]
            return last + os.path.getsize(self._seg_path(last))
        with self._wlock:
            return self._cur_start + self._cur_size

    def iter_log(self, start: int = 0) -> Iterator[LogRecord]:
        """Verified records from *start*; a damaged record raises CorruptBlock naming it.

        It raises rather than skips because its users (replication) must not pretend the log
        is whole: a skipped block would break closure on the peer. A read-only reader stops
        quietly at a torn end of the last segment, where the writer may be mid-append."""
        self._check_open()
        last = self._starts[-1]
        for seg, item in self._scan_log(start):
            if isinstance(item, Bad):
                if item.torn and seg == last and self.readonly:
                    return
                if item.length == 0 and item.score is None and seg not in self.segment_starts():
                    continue  # removed by prune while we read: its live records were copied on
                raise CorruptBlock(
                    item.score if item.score is not None else bytes(32),
                    f"segment {self._seg_path(seg).name} at {item.position}",
                    item.reason,
                )
            hdr = item.header
            loc = self._locate(hdr.score)
            if loc is not None and loc.position != item.position:
                continue  # a superseded copy (prune moved the block on): its later copy is sent
            if loc is not None and hdr.type != BlockType.DATA \
                    and not self._children_precede(hdr.type, item.data, item.position):
                continue  # a dead parent prune kept (docs/store.md, "Dead parents")
            yield LogRecord(item.position, item.position + hdr.total_len, Score(hdr.score), BlockType(hdr.type), item.data)

    def _children_precede(self, btype: int, data: bytes, position: int) -> bool:
        """Whether every block a record references is indexed at an earlier position: true of
        every live record (they are appended children first, and prune moves a live parent
        after its moved children); false of a dead parent prune left in a kept segment, whose
        child was moved on or removed with a victim. iter_log leaves such a record out, so the
        log it yields stays closed (a peer replaying it never meets a dangling reference)."""
        for ref in references(btype, data):
            loc = self._locate(ref)
            if loc is None or loc.position >= position:
                return False
        return True

    # -- prune (store.prune) ------------------------------------------------------------------

    def begin_prune(self) -> int:
        """Start the late set (every put from now on is noted) and return the writer-session
        cutoff: sessions numbered below it began before prune (store.barrier)."""
        self._check_open()
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only: prune needs the writer")
        with self._wlock:
            if self._late is not None:
                raise StoreError(f"store {self.path}: a prune is running already")
            self._late = set()
        self._prune_cancel.clear()
        return self.writers.cutoff()

    def cancel_prune(self) -> None:
        """Make a running prune stop before it changes anything (if it has not begun to copy
        yet: compaction runs to its end). For an owner about to close the store."""
        self._prune_cancel.set()

    def prune_cancelled(self) -> bool:
        return self._prune_cancel.is_set()

    def end_prune(self) -> None:
        with self._wlock:
            self._late = None

    def late_scores(self) -> list[bytes]:
        """The scores put since ``begin_prune`` (call under ``exclusive`` for all of them)."""
        with self._wlock:
            return list(self._late or ())

    def late_count(self) -> int:
        with self._wlock:
            return len(self._late or ())

    def seal(self) -> int:
        """Close the segment being appended to (when it holds a record) so that everything
        written so far lies in sealed segments, and return the boundary: the start of the
        segment now appended to. Prune chooses victims only below it."""
        self._check_open()
        with self._wlock:
            if self._cur_size > SEGMENT_HEADER_SIZE:
                self._roll()
            return self._cur_start

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold off every put (they wait) until the block ends; reads go on."""
        return self._gate.exclusive()

    def locate(self, score: bytes) -> Location | None:
        """Where the index (or the unsynced tail) has *score*'s record."""
        self._check_open()
        return self._locate(bytes(score))

    def segment_starts(self) -> list[int]:
        with self._wlock:
            return list(self._starts)

    def holds_removed_segments(self) -> bool:
        """Whether a segment file this store has open for reading was removed meanwhile (by
        the writer's prune, when this store is a read-only view beside it): its disk space
        comes back only when this store lets go of it (close, and open again)."""
        return bool(self._removed_open_segments())

    def segment_size_of(self, start: int) -> int:
        with self._wlock:
            if start == self._cur_start and not self.readonly:
                return self._cur_size
        return os.path.getsize(self._seg_path(start))

    def index_entries(self) -> Iterator[tuple[bytes, Location]]:
        """Every committed index entry, in one LMDB snapshot (call ``sync`` first)."""
        self._check_open()
        with self._env.begin(db=self._db) as txn:
            for key, val in txn.cursor():
                yield bytes(key), Location.unpack(val)

    @contextlib.contextmanager
    def index_snapshot(self) -> Iterator[Callable[[], Iterator[int]]]:
        """A function iterating the log positions of every committed index entry, as often
        as wanted, all in one LMDB snapshot (so two passes see the same entries)."""
        self._check_open()
        with self._env.begin(db=self._db) as txn:

            def positions() -> Iterator[int]:
                for val in txn.cursor().iternext(keys=False, values=True):
                    yield int.from_bytes(val[:8], "big")

            yield positions

    def copy_record(self, score: bytes, loc: Location) -> Location:
        """Append a copy of the record at *loc* (the same header and stored payload) to the
        log's end; the index names the copy from the next ``sync``. For prune only: the
        caller verified the block and orders copies children first (closure)."""
        self._check_open()
        seg = self._segment_of(loc.position)
        total = RECORD_HEADER_SIZE + loc.stored_len
        for _ in range(4):
            gen = self._read_gen
            try:
                raw = os.pread(self._read_fd(seg), total, loc.position - seg)
                hdr = decode_record_header(raw)
                if hdr.score != score or len(raw) != total:
                    raise CorruptBlock(score, str(_Where(self, seg)), "record does not match the index")
                # Verified before it is copied: a bad block is never spread.
                if score_of(hdr.type, self._decode_payload(hdr, raw[RECORD_HEADER_SIZE:])) != score:
                    raise CorruptBlock(score, str(_Where(self, seg)))
                break
            except (BadRecord, CorruptBlock, OSError):
                if self._read_gen == gen:  # not a descriptor closed under us: real damage
                    raise
        else:
            raise CorruptBlock(score, str(_Where(self, seg)), "could not be read (descriptors churn)")
        with self._wlock:
            if self._cur_size + total > self.segment_size and self._cur_size > SEGMENT_HEADER_SIZE:
                self._roll()
            pos = self._cur_start + self._cur_size
            try:
                _write_all(self._append_fd, raw)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._append_fd, self._cur_size)
                raise
            self._cur_size += total
            new = Location(pos, loc.type, loc.codec, loc.stored_len, loc.raw_len)
            self._pending[score] = new
            self._unsynced_fds.add(self._append_fd)
            self._unsynced_bytes += total
        return new

    def drop_segments(self, starts: list[int]) -> tuple[int, int]:
        """Remove the segments *starts* (never the one being appended to): delete the index
        entries that still point into them (the blocks nobody copied: dead) and name them in
        ``doomed``, in one commit; then unlink the files. Returns (entries deleted, bytes of
        files removed). A kill after the commit is finished by the next open."""
        self._check_open()
        if not starts:
            return 0, 0
        self.sync()
        doomed = set(starts)
        with self._wlock:
            if self._cur_start in doomed:
                raise StoreError("prune cannot remove the segment being appended to")
            sorted_starts = list(self._starts)
        dropped = stored = logical = 0
        with self._env.begin(write=True) as txn:
            cur = txn.cursor(db=self._db)
            for key, val in cur:
                loc = Location.unpack(val)
                seg = sorted_starts[bisect.bisect_right(sorted_starts, loc.position) - 1]
                if seg in doomed:
                    txn.delete(key, db=self._db)
                    dropped += 1
                    stored += RECORD_HEADER_SIZE + loc.stored_len
                    logical += loc.raw_len
            with self._wlock:
                self._blocks -= dropped
                self._stored -= stored
                self._logical -= logical
                counters = (self._blocks, self._stored, self._logical)
            txn.put(_META_BLOCKS, _u64(counters[0]), db=self._meta)
            txn.put(_META_STORED, _u64(counters[1]), db=self._meta)
            txn.put(_META_LOGICAL, _u64(counters[2]), db=self._meta)
            txn.put(_META_DOOMED, b"".join(_u64(x) for x in sorted(doomed)), db=self._meta)
        self._cache = BlockCache(self._cache.max_bytes)
        self._leaves = BlockCache(self._leaves.max_bytes)
        freed = sum(os.path.getsize(self._seg_path(x)) for x in doomed if self._seg_path(x).exists())
        self._finish_drop()
        return dropped, freed

    def _finish_drop(self) -> None:
        """Remove the segments the index's ``doomed`` key names (a prune's last step; also
        run on open, after a kill). A read-only open only stops seeing them."""
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(_META_DOOMED)
        if not raw:
            return
        doomed = {int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8)}
        with self._wlock:
            self._read_gen += 1  # before any file goes: a reader that fails looks again
            self._starts = [x for x in self._starts if x not in doomed or x == self._cur_start]
            for x in doomed:
                fd = self._read_fds.pop(x, None)
                if fd is not None:
                    self._retired_fds.append(fd)  # closed at the next sync
        if self.readonly:
            return
        for x in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._seg_path(x))
        _fsync_dir(self.path / "segments")
        with self._env.begin(write=True, db=self._meta) as txn:
            txn.delete(_META_DOOMED)

    # -- maintenance ------------------------------------------------------------------------

    def check(self, progress: Callable[[int], None] | None = None) -> CheckReport:
        """Read every record of every segment, verify each, and compare with the index.

        Damage never stops the reader (store.logscan resynchronises), so the report names
        exactly the bad records and nothing else. A read-only check (the writer may be
        running) reads the index in one LMDB snapshot and the log only up to the position
        that snapshot covers, so records the writer has not committed yet are not
        mistaken for problems.

        A damaged record is *healed* when its block is whole again elsewhere in the log (the
        index names a good copy: ``grid store repair`` appended one), or when a repair that
        left nothing lost recorded the region in ``repaired`` (a region whose header is
        gone names no block). Healed regions are listed, not counted as problems. Index
        entries that point into no segment file (a segment deleted by hand) are lost
        blocks, and the missing range is reported as a damaged region."""
        self._check_open()
        if not self.readonly:
            self.sync()
        report = CheckReport()
        seen: set[bytes] = set()
        matched: set[bytes] = set()
        found: list[tuple[str, Bad]] = []
        with self._env.begin() as txn:
            raw = txn.get(_META_INDEXED_TO, db=self._meta)
            committed = int.from_bytes(raw, "big") if raw is not None else 0
            end = self.position()
            if self.readonly and committed < end:
                report.unchecked_bytes = end - committed
                end = committed
            for seg, item in self._scan_log(0, end):
                name = self._seg_path(seg).name
                segrep = report.segments.setdefault(name, SegmentReport(name))
                if isinstance(item, Bad):
                    found.append((name, item))
                    if progress is not None:
                        progress(item.end)
                    continue
                hdr = item.header
                segrep.records += 1
                report.records += 1
                report.bytes += hdr.raw_len
                seen.add(hdr.score)
                v = txn.get(hdr.score, db=self._db)
                if v is None:
                    if hdr.score not in self._pending:
                        report.errors.append(
                            f"{format_score(hdr.score)} at {item.position} in {name}: not in the index"
                        )
                elif Location.unpack(v).position == item.position:
                    matched.add(hdr.score)
                if progress is not None:
                    progress(item.position + hdr.total_len)
            with self._wlock:
                starts = list(self._starts)
            extents = []
            for x in starts:
                with contextlib.suppress(FileNotFoundError):
                    extents.append((x, x + self.segment_size_of(x)))
            gaps: dict[tuple[int, int], int] = {}
            pointed: dict[int, list[bytes]] = {}  # index of a damaged region -> blocks it holds
            bounds = sorted(((b.position, b.end, i) for i, (_n, b) in enumerate(found)))
            lows = [b[0] for b in bounds]
            for key, val in txn.cursor(db=self._db):
                report.index_entries += 1
                if key in matched:
                    continue
                pos = Location.unpack(val).position
                j = bisect.bisect_right(lows, pos) - 1
                if j >= 0 and pos < bounds[j][1]:
                    pointed.setdefault(bounds[j][2], []).append(bytes(key))
                    report.lost.add(bytes(key))
                    continue
                gap = _gap_of(extents, pos, max(end, committed))
                if gap is not None:
                    gaps[gap] = gaps.get(gap, 0) + 1
                    report.lost.add(bytes(key))
                elif key not in seen:
                    report.errors.append(
                        f"{format_score(key)}: the index points at {pos}, where no such record is"
                    )
        ledger = read_repaired(self.path)
        for i, (name, b) in enumerate(found):
            segrep = report.segments[name]
            whole = b.score in matched if b.score is not None else (b.position, b.length) in ledger
            if whole and i not in pointed:
                segrep.healed.append(b)
                continue
            segrep.bad.append(b)
            report.errors.append(describe_bad(b, name))
            if b.score is not None and b.score not in seen:
                report.lost.add(b.score)
        for (lo, hi), n in sorted(gaps.items()):
            name = f"{segment_name(lo)} (missing)"
            segrep = report.segments.setdefault(name, SegmentReport(name))
            b = Bad(lo, hi - lo, None, f"no segment file holds log positions {lo}..{hi}, where the "
                    f"index places {n} block(s) (a segment file was deleted)", torn=False)
            segrep.bad.append(b)
            report.errors.append(describe_bad(b, name))
        report.blocks = len(seen)
        return report

    def rebuild_index(self) -> RebuildReport:
        """Recreate the index from the log alone (``grid store check --rebuild``).

        The new index is built beside the old one (``index.new``) and swapped in only when
        complete, so a rebuild that fails, or is killed, leaves the old index as it was."""
        self._check_open()
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        self.sync()
        with self._sync_lock:
            self._env.close()
            self._env = None  # type: ignore[assignment]
            try:
                rep = self._rebuild_aside()
            finally:
                self._open_index()
            with self._wlock:
                self._pending.clear()
                self._cache = BlockCache(self._cache.max_bytes)
                self._leaves = BlockCache(self._leaves.max_bytes)
            self._load_meta()
        self.last_rebuild = rep
        return rep

    def _rebuild_aside(self) -> RebuildReport:
        """Scan the whole log into a new LMDB environment ``index.new``, then swap it in.

        Bad records are skipped (everything that verifies is kept); a torn tail of the last
        segment is moved to ``quarantine/`` and cut off; the index's ``indexed_to`` is the
        end of the log as it then stands, never more."""
        new = self.path / "index.new"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        rep = RebuildReport()
        # Durability comes from the explicit env.sync() before the swap, not per commit.
        env = lmdb.open(str(new), map_size=1 << 40, max_dbs=4, subdir=True, sync=False, metasync=False)
        try:
            db = env.open_db(b"blocks")
            meta = env.open_db(b"meta")
            last = self._starts[-1]
            txn = env.begin(write=True)
            try:
                n = 0
                for seg, item in self._scan_log(0):
                    if isinstance(item, Bad):
                        if item.torn and seg == last:
                            rep.cut.append((item, self._cut_tail_kept(item)))
                            break
                        rep.bad.append((self._seg_path(seg).name, item))
                        continue
                    hdr = item.header
                    rep.records += 1
                    loc = Location(item.position, hdr.type, hdr.codec, hdr.stored_len, hdr.raw_len)
                    # The last copy wins: prune's copies come after the old records, and
                    # only the index's copy keeps every prefix closed (docs/store.md).
                    if txn.replace(hdr.score, loc.pack(), db=db) is None:
                        rep.blocks += 1
                        rep.stored_bytes += hdr.total_len
                        rep.logical_bytes += hdr.raw_len
                    n += 1
                    if n % 50_000 == 0:
                        txn.commit()
                        txn = env.begin(write=True)
                end = self._cur_start + self._cur_size
                rep.missing = self._old_index_missing(txn, db)
                txn.put(_META_INDEXED_TO, _u64(end), db=meta)
                txn.put(_META_BLOCKS, _u64(rep.blocks), db=meta)
                txn.put(_META_STORED, _u64(rep.stored_bytes), db=meta)
                txn.put(_META_LOGICAL, _u64(rep.logical_bytes), db=meta)
                txn.commit()
            except BaseException:
                txn.abort()
                raise
            env.sync(True)
        except BaseException:
            env.close()
            shutil.rmtree(new, ignore_errors=True)
            raise
        env.close()
        (new / _COMPLETE).write_bytes(b"")
        _fsync_dir(new)
        self._swap_index()
        return rep

    def _old_index_missing(self, txn: lmdb.Transaction, db: object) -> int:
        """How many blocks the old index lists that the rebuilt one lacks (0 when the old
        index is gone or unreadable): a rebuild must not call a loss ok."""
        where = self.path / "index"
        if not (where / "data.mdb").exists() or _index_file_problem(where / "data.mdb") is not None:
            return 0
        try:
            old = lmdb.open(str(where), max_dbs=4, readonly=True, lock=False, subdir=True)
        except lmdb.Error:
            return 0
        missing = 0
        try:
            with old.begin() as otxn:
                for key, _ in otxn.cursor(db=old.open_db(b"blocks", txn=otxn, create=False)):
                    if txn.get(key, db=db) is None:
                        missing += 1
        except lmdb.Error:
            return 0
        finally:
            old.close()
        return missing

    def _cut_tail_kept(self, bad: Bad) -> str:
        self._cut_tail(bad)
        return str(_quarantine_path(self.path, self._seg_path(self._starts[-1]), bad.position - self._starts[-1]))

    def _swap_index(self) -> None:
        """index.new (complete) becomes index; crash-safe with _finish_swap at the next open."""
        idx, new, old = self.path / "index", self.path / "index.new", self.path / "index.old"
        shutil.rmtree(old, ignore_errors=True)
        if idx.exists():
            os.rename(idx, old)
        os.rename(new, idx)
        _fsync_dir(self.path)
        os.unlink(idx / _COMPLETE)
        shutil.rmtree(old, ignore_errors=True)

    def _finish_swap(self) -> None:
        """Complete or discard a swap a killed rebuild left (writer only, under the lock)."""
        idx, new, old = self.path / "index", self.path / "index.new", self.path / "index.old"
        if new.exists():
            if (new / _COMPLETE).exists() and not idx.exists():
                os.rename(new, idx)
                _fsync_dir(self.path)
                os.unlink(idx / _COMPLETE)
            else:  # an unfinished rebuild: the old index stands
                shutil.rmtree(new, ignore_errors=True)
        if old.exists() and idx.exists():
            shutil.rmtree(old, ignore_errors=True)

    def statistics(self) -> StoreStats:
        return StoreStats(
            blocks=self._blocks,
            stored_bytes=self._stored,
            logical_bytes=self._logical,
            puts=self._puts,
            dup_puts=self._dups,
            gets=self._gets,
            cache_hits=self._cache.hits + self._leaves.hits,
            position=self.position(),
        )

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self.readonly:
                self.sync()
        finally:
            self._closed = True
            for fd in self._retired_fds:
                os.close(fd)
            self._retired_fds = []
            self._release()


@dataclass
class SegmentReport:
    """One segment's part of a check: records that verify and damaged regions."""

    name: str
    records: int = 0
    bad: list[Bad] = field(default_factory=list)
    healed: list[Bad] = field(default_factory=list)  # damaged, but the block is whole elsewhere


@dataclass
class CheckReport:
    """What ``check`` found: counts, damaged regions per segment, and every problem as a line
    naming a score or a position."""

    records: int = 0
    blocks: int = 0
    bytes: int = 0
    index_entries: int = 0
    unchecked_bytes: int = 0  # past what the index has committed (a running writer's tail)
    errors: list[str] = field(default_factory=list)
    segments: dict[str, SegmentReport] = field(default_factory=dict)
    lost: set[bytes] = field(default_factory=set)  # blocks whose only record is damaged

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def bad_records(self) -> int:
        return sum(len(s.bad) for s in self.segments.values())

    @property
    def healed_records(self) -> int:
        return sum(len(s.healed) for s in self.segments.values())


@dataclass
class RebuildReport:
    """What a rebuild kept and what it skipped: bad records stay in the log (reported, for
    ``check`` and a later repair); a torn tail is cut, its bytes kept in quarantine/."""

    records: int = 0
    blocks: int = 0
    stored_bytes: int = 0
    logical_bytes: int = 0
    bad: list[tuple[str, Bad]] = field(default_factory=list)
    cut: list[tuple[Bad, str]] = field(default_factory=list)
    missing: int = 0  # blocks the old index listed that no record in the log now holds


def describe_bad(bad: Bad, segment: str) -> str:
    """One line for a damaged region: where, how long, which block if known, why."""
    what = f"block {format_score(bad.score)}" if bad.score is not None else "a record"
    return (
        f"{segment} at {bad.position}: {what} is damaged ({bad.reason}); "
        f"{bad.length} bytes skipped{' (torn end of the segment)' if bad.torn else ''}"
    )


REPAIRED = "repaired"  # damaged regions a complete repair accounted for: "POSITION LENGTH" lines


def read_repaired(store: Path) -> set[tuple[int, int]]:
    """The damaged regions (position, length) recorded by a repair that left nothing lost."""
    try:
        text = (store / REPAIRED).read_text()
    except FileNotFoundError:
        return set()
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out.add((int(parts[0]), int(parts[1])))
    return out


def record_repaired(store: Path, regions: list[tuple[int, int]]) -> None:
    """Add *regions* to the ledger (write a temporary file, fsync, rename)."""
    have = read_repaired(store) | set(regions)
    tmp = store / (REPAIRED + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(f"{p} {n}\n" for p, n in sorted(have)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, store / REPAIRED)
    _fsync_dir(store)


def _gap_of(extents: list[tuple[int, int]], pos: int, limit: int) -> tuple[int, int] | None:
    """The range of log positions no segment file holds that contains *pos*, or None when a
    segment holds *pos* or it lies past *limit* (what the index covers)."""
    lo = 0
    for start, stop in extents:
        if pos < start:
            return (lo, start)
        if pos < stop:
            return None
        lo = stop
    return (lo, limit) if pos < limit else None


def _quarantine_path(store: Path, seg: Path, off: int) -> Path:
    return store / "quarantine" / f"{seg.stem}.{off:012x}.tail"


def _quarantine(store: Path, seg: Path, off: int, length: int) -> Path:
    """Copy *length* bytes of *seg* at *off* to quarantine/ and make the copy durable before
    anyone cuts them from the log: repair never deletes bytes (docs/store.md)."""
    dest = _quarantine_path(store, seg, off)
    dest.parent.mkdir(exist_ok=True)
    with open(seg, "rb") as src, open(dest, "wb") as out:
        src.seek(off)
        remaining = length
        while remaining > 0:
            chunk = src.read(min(remaining, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    _fsync_dir(dest.parent)
    return dest


def _index_file_problem(data: Path) -> str | None:
    """Why LMDB must not map *data* (a data.mdb), or None when its meta pages look sound.

    The two meta pages at the start say the page size and the last page in use; the file
    must hold every page the newer valid meta names. Offsets are LMDB's on-disk layout
    (page header 16 bytes, then MDB_meta: magic, version, address, mapsize, two MDB_db
    records, last page, txnid)."""
    try:
        size = os.stat(data).st_size
    except FileNotFoundError:
        return None  # a writer creates it; a reader gets LMDB's own clean error
    if size == 0:
        return "data.mdb is empty"
    with open(data, "rb") as f:
        head = f.read(2 * 65536)
    metas = []
    psize = int.from_bytes(head[40:44], "little") if len(head) >= 44 else 0
    if psize < 512 or psize > 65536 or psize & (psize - 1):
        return "data.mdb has no valid meta page"
    if size < 2 * psize:
        return f"data.mdb is {size} bytes, shorter than its two meta pages"
    for page in (0, 1):
        m = head[page * psize : page * psize + 152]
        if len(m) < 152 or int.from_bytes(m[16:20], "little") != _MDB_MAGIC:
            continue
        last_pg = int.from_bytes(m[136:144], "little")
        txnid = int.from_bytes(m[144:152], "little")
        metas.append((txnid, last_pg))
    if not metas:
        return "data.mdb has no valid meta page"
    _txnid, last_pg = max(metas)
    if size < (last_pg + 1) * psize:
        return f"data.mdb is {size} bytes but its pages reach {(last_pg + 1) * psize}"
    return None


class _Where:
    """The segment a block was read from, as text only when an error message asks for it."""

    __slots__ = ("seg", "store")

    def __init__(self, store: LocalStore, seg: int) -> None:
        self.store, self.seg = store, seg

    def __str__(self) -> str:
        return f"segment {self.store._seg_path(self.seg)}"


def _open_env(path: str, **kw: object) -> lmdb.Environment:
    try:
        return lmdb.open(path, **kw)  # type: ignore[arg-type]
    except lmdb.Error as e:
        why = str(e).removeprefix(f"{path}: ")
        raise StoreError(
            f"cannot open the store index {path} ({why}); run `grid store check --rebuild` "
            "to recreate it from the log"
        ) from None


def _write_all(fd: int, *parts: bytes) -> None:
    buf = memoryview(b"".join(parts))
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
