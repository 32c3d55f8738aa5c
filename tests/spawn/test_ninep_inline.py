"""Requests run where they arrive (spawn.ninep.session, ``SessionCore._start``): a request that
needs no wait is answered inline, in arrival order, without a task; one that waits goes on in
a task from where it stopped, with the same context, and Tflush still finds it there.
Real sockets, a real engine (tests/spawn/ninep_env.py)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from spawn.cred import Cred
from spawn.ninep import messages as m9
from spawn.ninep.codec import encode
from spawn.ninep.messages import Dialect
from tests.spawn.ninep_env import run, served

_CALLER: contextvars.ContextVar[Cred | None] = contextvars.ContextVar("caller", default=None)


class GatedLink:
    """Wraps the engine's link. ``getattr`` of the root is answered at once, without an
    await (as the daemon's ctl tree and snapshot reads are); everything else sets a context
    variable around a call that really waits (as the daemon's namespace link does), and
    waits for ``gate`` first when one is set."""

    def __init__(self, inner: Any, root_attr: Any) -> None:
        self.inner = inner
        self.root_attr = root_attr
        self.gate: asyncio.Future[None] | None = None
        self.waited = 0

    async def call(self, op: str, cred: Cred, *args: Any, **kw: Any) -> Any:
        if op == "getattr" and args == (self.root_attr.ino,) and self.gate is None:
            return self.root_attr
        token = _CALLER.set(cred)
        try:
            self.waited += 1
            if self.gate is not None:
                await self.gate
            value = await self.inner.call(op, cred, *args, **kw)
            assert _CALLER.get() is cred
            return value
        finally:
            _CALLER.reset(token)  # ValueError if the context changed across the wait

    def close(self) -> None:
        self.inner.close()


async def _gated(env: Any) -> GatedLink:
    root_attr = await env.link.call("getattr", env.attachment().cred, 1)
    link = GatedLink(env.link, root_attr)
    env.link = link
    return link


def test_waiting_requests_keep_their_context(tmp_path):
    """A handler whose link sets a context variable, waits for the engine's thread and
    resets it: the rest of the request runs in the context it began in (before requests
    ran inline this was a task's own; an inline start must give the same)."""
    async def body():
        async with served(tmp_path) as env:
            link = await _gated(env)
            c, root = await env.attached()
            fid = await c.walk_open(root, b"hello.txt")
            assert await c.read(fid, 0, 100) == b"hello, world\n"
            await c.clunk(fid)
            assert link.waited >= 3
    run(body())


def test_inline_replies_come_in_arrival_order_in_one_chunk(tmp_path):
    """100 Tgetattr of the root in one write: each is answered inline, so the replies come
    in the order the requests were sent (9P does not require it; it shows no task ran)."""
    async def body():
        async with served(tmp_path) as env:
            await _gated(env)
            c, root = await env.attached()
            tags = list(range(100, 200))
            futs = [c.send(m9.Tgetattr(tag=t, fid=root, request_mask=m9.GetattrMask.BASIC))
                    for t in tags]
            replies = await asyncio.gather(*futs)
            assert all(isinstance(r, m9.Rgetattr) and r.qid.path == 1 for r in replies)
            got = [tag for tag, _ in c.received if tag in set(tags)]
            assert got == tags
    run(body())


def test_flush_of_a_request_that_began_inline_and_waits(tmp_path):
    """A request that started inline and then waits in an engine call cannot be stopped:
    the Tflush is answered after its reply, never before (flush(5), docs/9p.md)."""
    async def body():
        async with served(tmp_path) as env:
            link = await _gated(env)
            c, root = await env.attached()
            link.gate = asyncio.get_running_loop().create_future()
            pending = c.send(m9.Tgetattr(tag=50, fid=root, request_mask=m9.GetattrMask.BASIC))
            flushed = c.send(m9.Tflush(tag=51, oldtag=50))
            await asyncio.sleep(0.2)
            assert not pending.done() and not flushed.done()  # both wait for the gate
            link.gate.set_result(None)
            reply = await pending
            await flushed
            assert isinstance(reply, m9.Rgetattr)
            order = [tag for tag, _ in c.received if tag in (50, 51)]
            assert order == [50, 51]
            link.gate = None
            # the session goes on: a pipelined walk/getattr/clunk chain on a new fid in one
            # write is answered in order
            nf = c.fid()
            frames = [m9.Twalk(tag=60, fid=root, newfid=nf, wnames=(b"dir",)),
                      m9.Tgetattr(tag=61, fid=nf, request_mask=m9.GetattrMask.BASIC),
                      m9.Tclunk(tag=62, fid=nf)]
            futs = [c.send(f) for f in frames]
            walk, attr, clunk = await asyncio.gather(*futs)
            assert len(walk.wqids) == 1 and attr.qid == walk.wqids[0]
            assert isinstance(clunk, m9.Rclunk)
            assert env.live_fids() == 1
    run(body())


def test_a_burst_beyond_the_request_limit_still_answers_everything(tmp_path):
    """More pipelined requests in one write than the session's request slots: the read
    loop waits for a slot with the replies already made sent, not held."""
    from spawn.ninep.session import Limits

    async def body():
        async with served(tmp_path, limits=Limits(max_requests=4)) as env:
            link = await _gated(env)
            c, root = await env.attached()
            fid = await c.walk_open(root, b"big.bin")
            data = b"".join(
                encode(m9.Tread(tag=300 + i, fid=fid, offset=i * 1000, count=1000),
                       Dialect.LINUX) for i in range(40))
            futs = [c.send(m9.Tgetattr(tag=200 + i, fid=root, request_mask=m9.GetattrMask.BASIC))
                    for i in range(40)]
            c.send_raw(data)  # their replies land in c.received only
            await asyncio.gather(*futs)
            await asyncio.wait_for(
                _until(lambda: sum(1 for t, _ in c.received if 300 <= t < 340) == 40), 20)
            reads = {t: m.data for t, m in c.received if 300 <= t < 340}
            big = (tmp_path / "src" / "big.bin").read_bytes()
            assert all(reads[300 + i] == big[i * 1000:(i + 1) * 1000] for i in range(40))
            assert link.waited >= 40
    run(body())


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.01)
