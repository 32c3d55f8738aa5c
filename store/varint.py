"""Unsigned LEB128 varints (7 bits a byte, low bits first), for compact block bodies."""

from __future__ import annotations

from store.errors import InvalidBlock


def encode_uvarint(n: int) -> bytes:
    if n < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_uvarint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); InvalidBlock when truncated or longer than 64 bits."""
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise InvalidBlock("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
