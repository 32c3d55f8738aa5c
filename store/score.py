"""Scores: the BLAKE3-256 name of a typed block.

A score is computed over the block's type byte followed by its payload, so a data block and a
pointer block with the same bytes have different scores and the type cannot be confused.
Inside the code a score is the raw 32 bytes (``Score``); only at the edges (CLI, ndb, logs) is
it printed as ``blake3:<64 lowercase hex>``.

The all-zero score ``NULL_SCORE`` names no block: hash trees use it for holes (all-zero
leaves that are never stored), and closure checks skip it.
"""

from __future__ import annotations

import re
from typing import NewType

import blake3

from store.errors import BadScore

Score = NewType("Score", bytes)

SCORE_SIZE = 32
PREFIX = "blake3:"
NULL_SCORE = Score(bytes(SCORE_SIZE))
_HEX_RE = re.compile(r"[0-9a-f]{64}")


_TYPE_BYTES = [bytes((t,)) for t in range(256)]


def score_of(btype: int, payload: bytes | bytearray | memoryview) -> Score:
    """The score of a block of type *btype* with *payload*.

    The type byte and the payload are joined and hashed in one call: blake3's ``update`` of
    a payload after the one-byte prefix runs at about half the speed of one whole input
    (13.6 against 8.0 µs for a 64 KiB leaf, copy included; docs/benchmarks.md "Cold reads"),
    and every block read or written is hashed here."""
    return Score(blake3.blake3(_TYPE_BYTES[btype] + payload).digest())


def format_score(score: bytes) -> str:
    if len(score) != SCORE_SIZE:
        raise BadScore(f"a score is {SCORE_SIZE} bytes, not {len(score)}")
    return PREFIX + score.hex()


def parse_score(text: str) -> Score:
    """Parse ``blake3:<64 hex>``; anything else (uppercase, short, other prefix) is BadScore."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise BadScore(f"{text!r} is not a score (expected blake3:<64 hex digits>)")
    digits = text[len(PREFIX) :]
    if not _HEX_RE.fullmatch(digits):
        raise BadScore(f"{text!r} is not a score (expected blake3:<64 lowercase hex digits>)")
    return Score(bytes.fromhex(digits))


def short(score: bytes) -> str:
    """A short form for progress lines and logs (never for lookups)."""
    return score[:6].hex()
