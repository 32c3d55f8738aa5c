"""Tflush, pipelining and the request limits, through the real server.

flush(5): Rflush always; never a reply to the flushed tag after its Rflush; several flushes
of one tag answered in order; a tag not in flight (unknown, or already answered) flushed at
once. The requests that can really be stopped are the ones waiting (a blocked lock, a
request waiting for its fid's turn), and a stopped request never happened."""

from __future__ import annotations

import os

from spawn.cred import ROOT
from spawn.ninep import messages as m9
from spawn.ninep.client import Flushed
from spawn.ninep.messages import LockFlags, LockStatus, LockType
from spawn.ninep.session import Limits
from tests.spawn.ninep_env import eventually, run, served


def tlock(c, fid, type=LockType.WRLCK, flags=LockFlags.BLOCK, tag=None, pid=1):
    return m9.Tlock(tag=c.tag() if tag is None else tag, fid=fid, type=type, flags=flags,
                    start=0, length=0, proc_id=pid, client_id=b"host")


async def locked_pair(env):
    """Two sessions with hello.txt open; the first holds a write lock on all of it."""
    a, ra = await env.attached()
    b, rb = await env.attached()
    fa, fb = a.fid(), b.fid()
    await a.walk(ra, fa, [b"hello.txt"])
    await a.lopen(fa, os.O_RDWR)
    await b.walk(rb, fb, [b"hello.txt"])
    await b.lopen(fb, os.O_RDWR)
    assert (await a.call(m9.Tlock, **_fields(tlock(a, fa, flags=0)))).status == 0
    return a, fa, b, fb, rb


def _fields(msg):
    return {k: getattr(msg, k) for k in ("fid", "type", "flags", "start", "length", "proc_id",
                                         "client_id")}


def replies_for(c, tag):
    return [msg for t, msg in c.received if t == tag]


def test_flush_of_unknown_and_answered_tags(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached()
            assert await c.rpc(m9.Tflush(tag=7, oldtag=4321)) == m9.Rflush(tag=7)
            r = await c.rpc(m9.Tgetattr(tag=8, fid=root, request_mask=1))
            assert isinstance(r, m9.Rgetattr)
            assert await c.rpc(m9.Tflush(tag=9, oldtag=8)) == m9.Rflush(tag=9)  # answered
            assert await c.rpc(m9.Tflush(tag=10, oldtag=10)) == m9.Rflush(tag=10)  # itself
            assert c.unexpected == []
    run(body())


def test_flush_stops_a_blocked_lock(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            a, fa, b, fb, _ = await locked_pair(env)
            blocked = b.send(tlock(b, fb, tag=500))
            await eventually(lambda: env.locks.waiting() == 1)
            await b.flush(500)
            assert isinstance(blocked.exception(), Flushed)
            assert env.locks.waiting() == 0
            # the lock was not taken, and no reply to tag 500 comes, even after the holder
            # lets go (a later round trip proves the server is past any such reply)
            await a.call(m9.Tlock, **_fields(tlock(a, fa, LockType.UNLCK, flags=0)))
            g = await a.call(m9.Tgetlock, fid=fa, type=LockType.WRLCK, start=0, length=0,
                             proc_id=9, client_id=b"other")
            assert g.type == LockType.UNLCK
            await b.call(m9.Tgetattr, fid=fb, request_mask=1)
            assert [type(msg) for msg in replies_for(b, 500)] == []
            flushes = [t for t, msg in b.received if isinstance(msg, m9.Rflush)]
            assert len(flushes) == 1
            assert b.unexpected == []
    run(body())


def test_several_flushes_are_answered_in_order(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            _, _, b, fb, _ = await locked_pair(env)
            b.send(tlock(b, fb, tag=600))
            await eventually(lambda: env.locks.waiting() == 1)
            f1 = b.send(m9.Tflush(tag=601, oldtag=600))
            f2 = b.send(m9.Tflush(tag=602, oldtag=600))
            f3 = b.send(m9.Tflush(tag=603, oldtag=601))  # a flush of a flush
            await f1
            await f2
            await f3
            order = [t for t, msg in b.received if t in (600, 601, 602, 603)]
            assert order == [601, 602, 603]  # and nothing for 600
    run(body())


def test_flush_of_a_request_waiting_for_its_fid(tmp_path):
    """A clunk queued behind a blocked lock on the same fid waits for its turn; flushing
    it stops it there: no Rclunk, and the fid still exists."""
    async def body():
        async with served(tmp_path) as env:
            a, fa, b, fb, rb = await locked_pair(env)
            b.send(tlock(b, fb, tag=700))
            await eventually(lambda: env.locks.waiting() == 1)
            clunk = b.send(m9.Tclunk(tag=701, fid=fb))
            later = b.send(m9.Tgetattr(tag=702, fid=fb, request_mask=1))  # queued behind it
            r = await b.rpc(m9.Tgetattr(tag=705, fid=rb, request_mask=1))  # another fid: not
            assert isinstance(r, m9.Rgetattr)
            assert not clunk.done() and not later.done()
            assert await b.rpc(m9.Tflush(tag=703, oldtag=701)) == m9.Rflush(tag=703)
            assert replies_for(b, 701) == []
            assert isinstance(await later, m9.Rgetattr)  # its turn came once the clunk stopped
            assert env.live_fids() == 4  # both roots and both files
            # now let the lock through: it was never flushed, so it is answered
            await a.call(m9.Tlock, **_fields(tlock(a, fa, LockType.UNLCK, flags=0)))
            r = await b.rpc(m9.Tgetattr(tag=704, fid=fb, request_mask=1))
            await eventually(lambda: replies_for(b, 700) != [])
            assert replies_for(b, 700)[0] == m9.Rlock(tag=700, status=LockStatus.SUCCESS)
    run(body())


def test_pipelined_requests_out_of_order_and_in_fid_order(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            _, _, b, fb, rb = await locked_pair(env)
            lock = b.send(tlock(b, fb, tag=800))
            # a chain on a new fid, sent without waiting: walk, open, read, clunk
            f = 77
            chain = [b.send(m9.Twalk(tag=801, fid=rb, newfid=f, wnames=(b"dir", b"a"))),
                     b.send(m9.Tlopen(tag=802, fid=f, flags=os.O_RDONLY)),
                     b.send(m9.Tread(tag=803, fid=f, offset=0, count=100)),
                     b.send(m9.Tclunk(tag=804, fid=f)),
                     b.send(m9.Tread(tag=805, fid=f, offset=0, count=100))]
            got = [await x for x in chain]
            assert [type(x) for x in got] == [m9.Rwalk, m9.Rlopen, m9.Rread, m9.Rclunk,
                                              m9.Rlerror]
            assert got[2].data == b"A" * 10
            assert not lock.done()  # the lock, sent first, is still waiting: out of order
            await b.flush(800)
            order = [t for t, _ in b.received if 800 <= t <= 805]
            assert order == [801, 802, 803, 804, 805]
    run(body())


def test_version_aborts_what_is_in_flight(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            _, _, b, fb, _ = await locked_pair(env)
            b.send(tlock(b, fb, tag=900))
            await eventually(lambda: env.locks.waiting() == 1)
            before = env.live_fids()
            await b.version(b"9P2000.L")
            assert env.locks.waiting() == 0
            assert env.live_fids() == before - 2  # b's root and file are clunked
            await b.rpc(m9.Tflush(tag=901, oldtag=4))
            assert replies_for(b, 900) == []
    run(body())


def test_request_limit_pushes_back_and_flush_still_gets_through(tmp_path):
    limits = Limits(max_requests=3, max_lock_waits=8)
    async def body():
        async with served(tmp_path, limits=limits) as env:
            _, _, b, fb, rb = await locked_pair(env)
            # two blocked locks fill the lock waits (max_requests - 1 of them at most) ...
            w1 = b.send(tlock(b, fb, tag=1001, pid=11))
            w2 = b.send(tlock(b, fb, tag=1002, pid=12))
            await eventually(lambda: env.locks.waiting() == 2)
            # ... and a third is answered BLOCKED at once rather than waiting
            r = await b.rpc(tlock(b, fb, tag=1003, pid=13))
            assert r.status == LockStatus.BLOCKED
            # many pipelined requests still all get through the one free slot
            futs = [b.send(m9.Tgetattr(tag=1100 + i, fid=rb, request_mask=1)) for i in range(50)]
            got = [await f for f in futs]
            assert all(isinstance(r, m9.Rgetattr) for r in got)
            s = next(iter(s for s in env.listener.sessions if s.statistics().lock_waits))
            assert s.statistics().requests <= 3
            await b.flush(1001)
            await b.flush(1002)
            assert w1.done() and w2.done()
            assert env.locks.waiting() == 0
    run(body())


def test_oversize_frame_closes_only_that_connection(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            good, groot = await env.attached()
            bad = await env.client(b"9P2000.L", 8192)
            r = bad.fid()
            await bad.attach(r, b"u", b"")
            f = bad.fid()
            await bad.walk(r, f, [b"hello.txt"])
            await bad.lopen(f, os.O_RDWR)
            # a Twrite bigger than the msize both sides agreed on
            bad.send_raw(m9_frame(m9.Twrite(tag=5, fid=f, offset=0, data=b"x" * 9000)))
            await eventually(lambda: bad.closed)
            await eventually(lambda: len(env.listener.sessions) == 1)
            assert env.engine.read(ROOT, env.engine.lookup(ROOT, 1, b"hello.txt").ino, 0, 5) == b"hello"
            assert await good.walk(groot, good.fid(), [b"dir"])  # unaffected
            assert env.live_fids() == 2
            assert sum(env.engine._open.values()) == 0  # bad's open file was released
    run(body())


def m9_frame(msg):
    from spawn.ninep.codec import encode
    from spawn.ninep.messages import Dialect
    return encode(msg, Dialect.LINUX)
