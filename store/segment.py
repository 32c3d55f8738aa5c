"""Byte layout of the store's log: segment files and the records in them (pure codec).

A segment file is an 16-byte header followed by records, appended and never rewritten::

    segment header:  8s magic b"GRIDSEG1" | u64 start   (big-endian)

``start`` is the log position of the segment's first byte; the file is named by it (16 hex
digits + ``.seg``). A record's log position is ``start + offset in file``, so positions are
monotone across segments and serve as replication cursors (venti's arena clump offsets).

Each record::

    0   u16  magic 0xB10C
    2   u8   block type
    3   u8   codec (0 raw, 1 zstd)
    4   u32  stored length (bytes of payload on disk)
    8   u32  raw length (bytes of the block's payload)
    12  u32  CRC-32 of bytes 0..11 and of the score
    16  32s  score = BLAKE3(type byte | raw payload)
    48  ...  payload (stored length bytes)

The header CRC lets recovery tell a torn or garbage header from a real one without trusting
its lengths; the score verifies the payload.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from store.block import MAX_BLOCK_SIZE, BlockType
from store.errors import StoreError

SEGMENT_MAGIC = b"GRIDSEG1"
SEGMENT_HEADER = struct.Struct(">8sQ")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 16

RECORD_MAGIC = 0xB10C
_RECORD_FIXED = struct.Struct(">HBBII")  # 12 bytes
_CRC = struct.Struct(">I")
RECORD_HEADER_SIZE = 48

CODEC_RAW = 0
CODEC_ZSTD = 1
CODECS = (CODEC_RAW, CODEC_ZSTD)
# A compressed payload may in theory exceed the raw size slightly; we only store compressed
# payloads when they are smaller, so stored <= raw <= MAX_BLOCK_SIZE always holds.
MAX_STORED = MAX_BLOCK_SIZE


class BadRecord(StoreError):
    """A record header that is torn, garbage or inconsistent."""


@dataclass(frozen=True, slots=True)
class RecordHeader:
    type: int
    codec: int
    stored_len: int
    raw_len: int
    score: bytes

    @property
    def total_len(self) -> int:
        return RECORD_HEADER_SIZE + self.stored_len


def encode_segment_header(start: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, start)


def decode_segment_header(buf: bytes) -> int:
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise BadRecord("segment header truncated")
    magic, start = SEGMENT_HEADER.unpack_from(buf)
    if magic != SEGMENT_MAGIC:
        raise BadRecord(f"not a grid segment (magic {magic!r})")
    return start


def segment_name(start: int) -> str:
    return f"{start:016x}.seg"


def encode_record_header(btype: int, codec: int, stored_len: int, raw_len: int, score: bytes) -> bytes:
    fixed = _RECORD_FIXED.pack(RECORD_MAGIC, btype, codec, stored_len, raw_len)
    crc = zlib.crc32(score, zlib.crc32(fixed))
    return fixed + _CRC.pack(crc) + score


def decode_record_header(buf: bytes | memoryview) -> RecordHeader:
    """Parse and sanity-check a 48-byte record header; BadRecord when it cannot be one."""
    if len(buf) < RECORD_HEADER_SIZE:
        raise BadRecord("record header truncated")
    magic, btype, codec, stored, raw = _RECORD_FIXED.unpack_from(buf, 0)
    (crc,) = _CRC.unpack_from(buf, 12)
    score = bytes(buf[16:48])
    if magic != RECORD_MAGIC:
        raise BadRecord(f"bad record magic {magic:#06x}")
    if zlib.crc32(score, zlib.crc32(bytes(buf[:12]))) != crc:
        raise BadRecord("record header checksum mismatch")
    if btype not in BlockType._value2member_map_ or codec not in CODECS:
        raise BadRecord(f"record has unknown type {btype} or codec {codec}")
    if raw > MAX_BLOCK_SIZE or stored > MAX_STORED or (codec == CODEC_RAW and stored != raw):
        raise BadRecord(f"record lengths out of range (stored {stored}, raw {raw})")
    return RecordHeader(btype, codec, stored, raw, score)


# Index entry: where a block's record is (score -> location), 18 bytes.
INDEX_ENTRY = struct.Struct(">QBBII")


@dataclass(frozen=True, slots=True)
class Location:
    position: int  # log position of the record header
    type: int
    codec: int
    stored_len: int
    raw_len: int

    def pack(self) -> bytes:
        return INDEX_ENTRY.pack(self.position, self.type, self.codec, self.stored_len, self.raw_len)

    @classmethod
    def unpack(cls, buf: bytes) -> Location:
        return cls(*INDEX_ENTRY.unpack(buf))
