"""A byte-bounded LRU of verified blocks, so hot interior blocks are not re-read and re-hashed."""

from __future__ import annotations

import threading
from collections import OrderedDict

from store.block import Block


class BlockCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, Block] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, score: bytes) -> Block | None:
        with self._lock:
            blk = self._items.get(score)
            if blk is None:
                self.misses += 1
                return None
            self._items.move_to_end(score)
            self.hits += 1
            return blk

    def put(self, score: bytes, blk: Block) -> None:
        size = len(blk.data) + 64
        if size > self.max_bytes:
            return
        with self._lock:
            if score in self._items:
                self._items.move_to_end(score)
                return
            self._items[score] = blk
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.data) + 64

    def __len__(self) -> int:
        return len(self._items)
