"""Hostile bytes against the 9P server: thousands of random, mutated and nonsensical frames
over many connections. Whatever arrives, a connection gets error replies or is closed, the
server keeps serving a second connection, nothing leaks (fids, engine open counts, locks,
lock waiters) once the hostile connections are gone, and no request crashes a handler (no
error logged)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct

from spawn.ninep import messages as m9
from spawn.ninep.client import Client
from spawn.ninep.codec import FrameBuffer, encode
from spawn.ninep.messages import MESSAGE_CLASSES, Dialect, Qid, Stat, Wire
from tests.spawn.ninep_env import eventually, run, served

NAMES = [b"dir", b"a", b"b", b"sub", b"deep", b"hello.txt", b"big.bin", b"link", b"many", b"..",
         b".", b"", b"f01", b"new", b"x/y", b"user.a", b"\xff\xfe", b"n" * 300]


def _int(rng: random.Random, wire: Wire, name: str) -> int:
    top = {Wire.U8: 0xFF, Wire.U16: 0xFFFF, Wire.U32: 0xFFFFFFFF, Wire.U64: (1 << 64) - 1}[wire]
    roll = rng.random()
    if "fid" in name and roll < 0.8:
        return rng.randrange(0, 12)
    if name in ("offset", "start", "length", "size", "attr_size", "count") and roll < 0.8:
        return rng.randrange(0, 70000)
    if roll < 0.1:
        return top
    if roll < 0.5:
        return rng.randrange(0, 16)
    return rng.randrange(0, top + 1)


def _value(rng: random.Random, field: m9.WireField, dialect: Dialect):
    w = field.wire
    if field.unix_extension and dialect is Dialect.BASE:
        return field.default
    if w in (Wire.U8, Wire.U16, Wire.U32, Wire.U64):
        return _int(rng, w, field.name)
    if w is Wire.STR:
        return rng.choice(NAMES) if rng.random() < 0.8 else rng.randbytes(rng.randrange(0, 40))
    if w is Wire.DATA:
        return rng.randbytes(rng.randrange(0, 3000))
    if w is Wire.NAMES:
        return tuple(rng.choice(NAMES) for _ in range(rng.randrange(0, 17)))
    if w is Wire.QIDS:
        return ()
    if w is Wire.QID:
        return Qid(type=rng.randrange(256), version=rng.randrange(1 << 32), path=rng.randrange(9))
    assert w is Wire.STAT
    values = {f.name: _value(rng, f, dialect) for f in Stat.FIELDS}
    return Stat(**values)


def random_request(rng: random.Random, dialect: Dialect) -> bytes:
    """A well-formed request of the dialect with random field values."""
    classes = [c for t, c in MESSAGE_CLASSES.items()
               if t.name.startswith("T") and dialect in c.DIALECTS]
    cls = rng.choice(classes)
    values = {f.name: _value(rng, f, dialect) for f in cls.FIELDS}
    if cls is m9.Tversion and rng.random() < 0.9:
        cls = m9.Tclunk
        values = {"fid": rng.randrange(12)}
    tag = rng.randrange(0, 40) if rng.random() < 0.2 else rng.randrange(0, 0xFFFF)
    return encode(cls(tag=tag, **values), dialect)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """A damaged copy of *frame* whose size field still frames it (body flips, a cut or
    lengthened body, another type number, or a body of random bytes)."""
    b = bytearray(frame)
    kind = rng.randrange(5)
    if kind == 0 and len(b) > 7:
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(7, len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1 and len(b) > 8:
        b = b[:rng.randrange(7, len(b))]
    elif kind == 2:
        b += rng.randbytes(rng.randrange(1, 9))
    elif kind == 3:
        b[4] = rng.randrange(256)
    else:
        b[7:] = rng.randbytes(rng.randrange(0, 60))
    b[0:4] = struct.pack("<I", len(b))
    return bytes(b)


def framing_breaker(rng: random.Random) -> bytes:
    """Bytes after which the stream has no framing: a size under 7 or over any msize."""
    size = rng.choice([0, 3, 6, (1 << 20) + 25, 1 << 31, 0xFFFFFFFF])
    return struct.pack("<I", size) + rng.randbytes(rng.randrange(0, 20))


class Drain:
    """Reads a connection's replies as frames (headers only: a fuzzed Tversion may change
    the dialect under us) until EOF."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.replies: list[tuple[int, int]] = []  # (type, tag)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        buf = FrameBuffer(0xFFFFFFFF)
        try:
            while data := await self.reader.read(1 << 16):
                buf.receive_data(data)
                while (frame := buf.next_frame()) is not None:
                    _, mtype, tag = struct.unpack_from("<IBH", frame)
                    self.replies.append((mtype, tag))
        except ConnectionError:
            pass  # the server closed it: what this test provokes


async def hostile_connection(env, rng: random.Random, frames: int) -> tuple[int, int]:
    """One connection: a handshake, then *frames* fuzzed frames, then (mostly) a Tflush as a
    sync point, sometimes a framing breaker. (frames sent, replies received)."""
    dialect = rng.choice(list(Dialect))
    reader, writer = await asyncio.open_unix_connection(env.sock)
    drain = Drain(reader)
    try:
        writer.write(encode(m9.Tversion(tag=m9.NOTAG, msize=rng.choice([600, 8192, 1 << 20]),
                                        version=dialect.wire), dialect))
        writer.write(encode(m9.Tattach(tag=1, fid=0, afid=m9.NOFID, uname=b"fuzz", aname=b""),
                            dialect))
        writer.write(encode(m9.Twalk(tag=2, fid=0, newfid=1, wnames=(b"dir",)), dialect))
        for i in range(frames):
            roll = rng.random()
            if roll < 0.05:
                body = rng.randbytes(rng.randrange(0, 60))
                frame = struct.pack("<I", 7 + len(body)) + rng.randbytes(3) + body
            else:
                frame = random_request(rng, dialect)
                if roll < 0.5 and frame[4] not in (m9.MessageType.TFLUSH, m9.MessageType.TVERSION):
                    frame = mutate(rng, frame)  # (a broken Tflush or Tversion ends it, see below)
            if drain.task.done():
                break  # the server closed the connection
            writer.write(frame)
            if i % 20 == 19:
                await asyncio.wait_for(writer.drain(), 10)
        if rng.random() < 0.2:  # what closes a connection: bytes without framing ...
            writer.write(framing_breaker(rng))
        elif rng.random() < 0.1:  # ... or a Tflush or Tversion that does not decode
            writer.write(mutate(rng, encode(m9.Tflush(tag=9, oldtag=rng.randrange(99)), dialect)))
        else:
            writer.write(encode(m9.Tflush(tag=0xFFFE, oldtag=0xFFFD), dialect))
            await eventually(lambda: (109, 0xFFFE) in drain.replies or drain.task.done(), 30)
        await writer.drain()
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
        await drain.task
    return frames, len(drain.replies)


#: Hostile connections of 100 frames each: 4,000 frames per CI run; set
#: GRID_NINEP_FUZZ_CONNECTIONS=1000 for the 100,000-frame run issue 6 asks for.
CONNECTIONS = int(os.environ.get("GRID_NINEP_FUZZ_CONNECTIONS", "40"))


def test_random_and_mutated_frames(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="spawn.ninep")
    rng = random.Random(20240607)

    async def body():
        async with served(tmp_path) as env:
            keeper, root = await env.attached()  # a well-behaved client all along
            sent = answered = 0
            for i in range(CONNECTIONS):
                s, a = await hostile_connection(env, rng, 100)
                sent, answered = sent + s, answered + a
                if i % 10 == 9:  # the server still serves the well-behaved connection
                    assert len(await keeper.walk(root, 100 + i, [b"dir"])) == 1
            assert sent == CONNECTIONS * 100
            assert answered > CONNECTIONS * 50  # most frames got a reply: connections lived long
            await eventually(lambda: len(env.listener.sessions) == 1, timeout=30)
            # nothing left behind by the hostile connections
            assert env.live_fids() == 1 + CONNECTIONS // 10  # the keeper's root and its walks
            assert sum(env.engine._open.values()) == 0
            assert env.locks.count() == 0 and env.locks.waiting() == 0
            fresh, froot = await env.attached(b"9P2000")
            assert len(await fresh.walk(froot, 2, [b"dir"])) == 1
    run(body(), timeout=120)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors[:3]


def test_garbage_before_version_and_between_frames(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            rng = random.Random(7)
            for _ in range(30):
                c = await Client.connect_unix(env.sock)
                c.send_raw(rng.randbytes(rng.randrange(1, 200)))
                c.send_raw(encode(m9.Tversion(tag=m9.NOTAG, msize=8192, version=b"9P2000.L"),
                                  Dialect.LINUX))
                await asyncio.sleep(0)
                await c.close()
            await eventually(lambda: len(env.listener.sessions) == 0, timeout=30)
            c, root = await env.attached()
            assert await c.walk(root, 5, [b"dir"])
    run(body())
