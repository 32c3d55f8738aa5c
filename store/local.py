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
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import zstandard

from store.base import BlockStore, LogRecord, StoreStats
from store.block import Block, BlockType
from store.cache import BlockCache
from store.errors import BlockNotFound, CorruptBlock, StoreClosed, StoreError, StoreLocked
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
DEFAULT_SEGMENT_SIZE = 1 << 30
AUTO_SYNC_BYTES = 256 << 20  # bound the unindexed tail (and the work of recovery)
_META_INDEXED_TO = b"indexed_to"
_META_BLOCKS = b"blocks"
_META_STORED = b"stored_bytes"
_META_LOGICAL = b"logical_bytes"


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
        self._cache = BlockCache(cache_bytes)
        self._puts = self._dups = self._gets = 0
        self._blocks = self._stored = self._logical = 0
        self._starts: list[int] = []
        self._append_fd = -1
        self._cur_start = 0
        self._cur_size = 0
        if not readonly:
            self._take_lock()
        try:
            self._env = _open_env(
                str(path / "index"),
                map_size=1 << 40,
                max_dbs=4,
                readonly=readonly,
                readahead=False,
                subdir=True,
            )
            self._db = self._env.open_db(b"blocks", create=not readonly)
            self._meta = self._env.open_db(b"meta", create=not readonly)
            self._load_segments()
            self._load_meta()
            if not readonly:
                self._recover()
        except BaseException:
            self._release()
            raise

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
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        cache_bytes: int = 16 << 20,
        compress_level: int = 3,
    ) -> LocalStore:
        p = Path(path)
        fmt = p / "FORMAT"
        if not fmt.is_file():
            raise StoreError(f"no block store at {p} (run `grid init`)")
        if fmt.read_text() != FORMAT_LINE:
            raise StoreError(f"store {p} has an unknown format {fmt.read_text().strip()!r}")
        return cls(
            p,
            readonly=readonly,
            segment_size=segment_size,
            cache_bytes=cache_bytes,
            compress_level=compress_level,
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
        if getattr(self, "_env", None) is not None:
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
        """Index the log beyond ``indexed_to``; drop a torn tail in the last segment."""
        end = self.position()
        if self._indexed_to > end:
            raise StoreError(
                f"store {self.path}: index covers log position {self._indexed_to} but the log "
                f"ends at {end}; run `grid store check --rebuild`"
            )
        added = self._index_log_from(self._indexed_to)
        if added:
            log.info("store %s: re-indexed %d record(s) from the log tail", self.path, added)

    def _index_log_from(self, start: int) -> int:
        """Verify and index every record from *start* that the index lacks, truncate a torn
        tail, then sync. Returns how many records were added."""
        added = 0
        for pos, hdr, ok in self._scan(start, verify=True, tolerate_tail=True):
            if not ok:
                self._truncate_tail(pos)
                break
            if hdr.score not in self._pending and self._index_get(hdr.score) is None:
                self._pending[hdr.score] = Location(pos, hdr.type, hdr.codec, hdr.stored_len, hdr.raw_len)
                self._blocks += 1
                self._stored += hdr.total_len
                self._logical += hdr.raw_len
                added += 1
        self._unsynced_fds.add(self._append_fd)
        self.sync()
        return added

    def _truncate_tail(self, rec_pos: int) -> None:
        start = self._starts[-1]
        off = rec_pos - start
        dropped = self._cur_size - off
        log.warning("store %s: dropping a torn record at %d (%d bytes)", self.path, rec_pos, dropped)
        os.ftruncate(self._append_fd, off)
        os.fsync(self._append_fd)
        self._cur_size = off

    def _scan(self, start: int, *, verify: bool, tolerate_tail: bool) -> Iterator[tuple[int, RecordHeader | None, bool]]:
        """Yield (position, header, ok) for records from *start*; see iter_log for the reader."""
        for pos, hdr, payload, err in self._records(start):
            if err is not None:
                last_seg = self._segment_of(pos) == self._starts[-1]
                if tolerate_tail and last_seg:
                    yield pos, None, False
                    return
                raise CorruptBlock(
                    hdr.score if hdr is not None else bytes(32),
                    f"segment {self._seg_path(self._segment_of(pos)).name} at {pos}",
                    err,
                )
            if verify:
                try:
                    data = self._decode_payload(hdr, payload)
                    ok = score_of(hdr.type, data) == hdr.score
                except CorruptBlock:
                    ok = False
                if not ok:
                    if tolerate_tail and self._segment_of(pos) == self._starts[-1]:
                        yield pos, hdr, False
                        return
                    raise CorruptBlock(
                        hdr.score, f"segment {self._seg_path(self._segment_of(pos)).name} at {pos}"
                    )
            yield pos, hdr, True

    def _records(self, start: int) -> Iterator[tuple[int, RecordHeader | None, bytes, str | None]]:
        """Raw records from log position *start*: (pos, header|None, stored payload, error)."""
        with self._wlock:
            starts = list(self._starts)
            cur_start, cur_size = self._cur_start, self._cur_size
        i = max(0, bisect.bisect_right(starts, start) - 1)
        for seg_start in starts[i:]:
            path = self._seg_path(seg_start)
            end = cur_size if seg_start == cur_start else os.path.getsize(path)
            with open(path, "rb", buffering=1 << 20) as f:
                head = f.read(SEGMENT_HEADER_SIZE)
                try:
                    if decode_segment_header(head) != seg_start:
                        raise BadRecord("segment header names another start")
                except BadRecord as e:
                    yield seg_start, None, b"", f"segment {path.name}: {e}"
                    return
                off = max(SEGMENT_HEADER_SIZE, start - seg_start)
                f.seek(off)
                while off < end:
                    pos = seg_start + off
                    raw = f.read(RECORD_HEADER_SIZE)
                    if len(raw) < RECORD_HEADER_SIZE or off + RECORD_HEADER_SIZE > end:
                        yield pos, None, b"", "record header truncated"
                        return
                    try:
                        hdr = decode_record_header(raw)
                    except BadRecord as e:
                        yield pos, None, b"", str(e)
                        return
                    payload = f.read(hdr.stored_len)
                    if len(payload) < hdr.stored_len or off + hdr.total_len > end:
                        yield pos, hdr, b"", "record payload truncated"
                        return
                    yield pos, hdr, payload, None
                    off += hdr.total_len

    def _segment_of(self, pos: int) -> int:
        i = bisect.bisect_right(self._starts, pos) - 1
        return self._starts[max(i, 0)]

    # -- reading ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")

    def _index_get(self, score: bytes) -> Location | None:
        with self._env.begin(db=self._db) as txn:
            v = txn.get(score)
        return Location.unpack(v) if v is not None else None

    def _locate(self, score: bytes) -> Location | None:
        loc = self._pending.get(score)
        if loc is None:
            loc = self._index_get(score)
        return loc

    def has(self, score: bytes) -> bool:
        self._check_open()
        return self._locate(bytes(score)) is not None

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
                    self._read_fds[seg_start] = fd
        return fd

    def _decode_payload(self, hdr: RecordHeader, payload: bytes) -> bytes:
        if hdr.codec == CODEC_RAW:
            return payload
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
        if blk is not None:
            return blk
        loc = self._locate(score)
        if loc is None:
            raise BlockNotFound(score)
        seg = self._segment_of(loc.position)
        where = _Where(self, seg)  # formatted only if an error needs it
        total = RECORD_HEADER_SIZE + loc.stored_len
        raw = os.pread(self._read_fd(seg), total, loc.position - seg)
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
        if hdr.type != BlockType.DATA:
            self._cache.put(score, blk)
        return blk

    # -- writing ----------------------------------------------------------------------------

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
        """Verified records from *start*; a corrupt record raises CorruptBlock naming it."""
        self._check_open()
        for pos, hdr, payload, err in self._records(start):
            if err is not None:
                if self.readonly and self._segment_of(pos) == self._starts[-1]:
                    return  # the writer is mid-append
                raise CorruptBlock(
                    hdr.score if hdr is not None else bytes(32),
                    f"segment {self._seg_path(self._segment_of(pos)).name} at {pos}",
                    err,
                )
            where = f"segment {self._seg_path(self._segment_of(pos)).name} at {pos}"
            try:
                data = self._decode_payload(hdr, payload)
            except CorruptBlock as e:
                raise CorruptBlock(hdr.score, where, str(e)) from None
            if score_of(hdr.type, data) != hdr.score:
                raise CorruptBlock(hdr.score, where)
            yield LogRecord(pos, pos + hdr.total_len, Score(hdr.score), BlockType(hdr.type), data)

    # -- maintenance ------------------------------------------------------------------------

    def check(self, progress: object = None) -> CheckReport:
        """Verify every record of the log and every index entry against it."""
        self._check_open()
        report = CheckReport()
        seen: set[bytes] = set()
        try:
            for rec in self.iter_log(0):
                report.records += 1
                report.bytes += len(rec.data)
                seen.add(rec.score)
                loc = self._locate(rec.score)
                if loc is None:
                    report.errors.append(f"{format_score(rec.score)} at {rec.position}: not in the index")
                if progress is not None:
                    progress(rec.next_position)  # type: ignore[operator]
        except CorruptBlock as e:
            report.errors.append(str(e))
        with self._env.begin(db=self._db) as txn:
            for key, val in txn.cursor():
                report.index_entries += 1
                if key not in seen:
                    loc = Location.unpack(val)
                    report.errors.append(
                        f"{format_score(key)}: index points at {loc.position}, where no such record is"
                    )
        report.blocks = len(seen)
        return report

    def rebuild_index(self) -> int:
        """Recreate the index from the log alone (``grid store check --rebuild``)."""
        self._check_open()
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        with self._sync_lock, self._wlock:
            self._pending.clear()
            with self._env.begin(write=True) as txn:
                txn.drop(self._db, delete=False)
                txn.drop(self._meta, delete=False)
            self._indexed_to = 0
            self._blocks = self._stored = self._logical = 0
            self._cache = BlockCache(self._cache.max_bytes)
        self._index_log_from(0)
        return self._blocks

    def statistics(self) -> StoreStats:
        return StoreStats(
            blocks=self._blocks,
            stored_bytes=self._stored,
            logical_bytes=self._logical,
            puts=self._puts,
            dup_puts=self._dups,
            gets=self._gets,
            cache_hits=self._cache.hits,
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


class CheckReport:
    """What ``check`` found: counts and a list of problems, each naming a score or position."""

    def __init__(self) -> None:
        self.records = 0
        self.blocks = 0
        self.bytes = 0
        self.index_entries = 0
        self.errors: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.errors


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
        raise StoreError(f"cannot open the store index {path}: {e}") from None


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
