"""A store in memory: for tests, caches and as the model the contract suite checks against."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from store.base import BlockStore, LogRecord, StoreStats
from store.block import Block, BlockType
from store.errors import BlockNotFound, CorruptBlock, StoreClosed
from store.score import Score, score_of


class MemoryStore(BlockStore):
    """Blocks in a dict; the log is the insertion order, positions count records."""

    def __init__(self, *, verify: bool = True) -> None:
        self._blocks: dict[bytes, tuple[BlockType, bytes]] = {}
        self._log: list[bytes] = []
        self._lock = threading.Lock()
        self._verify = verify
        self._closed = False
        self._puts = self._dups = self._gets = 0
        self._logical = 0

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("memory store is closed")

    def _put_if_absent_fast(self, score: Score) -> bool:
        self._check_open()
        with self._lock:
            self._puts += 1
            if score in self._blocks:
                self._dups += 1
                return True
            return False

    def _store(self, score: Score, btype: BlockType, payload: bytes) -> None:
        with self._lock:
            if score in self._blocks:
                return
            self._blocks[score] = (btype, payload)
            self._log.append(score)
            self._logical += len(payload)

    def get(self, score: bytes) -> Block:
        self._check_open()
        with self._lock:
            self._gets += 1
            item = self._blocks.get(bytes(score))
        if item is None:
            raise BlockNotFound(bytes(score))
        btype, data = item
        if self._verify and score_of(btype, data) != score:
            raise CorruptBlock(bytes(score), "memory")
        return Block(btype, data)

    def has(self, score: bytes) -> bool:
        self._check_open()
        return bytes(score) in self._blocks

    def sync(self) -> None:
        self._check_open()

    def position(self) -> int:
        return len(self._log)

    def iter_log(self, start: int = 0) -> Iterator[LogRecord]:
        self._check_open()
        pos = start
        while True:
            with self._lock:
                if pos >= len(self._log):
                    return
                score = self._log[pos]
                btype, data = self._blocks[score]
            yield LogRecord(pos, pos + 1, Score(score), btype, data)
            pos += 1

    def statistics(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                blocks=len(self._blocks),
                stored_bytes=self._logical,
                logical_bytes=self._logical,
                puts=self._puts,
                dup_puts=self._dups,
                gets=self._gets,
                cache_hits=0,
                position=len(self._log),
            )

    def close(self) -> None:
        self._closed = True

    def corrupt(self, score: bytes, data: bytes) -> None:
        """Replace a block's bytes without changing its score (for tests of verification)."""
        btype, _ = self._blocks[bytes(score)]
        self._blocks[bytes(score)] = (btype, data)
