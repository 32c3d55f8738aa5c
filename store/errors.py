"""Errors of the block store. All derive from StoreError so callers can catch one type."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class BadScore(StoreError, ValueError):
    """Text that should be a score is not ``blake3:`` followed by 64 hex digits."""


class BlockNotFound(StoreError, KeyError):
    """The store holds no block with this score."""

    def __init__(self, score: bytes) -> None:
        from store.score import format_score

        super().__init__(f"no block {format_score(score)}")
        self.score = score

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CorruptBlock(StoreError):
    """A block's bytes do not hash to its score: never returned as data."""

    def __init__(self, score: bytes, where: str, detail: str = "") -> None:
        from store.score import format_score

        msg = f"block {format_score(score)} in {where} fails verification"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
        self.score = score
        self.where = where


class InvalidBlock(StoreError, ValueError):
    """A block is malformed for its type (oversize, bad reference list, unknown type)."""


class MissingReference(StoreError):
    """Closure: a pointer/dir/root block names blocks the store does not hold."""

    def __init__(self, missing: list[bytes]) -> None:
        from store.score import format_score

        shown = ", ".join(format_score(s) for s in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        super().__init__(f"refused: references missing block(s) {shown}{more}")
        self.missing = missing


class StoreLocked(StoreError):
    """Another process is the store's writer."""


class StoreClosed(StoreError):
    """The store (or connection) was closed."""


class ProtocolError(StoreError):
    """The peer of a block-protocol connection sent something invalid."""


class RemoteError(StoreError):
    """The server answered a request with an error."""
