"""SFTP READs answered in the request reader, from the handle's read-ahead buffer, and
contiguous WRITEs joined into one write (docs/ssh.md, "The read fast path", "WRITEs joined").

asyncssh's SFTP handler (``asyncssh.sftp.SFTPServerHandler``) serves a session one request
at a time: it asks its reader for the next packet only once it has written the reply to the
last one. sshfs reads a file in 32 KiB READs, and most of them are answered from the
handle's read-ahead buffer (grid.daemon.sftp, ``GridSFTPServer.cached``); for those the
handler's per-request work (packet objects, dispatch, logging calls, the coroutine chain to
the server and back) cost more than slicing the buffer: answering them here takes about a
quarter off the daemon's CPU per read (docs/benchmarks.md, "sshfs reads: the fast path").

:class:`RequestReader` is the handler's reader. At each packet boundary it looks at the
requests already received: a READ whose reply the read-ahead buffer holds *now* (the spawn's
committed state unchanged since the buffer was read) is answered here, with the bytes the
handler would have sent for it; any other packet goes to the handler unchanged. What stays
the handler's, so nothing about it changes:

* every request that is not such a READ (nor a WRITE joined, below): opens, closes, READs
  on handles that are not this session's or are closed (asyncssh's "invalid handle"), malformed packets (its
  errors), READs the buffer does not hold (the engine's read, its errors);
* the handle table: a READ's handle is looked up in the handler's own table
  (``SFTPServerHandler._file_handles``, not a public API: :func:`handle_table` checks it is
  there, and without it every READ goes to the handler); a handle is in it from the OPEN's
  reply until its CLOSE is processed, and only for the session that opened it.

Order: a request is answered here only when the handler is waiting for its next packet, so
every earlier request's reply has been written: replies leave in request order, as before
(sshfs matches replies by id, but other clients may rely on order; the SFTP draft lets a
server reorder only requests on different files).

WRITEs: sshfs sends a file's data as 32 KiB WRITEs, several at once, and each was one engine
call with its hop to the spawn's host thread and back, one after the other (the host thread
idle most of the time: docs/benchmarks.md). WRITEs already received that go to one handle at
contiguous offsets are made as one server write (``GridSFTPServer.write``, the handler's
own call, so the same checks and the same coherence with FUSE mounts), then each gets its OK
reply, in order. An engine write changes all or nothing (spawn.overlay), so when the joined
write fails nothing was written, and the same WRITEs go to the handler one by one, each
with its own outcome, exactly as without joining. Handles opened for appending are not
joined (``GridSFTPServer.joinable``).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from asyncssh.constants import FXP_DATA, FXP_READ, FXP_STATUS, FXP_WRITE
from asyncssh.sftp import SFTPEOFError

#: A READ packet's fixed part: type, id, the handle's length (then the handle, an offset and
#: a length).
_READ_HEAD = struct.Struct(">BII")
_READ_TAIL = struct.Struct(">QI")
_DATA_HEAD = struct.Struct(">IBII")  # packet length, SSH_FXP_DATA, id, the data's length
#: The reply asyncssh sends for a READ at or past the end of the file (SSH_FXP_STATUS,
#: SSH_FX_EOF, no message, its default language), after the length, type and id.
_EOF_BODY = SFTPEOFError().encode(3)
_STATUS_HEAD = struct.Struct(">IBI")
#: A READ is at most this long (4 + 1 + 4 + 4 + a 256-byte handle, SFTP's largest, + 8 + 4):
#: a longer one goes to the handler without being waited for whole.
_READ_MAX = 281
#: Bytes asked of the source per read: all it has buffered, so that the WRITEs already
#: received can be seen together.
_CHUNK = 1 << 20
_WRITE_HEAD = struct.Struct(">BII")  # type, id, the handle's length (then the handle,
_WRITE_MID = struct.Struct(">QI")  # an offset and the data's length, then the data)
#: A WRITE considered for joining is at most this long (larger ones go to the handler
#: without being waited for whole), and one joined write at most _JOIN_MAX bytes.
_WRITE_MAX = (256 << 10) + 512
_JOIN_MAX = 1 << 20
#: asyncssh's reply to a request that succeeded (SSH_FX_OK, an empty message and language).
_OK_BODY = struct.pack(">III", 0, 0, 0)


class Source(Protocol):
    """Where requests come from (asyncio.StreamReader): up to *n* bytes, b"" at the end."""

    async def read(self, n: int = -1) -> bytes: ...


class Server(Protocol):
    def cached(self, file_obj: Any, offset: int, size: int) -> bytes | None: ...

    def joinable(self, file_obj: Any) -> bool: ...

    async def write(self, file_obj: Any, offset: int, data: bytes) -> int: ...


def handle_table(handler: Any) -> Mapping[bytes, Any] | None:
    """asyncssh's table of the session's open file handles, or None when this asyncssh has
    none where 2.24 keeps it (then nothing is answered in the reader). Read anew at every
    packet: asyncssh replaces the dict when the session ends."""
    table = getattr(handler, "_file_handles", None)
    return table if isinstance(table, dict) else None


class RequestReader:
    """The SFTP handler's reader over *source*, answering the READs and joining the WRITEs
    it can (module docstring). *write* sends reply bytes (in order with the handler's own, which go through
    the same writer); *drain* waits while too many replies are unread by the client (the
    handler never waits itself); *extra* answers ``get_extra_info``."""

    def __init__(self, source: Source, write: Callable[[bytes], None],
                 drain: Callable[[], Awaitable[None]], server: Server, logger: Any,
                 extra: Mapping[str, Any] | None = None) -> None:
        self.source = source
        self.write = write
        self.drain = drain
        self.server = server
        self.logger = logger
        self.extra = dict(extra or {})
        self.handler: Any = None  # set once the handler exists; None: nothing answered here
        self.answered = 0  # READs answered here (tests and benchmarks look)
        self.joined = 0  # WRITEs answered here, as parts of joined writes
        self._to_handler = 0  # WRITEs to hand over one by one (their joined write failed)
        self._buf = bytearray()
        self._pos = 0
        self._in_packet = 0  # bytes of the current packet the handler has yet to take
        self._eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    async def readexactly(self, n: int) -> bytes:
        """asyncssh reads a packet as its 4-byte length, then its body: at that boundary the
        READs and WRITEs this reader can answer are answered first."""
        if n == 4 and self._in_packet == 0:
            await self._answer_ready()
            await self._fill(4)
            self._in_packet = int.from_bytes(self._buf[self._pos:self._pos + 4], "big")
            if self._to_handler and len(self._buf) > self._pos + 4 \
                    and self._buf[self._pos + 4] == FXP_WRITE:
                self._to_handler -= 1
            return self._take(4)
        await self._fill(n)
        self._in_packet = max(0, self._in_packet - n)
        return self._take(n)

    async def _answer_ready(self) -> None:
        """Answer the READs and join the WRITEs at the head of the buffer, waiting for more
        bytes only to see whether the next packet is one, until the head is a packet for the
        handler."""
        while True:
            await self.drain()
            if self.handler is None or not await self._fill(5, at_eof=False):
                return
            pos = self._pos
            plen = int.from_bytes(self._buf[pos:pos + 4], "big")
            ptype = self._buf[pos + 4]
            if ptype == FXP_READ and plen <= _READ_MAX - 4:
                if not await self._fill(4 + plen, at_eof=False):
                    return
                reply = self._answer(memoryview(self._buf)[pos + 4:pos + 4 + plen])
                if reply is None:
                    return
                self._pos += 4 + plen
                self.write(reply)
                self.answered += 1
            elif ptype == FXP_WRITE and plen <= _WRITE_MAX and not self._to_handler:
                if not await self._fill(4 + plen, at_eof=False) or not await self._join():
                    return
            else:
                return

    async def _join(self) -> bool:
        """The WRITEs at the head of the buffer that are to one handle at contiguous offsets,
        as one write of the server's, then each one's OK reply, in order. False, with nothing
        consumed, when fewer than two are there or the handle is not for joining (not in the
        handler's table, or opened for appending); False too when the joined write fails:
        those WRITEs then go to the handler one by one, each with its own outcome (a failed
        engine write changes nothing, spawn.overlay)."""
        table = handle_table(self.handler)
        if table is None:
            return False
        spans: list[tuple[int, int, int]] = []  # (id, data start, data end) in the buffer
        pos, end = self._pos, len(self._buf)
        file_obj: Any = None
        handle, start, nxt = b"", 0, 0
        with memoryview(self._buf) as buf:
            while pos + 5 <= end and buf[pos + 4] == FXP_WRITE:
                plen = int.from_bytes(buf[pos:pos + 4], "big")
                if pos + 4 + plen > end or plen < _WRITE_HEAD.size:
                    break
                _, pktid, hlen = _WRITE_HEAD.unpack_from(buf, pos + 4)
                mid = pos + 4 + _WRITE_HEAD.size + hlen
                if mid + _WRITE_MID.size > pos + 4 + plen:
                    break
                offset, dlen = _WRITE_MID.unpack_from(buf, mid)
                if mid + _WRITE_MID.size + dlen != pos + 4 + plen:
                    break  # not exactly a WRITE's fields: the handler's to refuse
                h = bytes(buf[pos + 4 + _WRITE_HEAD.size:mid])
                if not spans:
                    file_obj = table.get(h)
                    if file_obj is None or not self.server.joinable(file_obj):
                        return False
                    handle, start, nxt = h, offset, offset
                elif h != handle or offset != nxt or nxt - start + dlen > _JOIN_MAX:
                    break
                spans.append((pktid, mid + _WRITE_MID.size, pos + 4 + plen))
                nxt += dlen
                pos += 4 + plen
            if len(spans) < 2:
                return False
            data = b"".join([buf[a:b] for _, a, b in spans])
        try:
            await self.server.write(file_obj, start, data)
        except Exception:
            self._to_handler = len(spans)
            return False
        self._pos = pos
        for pktid, _, _ in spans:
            self.write(_STATUS_HEAD.pack(5 + len(_OK_BODY), FXP_STATUS, pktid) + _OK_BODY)
        self.joined += len(spans)
        return True

    def _answer(self, pkt: memoryview) -> bytes | None:
        """The reply to READ packet *pkt* (type onward) from the read-ahead buffer, or None
        for the handler: not exactly a READ's fields, a handle the handler's table does not
        hold, or bytes the buffer does not hold now."""
        if len(pkt) < _READ_HEAD.size:
            return None
        _, pktid, hlen = _READ_HEAD.unpack_from(pkt)
        if len(pkt) != _READ_HEAD.size + hlen + _READ_TAIL.size:
            return None
        table = handle_table(self.handler)
        if table is None:
            return None
        file_obj = table.get(bytes(pkt[_READ_HEAD.size:_READ_HEAD.size + hlen]))
        if file_obj is None:
            return None
        offset, size = _READ_TAIL.unpack_from(pkt, _READ_HEAD.size + hlen)
        data = self.server.cached(file_obj, offset, size)
        if data is None:
            return None
        if not data:
            return _STATUS_HEAD.pack(5 + len(_EOF_BODY), FXP_STATUS, pktid) + _EOF_BODY
        return _DATA_HEAD.pack(9 + len(data), FXP_DATA, pktid, len(data)) + data

    async def _fill(self, n: int, *, at_eof: bool = True) -> bool:
        """At least *n* bytes buffered past the read position. At the end of the stream:
        False, or with *at_eof* the IncompleteReadError asyncssh takes as the session's end."""
        while len(self._buf) - self._pos < n:
            if self._eof:
                if not at_eof:
                    return False
                raise asyncio.IncompleteReadError(bytes(self._buf[self._pos:]), n)
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            chunk = await self.source.read(max(_CHUNK, n))
            if not chunk:
                self._eof = True
            self._buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        return out
