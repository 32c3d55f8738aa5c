"""Rread replies whose data the kernel copies from a decoded content (docs/9p.md, "Reads
the kernel serves").

A read of a clean spawn whose bytes are base content kept decoded in a memory file
(store.plaincache) is answered with the 11-byte Rread header written to the socket and the
data sent by ``os.sendfile`` from that file: the bytes never enter Python. This works only
on a plain socket transport whose write buffer is empty (anything queued must go first); on
any other transport, or when the socket cannot take the whole reply at once, the rest goes
through the transport as ordinary bytes, in order.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import os
import struct
from dataclasses import dataclass

from spawn.ninep.messages import MessageType
from store.plaincache import PlainRange

_HEADER = struct.Struct("<IBHI")  # size[4] Rread[1] tag[2] count[4]
# asyncio's transport over a plain socket (not public: without it nothing is sent directly)
_SOCKET_TRANSPORT: type | None = getattr(asyncio.selector_events, "_SelectorSocketTransport", None)


@dataclass(frozen=True, slots=True)
class PlainRead:
    """A handler's answer to a Tread: send *range* as the Rread's data."""

    tag: int
    range: PlainRange


def raw_fd(writer: asyncio.StreamWriter) -> int | None:
    """The socket descriptor under *writer* when bytes written to it directly reach the
    peer as they are (a plain socket: not TLS, not a pipe of some other kind), else None."""
    t = writer.transport
    if _SOCKET_TRANSPORT is None or not isinstance(t, _SOCKET_TRANSPORT):
        return None
    if t.get_extra_info("sslcontext") is not None or t.get_extra_info("ssl_object") is not None:
        return None
    sock = t.get_extra_info("socket")
    return None if sock is None else sock.fileno()


def send(writer: asyncio.StreamWriter, fd: int | None, reply: PlainRead) -> None:
    """Send the Rread: through the kernel from the memory file where it can go at once,
    the remainder (or all of it) through *writer*. Anything earlier in *writer*'s buffer
    is sent first (then all of this goes through the buffer)."""
    r = reply.range
    header = _HEADER.pack(_HEADER.size + r.count, MessageType.RREAD, reply.tag, r.count)
    if fd is None or writer.transport.get_write_buffer_size():
        writer.write(header + r.read())
        return
    try:
        n = os.write(fd, header)
    except BlockingIOError:
        n = 0
    except OSError:  # the peer is gone: end the connection as a failed write would
        writer.transport.abort()
        return
    if n < len(header):
        writer.write(header[n:] + r.read())
        return
    sent = 0
    try:
        while sent < r.count:
            k = os.sendfile(fd, r.fileno(), r.offset + sent, r.count - sent)
            if k == 0:
                break
            sent += k
    except BlockingIOError:
        pass  # the socket is full: the rest goes through the transport
    except OSError:
        writer.transport.abort()
        return
    if sent < r.count:
        writer.write(PlainRange(r.file, r.offset + sent, r.count - sent).read())
