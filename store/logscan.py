"""Reading a segment file record by record, and resynchronising after damage.

The log is the truth (docs/store.md), so every tool that reads it whole (recovery on open,
``grid store check``, ``grid store check --rebuild``) must read *all* of it, whatever one
damaged record does. A flipped byte used to stop the reader at the first bad record, and
recovery then took everything after it for a torn tail and cut the segment there: good blocks
were deleted by the tool meant to protect them.

This reader never stops early. It yields, in log order:

* :class:`Good`: a record whose header checks (magic, CRC) and whose payload hashes to its
  score;
* :class:`Bad`: a damaged region. When the header is intact its CRC-protected lengths say
  exactly where the record ends, so only that record is bad. Otherwise the reader
  *resynchronises*: it searches forward for the next offset holding a record header with a
  valid CRC (a 48-bit check: magic and CRC-32) whose record fits in the segment, and resumes
  there. The region in between is reported as one bad region.

A bad region that runs to the end of the segment and holds no complete record is *torn*: the
shape a crash leaves when an append was cut short. Only that, in the last segment, may be
removed from the log, and callers move it aside first (``quarantine/``) rather than delete it.
Anything followed by a valid record is corruption: it is reported and skipped, never cut.

Every record yielded as Good verifies against its score, so a false resync point (a record
header that happens to appear inside a payload) can only ever yield a genuine block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from store.errors import CorruptBlock
from store.score import score_of
from store.segment import (
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    BadRecord,
    RecordHeader,
    decode_record_header,
)

_MAGIC = RECORD_MAGIC.to_bytes(2, "big")
_WINDOW = 1 << 20

Decoder = Callable[[RecordHeader, bytes], bytes]


@dataclass(frozen=True, slots=True)
class Good:
    """A record that verifies: its header checks and its payload hashes to its score."""

    position: int
    header: RecordHeader
    data: bytes  # the block's payload, decompressed and verified


@dataclass(frozen=True, slots=True)
class Bad:
    """A damaged region of a segment: skipped by readers, reported by check."""

    position: int  # log position where the region starts
    length: int  # bytes up to the next valid record (or the end of the segment)
    score: bytes | None  # the record's score when its header is intact
    reason: str
    torn: bool  # runs to the segment's end and holds no complete record

    @property
    def end(self) -> int:
        return self.position + self.length


def _verify(hdr: RecordHeader, payload: bytes, decode: Decoder) -> tuple[bytes | None, str]:
    try:
        data = decode(hdr, payload)
    except CorruptBlock:
        return None, "compressed payload does not decode"
    if score_of(hdr.type, data) != hdr.score:
        return None, "payload does not hash to the record's score"
    return data, ""


def _header_at(f: BinaryIO, off: int, end: int) -> tuple[RecordHeader | None, str]:
    if off + RECORD_HEADER_SIZE > end:
        return None, "record header truncated"
    f.seek(off)
    raw = f.read(RECORD_HEADER_SIZE)
    if len(raw) < RECORD_HEADER_SIZE:
        return None, "record header truncated"
    try:
        return decode_record_header(raw), ""
    except BadRecord as e:
        return None, str(e)


def _resync(f: BinaryIO, off: int, end: int) -> int | None:
    """The offset of the next intact record header at or after *off* whose record fits
    before *end*, or None."""
    while off < end:
        f.seek(off)
        window = f.read(min(_WINDOW, end - off) + RECORD_HEADER_SIZE)
        if not window:
            return None
        i = 0
        limit = min(len(window), end - off)
        while True:
            i = window.find(_MAGIC, i, limit)
            if i < 0:
                break
            cand = off + i
            if i + RECORD_HEADER_SIZE <= len(window):
                try:
                    hdr = decode_record_header(window[i : i + RECORD_HEADER_SIZE])
                except BadRecord:
                    hdr = None
            else:
                hdr, _ = _header_at(f, cand, end)
            if hdr is not None and cand + hdr.total_len <= end:
                return cand
            i += 1
        off += limit
    return None


def scan_segment(
    f: BinaryIO, seg_start: int, first: int, end: int, decode: Decoder
) -> Iterator[Good | Bad]:
    """Every record and damaged region of one segment from file offset *first* to *end*.

    *f* is the segment file opened for reading; *end* the number of bytes of it to consider
    (the committed end, for a reader racing the writer). Positions are log positions.
    """
    off = first
    while off < end:
        hdr, reason = _header_at(f, off, end)
        if hdr is not None and off + hdr.total_len <= end:
            payload = f.read(hdr.stored_len)
            data, why = _verify(hdr, payload, decode) if len(payload) == hdr.stored_len else (None, "short read")
            if data is not None:
                yield Good(seg_start + off, hdr, data)
            else:
                # The header's CRC vouches for its lengths: exactly this record is bad.
                yield Bad(seg_start + off, hdr.total_len, hdr.score, why, torn=False)
            off += hdr.total_len
            continue
        if hdr is not None:
            reason = "record runs past the end of the segment"
        nxt = _resync(f, off + 1, end)
        stop = end if nxt is None else nxt
        yield Bad(seg_start + off, stop - off, hdr.score if hdr is not None else None, reason, torn=nxt is None)
        if nxt is None:
            return
        off = nxt
