"""Typed blocks and the reference format every component can walk.

Block types
    DATA     opaque bytes (file contents, leaves of hash trees). References nothing.
    POINTER  an interior node of a hash tree.
    DIR      a directory block of the filesystem archive.
    ROOT     a snapshot root.
    META     other archive metadata (inode tables, xattr blocks, ...).

Reference format
    Every type except DATA begins with its reference list, so replication, checks and the
    closure rule can walk reachability from a root without knowing the filesystem format::

        u32 count (big-endian) | count x 32-byte score | body (type-specific)

    A NULL_SCORE (32 zero bytes) in the list is a hole: it names no block and is skipped by
    closure and reachability.

Pointer block body (hash trees)
    ``u8 depth | count x u64 size`` (big-endian): the logical byte size of each child subtree,
    so a reader finds the child holding any offset by a prefix sum, O(depth) blocks per read.
    depth 1 means the children are DATA leaves (or holes).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

from store.errors import InvalidBlock
from store.score import NULL_SCORE, SCORE_SIZE, Score

MAX_BLOCK_SIZE = 1 << 20  # payload bytes; leaves are far smaller, this bounds everything
_U32 = struct.Struct(">I")


class BlockType(IntEnum):
    DATA = 1
    POINTER = 2
    DIR = 3
    ROOT = 4
    META = 5


class Block(NamedTuple):
    type: BlockType
    data: bytes


def check_type(btype: int) -> BlockType:
    try:
        return BlockType(btype)
    except ValueError:
        raise InvalidBlock(f"unknown block type {btype}") from None


def check_size(data: bytes | bytearray | memoryview) -> None:
    if len(data) > MAX_BLOCK_SIZE:
        raise InvalidBlock(f"block of {len(data)} bytes exceeds the maximum {MAX_BLOCK_SIZE}")


def encode_refs(refs: list[bytes] | tuple[bytes, ...], body: bytes = b"") -> bytes:
    """Build a non-DATA payload: the reference list then *body*."""
    for r in refs:
        if len(r) != SCORE_SIZE:
            raise InvalidBlock(f"reference of {len(r)} bytes, not {SCORE_SIZE}")
    return b"".join((_U32.pack(len(refs)), *refs, body))


def split_refs(btype: int, data: bytes | memoryview) -> tuple[list[Score], memoryview]:
    """Return (references, body) of a payload. DATA blocks have no references."""
    if btype == BlockType.DATA:
        return [], memoryview(data)
    if len(data) < 4:
        raise InvalidBlock(f"{BlockType(btype).name} block too short for its reference list")
    (count,) = _U32.unpack_from(data, 0)
    end = 4 + count * SCORE_SIZE
    if end > len(data):
        raise InvalidBlock(
            f"{BlockType(btype).name} block claims {count} references but holds "
            f"{(len(data) - 4) // SCORE_SIZE}"
        )
    mv = memoryview(data)
    refs = [Score(bytes(mv[i : i + SCORE_SIZE])) for i in range(4, end, SCORE_SIZE)]
    return refs, mv[end:]


def references(btype: int, data: bytes | memoryview) -> list[Score]:
    """The non-hole scores a block references (what closure and reachability follow)."""
    refs, _ = split_refs(btype, data)
    return [r for r in refs if r != NULL_SCORE]
