"""Incremental replication of blocks and names to and from one peer (ventiprog + scorecopy).

Push, per peer:

1. read the local log from the peer's cursor (the local log position the peer has
   acknowledged as synced), in batches;
2. ask the peer which scores of a batch it lacks (``has``, batched) and send only those, in
   log order. A log prefix is closed under reference (invariant 2), so children always go
   before parents and the peer's closure check never refuses a replicated block;
3. every ``SYNC_BYTES`` and at the end, ask the peer to sync, and only then move the cursor
   (durably: fsync + rename). A kill at any moment loses at most the work since the last
   sync, which the next run redoes; blocks already there are skipped by ``has``;
4. send the name records the peer lacks; the peer records one only when its root block is
   present (invariant 4).

Pull is the mirror image for nodes that cannot accept connections: list the peer's log past
the pull cursor (a position in the *peer's* log) over the control connection, fetch the
blocks this store lacks (each verified against its score on arrival), sync, move the cursor,
then merge the peer's names whose roots are present.

A corrupt record in the sender's log stops the run at that record, naming its score; what
came before it is synced and acknowledged, nothing after it is sent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ndb.errors import NdbError
from ndb.names import NameDB, NameSet
from replication.control import MERGE_MAX, MERGE_MAX_RECORDS, ControlClient, ControlError
from replication.listener import check_peer_records, merge_present, parse_forgets, parse_names
from store.base import BlockStore, LogRecord
from store.block import BlockType
from store.client import RemoteStore
from store.errors import CorruptBlock, StoreError
from store.wire import Twrite

BATCH_BLOCKS = 1024  # records per has-query round
BATCH_BYTES = 8 << 20  # payload bytes per round
SYNC_BYTES = 256 << 20  # bytes sent between syncs (and cursor moves)
IN_FLIGHT = 3  # batches of writes sent but not yet answered

PUSH = "push"
PULL = "pull"


class ReplicationError(Exception):
    """A replication run failed; the message says what and, where it applies, which block."""


class Busy(ReplicationError):
    """Another replication run holds the lock."""


@dataclass(slots=True)
class Stats:
    """What one run did with one peer (the summary line)."""

    peer: str
    mode: str
    scanned: int = 0  # log records looked at
    blocks: int = 0  # blocks sent (push) or fetched (pull)
    bytes: int = 0  # payload bytes of those
    names: int = 0  # name records added on the receiver
    skipped_names: int = 0  # records the receiver refused (root block absent)
    seconds: float = 0.0
    cursor: int = 0  # the cursor after the run

    def line(self) -> str:
        mbps = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        arrow = "->" if self.mode == PUSH else "<-"
        s = (f"{arrow} {self.peer}: {self.blocks} blocks ({self.scanned} scanned), "
             f"{self.bytes} bytes, {mbps:.1f} MB/s, {self.names} names")
        if self.skipped_names:
            s += f" ({self.skipped_names} skipped: root absent)"
        return s

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


class Cursors:
    """Per-peer cursors in one small JSON file, replaced atomically (write, fsync, rename,
    fsync the directory), so a crash leaves either the old cursors or the new ones."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, int]]:
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {PUSH: {}, PULL: {}}
        except (OSError, ValueError) as e:
            raise ReplicationError(f"{self.path}: unreadable cursors file: {e}") from None
        if not isinstance(raw, dict):
            raise ReplicationError(f"{self.path}: unreadable cursors file: not an object")
        out: dict[str, dict[str, int]] = {PUSH: {}, PULL: {}}
        for mode in (PUSH, PULL):
            for peer, pos in dict(raw.get(mode, {})).items():
                if not isinstance(pos, int) or pos < 0:
                    raise ReplicationError(f"{self.path}: bad {mode} cursor for {peer!r}")
                out[mode][str(peer)] = pos
        return out

    def get(self, mode: str, peer: str) -> int:
        return self.load()[mode].get(peer, 0)

    def set(self, mode: str, peer: str, pos: int) -> None:
        data = self.load()
        data[mode][peer] = pos
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def run_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock for one replication run; Busy at once if another holds it.

    flock is released by the kernel when the holder dies, so a SIGKILLed run never leaves a
    stale lock behind; the holder's pid is written into the file for the message."""
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Busy(f"another grid replicate is running (pid {holder}); "
                       "this run does nothing") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class RateLimit:
    """Keeps the average rate at or under *rate* bytes/s (None: no limit) by sleeping."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.spent = 0

    def spend(self, n: int) -> None:
        if not self.rate:
            return
        self.spent += n
        ahead = self.spent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


Progress = Callable[[int], None]


def _batches(records: Iterator[LogRecord]) -> Iterator[list[LogRecord]]:
    batch: list[LogRecord] = []
    size = 0
    for rec in records:
        batch.append(rec)
        size += len(rec.data)
        if len(batch) >= BATCH_BLOCKS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def push_blocks(source: Any, remote: BlockStore, stats: Stats, start: int,
                acknowledge: Callable[[int], None], *, progress: Progress | None = None,
                limit: RateLimit | None = None) -> None:
    """Send the blocks of *source*'s log past *start* that *remote* lacks.

    *source* has ``position()`` and ``iter_log(start)`` (a LocalStore, read-only is fine).
    ``acknowledge(pos)`` is called after each remote sync with the log position every block
    before which the peer now holds durably.

    Reading (and verifying) the log runs in a thread of its own, two batches ahead. Writes
    are sent from this thread, in log order, without waiting for their replies: up to
    ``IN_FLIGHT`` batches are on the wire or being stored by the peer while the next batch's
    has-query goes out, so the two ends work at the same time instead of taking turns.
    Only this thread sends writes, so they leave in log order, and the server applies one
    connection's writes in arrival order: closure holds across batches.
    """
    end = source.position()
    if start > end:
        raise ReplicationError(
            f"the cursor for {stats.peer} ({start}) is past this store's log end ({end}); "
            "was the store replaced? run with --full")
    synced = start
    unsynced = 0
    sent_to = start  # every block before this position is written (not yet synced)
    pending: deque[tuple[Callable[[], None], int, int]] = deque()  # (wait, end pos, bytes)
    corrupt: CorruptBlock | None = None

    def settle(keep: int) -> None:
        nonlocal sent_to, unsynced
        while len(pending) > keep:
            wait, pos, n = pending.popleft()
            wait()  # the first refused write raises here; nothing past it is acked
            sent_to = pos
            unsynced += n
            if progress is not None:
                progress(n)

    try:
        for batch in _read_ahead(_batches(_until(source.iter_log(start), end))):
            if isinstance(batch, CorruptBlock):
                corrupt = batch
                break
            stats.scanned += len(batch)
            lacking = set(remote.missing([r.score for r in batch]))
            send = [r for r in batch if r.score in lacking]
            n = sum(len(r.data) for r in send)
            stats.blocks += len(send)
            stats.bytes += n
            pending.append((_put_nowait(remote, send), batch[-1].next_position, n))
            settle(keep=IN_FLIGHT)
            if limit is not None:
                limit.spend(n)
            if unsynced >= SYNC_BYTES:
                settle(keep=0)
                remote.sync()
                acknowledge(sent_to)
                synced, unsynced = sent_to, 0
        settle(keep=0)
    finally:
        with contextlib.suppress(StoreError):  # already failing: settle what was sent
            settle(keep=0)
    if sent_to != synced or sent_to == start:
        remote.sync()
        acknowledge(sent_to)
    stats.cursor = sent_to
    if corrupt is not None:
        raise ReplicationError(
            f"corrupt block {corrupt.score.hex()} in this node's log ({corrupt.where}): not "
            "sent; blocks before it are replicated (run `grid store check`)")


def _put_nowait(remote: BlockStore, records: list[LogRecord]) -> Callable[[], None]:
    """Send writes of *records* in order and return a function that waits for their replies
    (raising the first refusal, after the whole batch has settled).

    store.client.RemoteStore's public put_many waits for its replies, which would make the
    two ends take turns; its request machinery (``_submit_many``, ``_collect``,
    ``_wait_put``) already separates sending from waiting, so this uses it, with the scores
    the verified log records carry (no second hash). Any other store gets put_many."""
    if not records:
        return lambda: None
    submit = getattr(remote, "_submit_many", None)
    if submit is None:
        remote.put_many([(r.type, r.data) for r in records])
        return lambda: None
    futs = submit([lambda tag, r=r: Twrite(tag=tag, btype=int(r.type), data=r.data)
                   for r in records])

    def wait() -> None:
        remote._collect([lambda f=f, s=r.score: remote._wait_put(f, s)  # type: ignore[attr-defined]
                         for f, r in zip(futs, records, strict=True)])

    return wait


def _read_ahead(batches: Iterator[list[LogRecord]], depth: int = 2) -> Iterator[
        list[LogRecord] | CorruptBlock]:
    """*batches*, produced by a thread of their own up to *depth* ahead; a CorruptBlock met
    while reading is handed over in order, as the last item, instead of being raised there."""
    q: queue.Queue[list[LogRecord] | CorruptBlock | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except CorruptBlock as e:
            q.put(e)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    t = threading.Thread(target=produce, name="push-read", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, CorruptBlock):
                yield item
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def _until(records: Iterator[LogRecord], end: int) -> Iterator[LogRecord]:
    """The records that start before *end* (the log as it was when the run began)."""
    for rec in records:
        if rec.position >= end:
            return
        yield rec


def pull_blocks(ctl: ControlClient, remote: BlockStore, local: BlockStore, stats: Stats,
                start: int, acknowledge: Callable[[int], None], *,
                progress: Progress | None = None, limit: RateLimit | None = None) -> None:
    """Fetch the blocks of the peer's log past *start* that *local* lacks, in log order.

    Each block is verified against its score as it arrives (RemoteStore.get_many) and again
    by the local store's put; ``acknowledge(pos)`` after each local sync."""
    pos = synced = start
    unsynced = 0
    while True:
        records, end = ctl.log(pos)  # checked: every record lies past pos (control.parse_log_reply)
        if not records:
            break
        stats.scanned += len(records)
        lacking = set(local.missing([s for _, _, s in records]))
        want = [s for _, _, s in records if s in lacking]
        for i in range(0, len(want), 256):
            blocks = remote.get_many(want[i:i + 256])
            local.put_many([(BlockType(b.type), b.data) for b in blocks])
            n = sum(len(b.data) for b in blocks)
            stats.blocks += len(blocks)
            stats.bytes += n
            unsynced += n
            if progress is not None:
                progress(n)
            if limit is not None:
                limit.spend(n)
        pos = records[-1][1]
        if unsynced >= SYNC_BYTES:
            local.sync()
            acknowledge(pos)
            synced, unsynced = pos, 0
        if pos >= end:
            break
    if pos != synced or pos == start:
        local.sync()
        acknowledge(pos)
    stats.cursor = pos


def push_names(ctl: ControlClient, local: NameSet, stats: Stats) -> None:
    """Offer the peer the local name records it lacks."""
    text = ctl.names()
    theirs = NameSet.of(parse_names(text, f"names of {stats.peer}"),
                        parse_forgets(text, f"names of {stats.peer}"))
    lacking = NameSet(local.records - theirs.records, local.forgets - theirs.forgets)
    chunk: list[str] = []
    size = 0
    # The receiver refuses a merge over control.MERGE_MAX bytes: send it in pieces.
    for line in lacking.to_text().splitlines(keepends=True):
        if chunk and (size + len(line.encode("utf-8")) > MERGE_MAX or len(chunk) >= MERGE_MAX_RECORDS):
            _merge(ctl, "".join(chunk), stats)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line.encode("utf-8"))
    if chunk:
        _merge(ctl, "".join(chunk), stats)


def _merge(ctl: ControlClient, text: str, stats: Stats) -> None:
    added, skipped = ctl.merge(text)
    stats.names += added
    stats.skipped_names += len(skipped)


def pull_names(ctl: ControlClient, names: NameDB, store: BlockStore, stats: Stats) -> None:
    """Merge the peer's name records this node lacks, those whose root block it holds."""
    text = ctl.names()
    theirs = parse_names(text, f"names of {stats.peer}")
    check_peer_records(theirs, f"names of {stats.peer}")
    added, skipped = merge_present(names, store, theirs, parse_forgets(text, f"names of {stats.peer}"))
    stats.names += len(added)
    stats.skipped_names += len(skipped)


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed exchange with a peer, in the user's terms."""
    text = str(exc)
    low = text.lower()
    if "certificate verify failed" in low:
        return f"the peer's certificate is not from this grid's CA ({text})"
    if "alert" in low and ("certificate" in low or "unknown ca" in low):
        return f"the peer refused this node's certificate ({text})"
    if "during hello" in low or "connection reset" in low or "eof occurred" in low:
        return ("the peer closed the connection at once: it refuses this node (does it list "
                f"this node as a peer, and is this node's certificate from its CA?) ({text})")
    if "no space left" in low or "errno 28" in low:
        return f"the receiving disk is full ({text})"
    if isinstance(exc, StoreError | OSError):
        return text
    return f"{type(exc).__name__}: {text}"


def split_addr(addr: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) as (host, port); ReplicationError otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ReplicationError(f"bad peer address {addr!r}: want HOST:PORT")
    return host.strip("[]"), int(port)


def connect(name: str, addr: str, ctx: ssl.SSLContext, *, me: str = "",
            timeout: float = 30.0) -> tuple[RemoteStore, ControlClient]:
    """A block connection and a control connection to peer *name* at *addr*, over mutual TLS;
    the peer's certificate must name *name*. ReplicationError with the reason otherwise."""
    host, port = split_addr(addr)
    try:
        remote = RemoteStore.connect_tcp(host, port, ctx, server_hostname=name, name=me,
                                         connect_timeout=timeout)
    except (StoreError, OSError) as e:
        raise ReplicationError(f"cannot reach {name} at {addr}: {describe(e)}") from None
    try:
        ctl = ControlClient.connect(host, port, ctx, name, timeout=timeout)
    except (OSError, ControlError) as e:
        remote.close()
        raise ReplicationError(f"cannot reach {name} at {addr}: {describe(e)}") from None
    return remote, ctl


def replicate_peer(name: str, addr: str, ctx: ssl.SSLContext, *, mode: str, store_path: Path,
                   writer: Callable[[], BlockStore] | None, names: NameDB, cursors: Cursors,
                   me: str = "", full: bool = False, progress: Progress | None = None,
                   limit: RateLimit | None = None) -> Stats:
    """One push or pull with one peer; ReplicationError (cursor kept at the last sync) on
    any failure. *writer* opens the local store for writing (pull only)."""
    from store.local import LocalStore

    stats = Stats(peer=name, mode=mode)
    t0 = time.monotonic()
    start = 0 if full else cursors.get(mode, name)
    remote, ctl = connect(name, addr, ctx, me=me)
    try:
        def ack(pos: int) -> None:
            cursors.set(mode, name, pos)

        if mode == PUSH:
            source = LocalStore.open(store_path, readonly=True)
            try:
                push_blocks(source, remote, stats, start, ack, progress=progress, limit=limit)
            finally:
                source.close()
            push_names(ctl, names.all(), stats)
        else:
            assert writer is not None
            local = writer()
            try:
                pull_blocks(ctl, remote, local, stats, start, ack, progress=progress,
                            limit=limit)
                pull_names(ctl, names, local, stats)
            finally:
                local.close()
    except ReplicationError:
        raise
    except ControlError as e:
        what = f"corrupt block {e.score} on {name}" if e.score else describe(e)
        raise ReplicationError(f"{name}: {what}") from None
    except (StoreError, OSError, NdbError) as e:
        raise ReplicationError(f"{name}: {describe(e)}") from None
    finally:
        ctl.close()
        remote.close()
    stats.seconds = time.monotonic() - t0
    return stats
