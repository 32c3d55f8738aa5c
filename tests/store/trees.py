"""Contents for the store's tests, and a store on disk holding one with a corrupt leaf."""

from __future__ import annotations

import random
from pathlib import Path

from store.hashtree import write_bytes
from store.local import LocalStore
from store.score import Score


def content(seed: int, size: int) -> bytes:
    """Half random, half zeros (holes in the tree), in 50 KiB stripes: leaves of both kinds
    and extent boundaries that fall inside leaves."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(50 << 10) + bytes(50 << 10)
    return bytes(out[:size])


def store_with_a_bad_leaf(path: Path, data: bytes, at: int) -> tuple[LocalStore, Score]:
    """Create a store at *path*, write *data* as one hash tree, flip a byte of the stored
    leaf holding offset *at* (found by its bytes in the segment file), and open the store
    again. Returns the open store and the tree's root score."""
    LocalStore.create(path)
    store = LocalStore.open(path)
    ref = write_bytes(store, data)
    store.close()
    seg = max(path.rglob("*.seg"), key=lambda p: p.stat().st_size)
    raw = bytearray(seg.read_bytes())
    pos = raw.find(data[at:at + 64])
    assert pos > 0, "the leaf's bytes are not in the segment as they are (compressed?)"
    raw[pos + 10] ^= 0xFF
    seg.write_bytes(bytes(raw))
    return LocalStore.open(path), ref.score
