"""A 9P connection's frames, received into their own buffers (docs/9p.md, "Receiving frames").

The server used to read its connection through an ``asyncio.StreamReader`` and split the
bytes with ``spawn.ninep.codec.FrameBuffer``: a 1 MiB Twrite was copied out of the socket
into the reader's buffer, out of it as the read's result, into the FrameBuffer, out of it as
the frame, and once more as the Twrite's data (docs/benchmarks.md, "9P writes: fewer
copies"). :class:`FrameReceiver` takes the connection's transport over as an
``asyncio.BufferedProtocol``: the transport ``recv_into``s a buffer it hands out, and

* a frame larger than ``BIG`` gets a ``bytearray`` of its own, its exact size, as soon as its
  size field is read: the rest of it is received straight into that buffer and it is handed
  on whole (``decode(..., views=True)`` then gives the Twrite's data as a view of it, so the
  bytes the kernel wrote are the bytes the engine reads);
* smaller frames are received into one reused buffer and copied out once, as before.

The size field is judged as soon as its four bytes are here, as FrameBuffer does: a size
under 7 or over ``max_size`` breaks the stream; the frames before it are still handed on,
then ``next_frame`` raises RemoteProtocolError, and everything after is dropped.

What is received but not yet taken is bounded: past ``limit`` bytes of whole frames waiting,
the transport stops reading (the session takes frames only when it has a request slot, so
a client that floods it is pushed back), and resumes once they are taken.

Everything else the stream protocol did (flow control of writes, the end of the connection)
is still done by it: the receiver passes those calls on, so the session's StreamWriter
works as before.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import sys
from typing import Any

from spawn.ninep.messages import HEADER_SIZE, LocalProtocolError, RemoteProtocolError

#: Frames larger than this are received into a buffer of their own (no copy out of a
#: shared one). A Twrite of a 64 KiB msize is just over it.
BIG = 64 << 10
CHUNK = 256 << 10  # the shared buffer for smaller frames: room for a few per read
_U32 = struct.Struct("<I")


class FrameReceiver(asyncio.BufferedProtocol):
    """The receiving side of one connection (see the module docstring). Use
    :meth:`take` to put it in place of a connection's stream protocol."""

    def __init__(self, transport: Any, stream: Any, max_size: int,
                 limit: int) -> None:
        self._transport = transport
        self._stream = stream  # the StreamReaderProtocol, which the StreamWriter still uses
        self.max_size = max_size
        self.limit = limit
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._start = 0  # unsplit bytes are _buf[_start:_end]
        self._end = 0
        self._big: bytearray | None = None  # a large frame being received
        self._big_have = 0
        self._spare: bytearray | None = None  # the last large frame handed on (see _new_big)
        self._ready: collections.deque[bytes | bytearray] = collections.deque()
        self._ready_bytes = 0
        self._error: RemoteProtocolError | None = None
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        #: Called when frames arrive while the session waits for them (``wait``): it may
        #: take those it can answer at once (``peek``, then ``next_frame``), here in the
        #: transport's callback; the session's task is woken only for what is left.
        self.on_frames: Any = None

    @classmethod
    def take(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_size: int,
             limit: int) -> FrameReceiver:
        """Put a receiver in place of the stream protocol of *writer*'s transport. What the
        *reader* had already buffered is received first; from now on the reader is not used."""
        transport = writer.transport
        rx = cls(transport, transport.get_protocol(), max_size, limit)
        # StreamReader keeps what it received in _buffer; no public way to take it back
        leftover = bytes(getattr(reader, "_buffer", b""))
        ended = bool(getattr(reader, "_eof", False)) or reader.exception() is not None
        transport.set_protocol(rx)
        if leftover:
            rx.feed(leftover)
        if ended:
            rx.feed_eof()
        elif not rx._paused and not transport.is_reading():
            transport.resume_reading()  # the reader had paused it
        return rx

    @property
    def max_size(self) -> int:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        if type(value) is not int or value < HEADER_SIZE:
            raise LocalProtocolError(f"max_size {value!r} is under {HEADER_SIZE}")
        self._max_size = value

    # -- what the session calls ----------------------------------------------------------

    async def wait(self) -> bool:
        """Wait for a frame (or a broken stream, which ``next_frame`` then raises); False
        once the connection has ended with no whole frame left."""
        while not self._ready and self._error is None:
            if self._eof:
                return False
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    def next_frame(self) -> bytes | bytearray | None:
        """The next whole frame (size field included), or None until one is here. A
        bytearray is the frame's own buffer, which nobody else holds."""
        if self._ready:
            frame = self._ready.popleft()
            self._ready_bytes -= len(frame)
            if self._paused and self._ready_bytes <= self.limit and not self._eof:
                self._paused = False
                self._transport.resume_reading()
            return frame
        if self._error is not None:
            raise RemoteProtocolError(f"stream broken: {self._error}")
        return None

    def peek(self) -> bytes | bytearray | None:
        """The next whole frame without taking it, or None."""
        return self._ready[0] if self._ready else None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Receive *data* as if the transport had (what the stream reader held; tests)."""
        view = memoryview(data)
        while view:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def feed_eof(self) -> None:
        """No more data will come (the peer closed, or the session is closing)."""
        self._eof = True
        self._wake()

    # -- the transport's side ------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_have:]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < BIG:  # move the partial frame to the front
            n = self._end - self._start
            self._buf[:n] = bytes(self._view[self._start:self._end])  # (under BIG bytes)
            self._start, self._end = 0, n
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_have += nbytes
            if self._big_have == len(self._big):
                self._push(self._big)
                self._spare, self._big = self._big, None
        else:
            self._end += nbytes
            self._split()
        if self._ready_bytes > self.limit and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        w = self._waiter
        if self._ready and self.on_frames is not None and w is not None and not w.done():
            self.on_frames()
            if not self._ready and self._error is None and not self._eof:
                return  # all taken: the session goes on waiting, no wake-up
        self._wake()

    def _split(self) -> None:
        """Whole frames out of the shared buffer; a large one's start into its own."""
        buf, view = self._buf, self._view
        start, end = self._start, self._end
        while end - start >= 4 and self._error is None:
            (size,) = _U32.unpack_from(buf, start)
            if size < HEADER_SIZE or size > self._max_size:
                self._error = RemoteProtocolError(
                    f"frame size {size} is not in {HEADER_SIZE}..{self._max_size}")
                start = end = 0  # no framing left: the rest is dropped
                break
            have = end - start
            if have >= size:
                self._push(bytes(view[start:start + size]))
                start += size
            elif size > BIG:
                big = self._new_big(size)
                big[:have] = view[start:end]
                self._big, self._big_have = big, have
                start = end = 0
            else:
                break
        if self._error is not None:
            start = end = 0
        self._start, self._end = start, end

    def _new_big(self, size: int) -> bytearray:
        """A buffer for a large frame: the last one handed on when nothing holds it any more
        (its request is answered, its data written), else a new one. A new 1 MiB bytearray
        was 15 % of the connection thread's samples on 1 MiB Twrites (allocated and zeroed
        each time). Whether anything holds it is its reference count: every holder of the
        frame, a message decoded from it or a view of its bytes counts there (a view holds
        the buffer it views), so while one is left it is never written into again."""
        spare = self._spare
        # the references: self._spare, ``spare`` and getrefcount's argument
        if spare is not None and len(spare) == size and sys.getrefcount(spare) == 3:
            return spare
        return bytearray(size)

    def _push(self, frame: bytes | bytearray) -> None:
        self._ready.append(frame)
        self._ready_bytes += len(frame)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool | None:
        self.feed_eof()
        return self._stream.eof_received()  # whether the transport stays open for replies

    def connection_lost(self, exc: Exception | None) -> None:
        self.feed_eof()
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()
