"""The server's frame receiver (spawn/ninep/receiver.py) on real sockets: frames split at
every byte boundary across receives, a frame larger than the shared buffer received into
its own (and a Twrite's data a view of it, no copy), a broken size, back-pressure, the end
of the connection; and 1 MiB Twrites through the whole server arriving whole."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from spawn.ninep import messages as m9
from spawn.ninep.codec import decode, encode
from spawn.ninep.messages import Dialect, RemoteProtocolError
from spawn.ninep.receiver import BIG, CHUNK, FrameReceiver
from spawn.ninep.server import MSIZE
from tests.spawn.ninep_env import run, served

L = Dialect.LINUX


def twrite(tag: int, data: bytes, offset: int = 0) -> bytes:
    return encode(m9.Twrite(tag=tag, fid=1, offset=offset, data=data), L, msize=MSIZE)


def small(tag: int) -> bytes:
    return encode(m9.Tgetattr(tag=tag, fid=tag, request_mask=0x7FF), L)


async def connected(max_size: int = MSIZE, limit: int = MSIZE
                    ) -> tuple[FrameReceiver, socket.socket, asyncio.StreamWriter]:
    """A receiver on one end of a real Unix socket pair; the other end is ours to send on."""
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    return FrameReceiver.take(reader, writer, max_size, limit), b, writer


async def frames_of(rx: FrameReceiver, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        assert await asyncio.wait_for(rx.wait(), 10)
        while (f := rx.next_frame()) is not None:
            out.append(bytes(f))
    return out


def test_split_at_every_byte_boundary():
    """Small frames and one just over BIG, the stream cut in two at every byte: the same
    frames come out, in order, whole."""
    big = twrite(3, os.urandom(BIG - 10))
    assert len(big) > BIG
    frames = [small(1), small(2), big, small(4)]
    stream = b"".join(frames)
    cuts = list(range(len(frames[0]) + len(frames[1]) + 40)) + list(range(len(stream) - 200, len(stream) + 1))
    cuts += range(0, len(stream), 997)
    for cut in cuts:
        rx = FrameReceiver(_NoTransport(), None, MSIZE, MSIZE)
        got: list[bytes] = []
        for part in (stream[:cut], stream[cut:]):
            rx.feed(part)
            while (f := rx.next_frame()) is not None:
                got.append(bytes(f))
        assert got == frames, cut


def test_split_across_real_receives():
    """The same over a socket, sent in pieces with pauses, so the transport's receives end
    inside headers and bodies; a large frame comes out as its own bytearray."""
    async def body():
        rx, peer, writer = await connected()
        big = twrite(7, os.urandom(3 * CHUNK))  # larger than the shared buffer
        frames = [small(1), big, small(2), twrite(8, b"x" * 100)]
        stream = b"".join(frames)
        cuts = [1, 3, 5, len(frames[0]) + 2, len(frames[0]) + 9, len(frames[0]) + 5000,
                len(frames[0]) + CHUNK + 1, len(stream) - 50, len(stream)]
        prev = 0
        for cut in cuts:
            await asyncio.to_thread(peer.sendall, stream[prev:cut])  # the loop receives meanwhile
            prev = cut
            await asyncio.sleep(0.01)
        got: list[bytes | bytearray] = []
        while len(got) < len(frames):
            assert await asyncio.wait_for(rx.wait(), 10)
            while (f := rx.next_frame()) is not None:
                got.append(f)
        assert [bytes(f) for f in got] == frames
        assert type(got[1]) is bytearray  # its own buffer, received into in place
        msg = decode(got[1], L, views=True)
        assert isinstance(msg, m9.Twrite) and isinstance(msg.data, memoryview)
        assert msg.data.obj is got[1]  # the data is the frame's bytes, not a copy
        assert msg.data == big[23:]
        peer.close()
        assert not await asyncio.wait_for(rx.wait(), 10)  # the end, nothing left
        writer.close()
    run(body())


@pytest.mark.parametrize("size", [0, 6, MSIZE + 1, 0xFFFFFFFF])
def test_broken_size_after_good_frames(size):
    """Frames before a size under 7 or over max_size are handed on; then the stream is
    broken for good and what follows is dropped."""
    async def body():
        rx, peer, writer = await connected()
        good = [small(1), twrite(2, os.urandom(BIG + 5))]
        await asyncio.to_thread(peer.sendall, b"".join(good) + size.to_bytes(4, "little") + small(3) * 3)
        got = []
        while True:
            assert await asyncio.wait_for(rx.wait(), 10)
            try:
                f = rx.next_frame()
            except RemoteProtocolError as e:
                assert f"frame size {size} " in str(e)
                break
            if f is not None:
                got.append(bytes(f))
        assert got == good
        peer.sendall(small(4))
        await asyncio.sleep(0.05)
        with pytest.raises(RemoteProtocolError):
            rx.next_frame()  # still broken: nothing after it is a frame
        peer.close()
        writer.close()
    run(body())


def test_a_large_frame_buffer_is_used_again_only_when_nothing_holds_it():
    """The buffer of a large frame is received into again for a later frame of its size
    once nothing holds it; while a decoded Twrite's data (a view) or the frame itself is
    held, the next frame gets a new buffer and the held bytes stay as they were."""
    rx = FrameReceiver(_NoTransport(), None, MSIZE, MSIZE)
    one, two, three = (twrite(i, bytes([i]) * (BIG * 2)) for i in (1, 2, 3))
    # each in two receives: a frame whose start alone is here goes to a buffer of its own
    # (one that is here whole is copied out of the shared buffer)
    rx.feed(one[:100])
    rx.feed(one[100:])
    frame = rx.next_frame()
    assert type(frame) is bytearray
    data = decode(frame, L, views=True).data  # a view of the frame, as the server keeps it
    first = id(frame)
    del frame
    rx.feed(two[:100])
    rx.feed(two[100:])
    second = rx.next_frame()
    assert id(second) != first and bytes(data) == bytes([1]) * (BIG * 2)  # held: not reused
    del data
    again = id(second)
    del second
    rx.feed(three[:100])
    rx.feed(three[100:])
    third = rx.next_frame()
    assert id(third) == again and bytes(third) == three  # nothing held it: received into again
    four = twrite(4, b"z" * (BIG * 3))
    rx.feed(four[:100])
    rx.feed(four[100:])
    assert bytes(rx.next_frame()) == twrite(4, b"z" * (BIG * 3))  # another size: a new one
    assert bytes(third) == three


def test_max_size_lowered_after_version():
    rx = FrameReceiver(_NoTransport(), None, MSIZE, MSIZE)
    rx.max_size = 8192
    rx.feed(twrite(1, b"y" * 8000))
    assert rx.next_frame() is not None
    rx.feed(twrite(2, b"y" * 9000))
    with pytest.raises(RemoteProtocolError, match=r"not in 7\.\.8192"):
        rx.next_frame()
    with pytest.raises(m9.LocalProtocolError):
        rx.max_size = 6


def test_frames_not_taken_pause_the_socket():
    """Past *limit* bytes of whole frames waiting, the transport stops reading; taking
    them resumes it, and nothing is lost."""
    async def body():
        limit = 4 * BIG
        rx, peer, writer = await connected(limit=limit)
        frames = [twrite(i, os.urandom(BIG)) for i in range(12)]
        sender = asyncio.create_task(asyncio.to_thread(peer.sendall, b"".join(frames)))
        transport = writer.transport
        for _ in range(200):
            if not transport.is_reading():
                break
            await asyncio.sleep(0.01)
        assert not transport.is_reading()
        assert rx._ready_bytes < limit + BIG + 100  # bounded: the limit and one frame
        got = await frames_of(rx, len(frames))
        assert got == frames
        await sender
        assert transport.is_reading()
        peer.close()
        writer.close()
    run(body())


def test_one_frame_of_the_limit_does_not_pause():
    """A frame as large as the limit (a Twrite filling the msize) waiting alone does not
    stop the socket: only more than the limit does."""
    frame = twrite(1, b"q" * (MSIZE - 23))
    assert len(frame) == MSIZE
    rx = FrameReceiver(_NoTransport(), None, MSIZE, MSIZE)  # pausing would raise
    rx.feed(frame[:10])
    rx.feed(frame[10:])
    assert bytes(rx.next_frame()) == frame


def test_what_the_reader_held_comes_first():
    """Bytes the StreamReader buffered before the session took the connection over are the
    stream's start."""
    async def body():
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=a)
        b.sendall(small(1) + small(2)[:5])
        for _ in range(100):
            if len(reader._buffer) >= len(small(1)) + 5:
                break
            await asyncio.sleep(0.01)
        rx = FrameReceiver.take(reader, writer, MSIZE, MSIZE)
        b.sendall(small(2)[5:])
        assert await frames_of(rx, 2) == [small(1), small(2)]
        b.close()
        writer.close()
    run(body())


def test_one_mib_twrites_through_the_server(tmp_path):
    """Twrites of 1 MiB (the msize we offer), pipelined, reach the spawn whole: read back
    over 9P and from the engine."""
    async def body():
        async with served(tmp_path) as env:
            c = await env.client(b"9P2000.L", MSIZE)
            root = c.fid()
            await c.attach(root, b"tester", b"spawn", n_uname=1000)
            f = c.fid()
            await c.walk(root, f)
            await c.lcreate(f, b"big", os.O_RDWR, 0o644, 1000)
            data = os.urandom(4 << 20)
            iounit = MSIZE - m9.IOHDRSZ
            futs = [c.send(m9.Twrite(tag=c.tag(), fid=f, offset=o, data=data[o:o + iounit]))
                    for o in range(0, len(data), iounit)]
            for fut in futs:
                r = await fut
                assert isinstance(r, m9.Rwrite) and r.count == iounit
            assert await c.read_all(f) == data
            await c.clunk(f)
    run(body())


class _NoTransport:
    """Feeding a receiver by hand (``feed``) needs no socket: it never pauses here."""

    def pause_reading(self) -> None:
        raise AssertionError("paused")

    def resume_reading(self) -> None:
        raise AssertionError("resumed")
