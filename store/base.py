"""The one interface every block store implements (memory, local, remote).

A store is synchronous and thread-safe. Async callers (the node daemon, exporters) run
store calls in a thread; this keeps one contract suite for every implementation and lets the
CPU-heavy work (hashing, compression) run in threads that release the GIL.

``put`` is where the invariants live, once, for every implementation:
type and size checks, the score computed from (type, payload), dedup (writing a present
block costs one lookup), and closure (a non-DATA block is refused while any block it
references is absent). Implementations supply the raw primitives ``_lookup``/``_store``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from store.block import Block, BlockType, check_size, check_type, references
from store.errors import MissingReference
from store.score import Score, score_of


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of a store's counters (trio-style ``statistics()``)."""

    blocks: int  # distinct blocks held
    stored_bytes: int  # bytes on disk / in memory (after compression, with record headers)
    logical_bytes: int  # payload bytes of the distinct blocks
    puts: int  # put calls since open
    dup_puts: int  # puts of blocks already present (dedup hits)
    gets: int  # get calls since open
    cache_hits: int  # gets answered from a cache without I/O
    position: int  # log position (end)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One block as it stands in a store's log: replication reads these past a cursor."""

    position: int  # where the record starts
    next_position: int  # where the next one starts (the cursor after this record)
    score: Score
    type: BlockType
    data: bytes


class BlockStore(abc.ABC):
    """A content-addressed store of typed blocks."""

    def put(self, btype: int, data: bytes | bytearray | memoryview) -> Score:
        """Store a block and return its score; a present block is not written again.

        Raises InvalidBlock (bad type, oversize, malformed reference list) and
        MissingReference (closure) without storing anything.
        """
        bt = check_type(btype)
        check_size(data)
        payload = bytes(data)
        score = score_of(bt, payload)
        if self._put_if_absent_fast(score):
            return score
        if bt != BlockType.DATA:
            refs = references(bt, payload)
            if refs:
                missing = self.missing(refs)
                if missing:
                    raise MissingReference(missing)
        self._store(score, bt, payload)
        return score

    def put_many(self, blocks: Iterable[tuple[int, bytes]]) -> list[Score]:
        """Store several blocks in order (a remote store pipelines them)."""
        return [self.put(t, d) for t, d in blocks]

    @abc.abstractmethod
    def get(self, score: bytes) -> Block:
        """Return the verified block; BlockNotFound or CorruptBlock otherwise."""

    def get_many(self, scores: Sequence[bytes]) -> list[Block]:
        """Fetch several blocks (a remote store pipelines them)."""
        return [self.get(s) for s in scores]

    @abc.abstractmethod
    def has(self, score: bytes) -> bool: ...

    def missing(self, scores: Sequence[bytes]) -> list[Score]:
        """Which of *scores* this store lacks, in the given order (batched ``has``)."""
        return [Score(s) for s in scores if not self.has(s)]

    @abc.abstractmethod
    def sync(self) -> None:
        """Return only when every earlier put is durable."""

    @abc.abstractmethod
    def statistics(self) -> StoreStats: ...

    def position(self) -> int:
        """The log position after the last record (a replication cursor)."""
        raise NotImplementedError(f"{type(self).__name__} has no log")

    def iter_log(self, start: int = 0) -> Iterator[LogRecord]:
        """Records from log position *start* (a record boundary) to the end, in order."""
        raise NotImplementedError(f"{type(self).__name__} has no log")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; further calls raise StoreClosed."""

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- implementation hooks ---------------------------------------------------------------

    def _put_if_absent_fast(self, score: Score) -> bool:
        """Dedup check: True (and count a dup) when the block is already held."""
        return self.has(score)

    @abc.abstractmethod
    def _store(self, score: Score, btype: BlockType, payload: bytes) -> None:
        """Append a verified, closure-checked, absent block."""


def walk(store: BlockStore, root: bytes) -> Iterator[tuple[Score, Block]]:
    """Every block reachable from *root*, each once, parents before children.

    Uses only the reference format of store.block, so it works for any block graph
    (hash trees, archives) without knowing what the blocks mean.
    """
    seen: set[bytes] = set()
    stack = [Score(bytes(root))]
    while stack:
        s = stack.pop()
        if s in seen:
            continue
        seen.add(s)
        blk = store.get(s)
        yield s, blk
        for r in reversed(references(blk.type, blk.data)):
            if r not in seen:
                stack.append(r)
