"""A real 9P server for tests: a small tree imported into a LocalStore, a spawn engine over
it, and spawn.ninep.server listening on a Unix socket in the test's own event loop.

Nothing is mocked: requests go through the codec, the session, a LocalLink and the engine.
Tests are plain functions that call ``run(coro)`` (the project has no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from spawn.engine import Engine
from spawn.importer import Importer
from spawn.ninep.client import Client
from spawn.ninep.locks import LockTable
from spawn.ninep.server import Listener, serve_tcp, serve_unix
from spawn.ninep.session import Attachment, Limits, Peer
from spawn.vfslink import LocalLink
from store.local import LocalStore

T = TypeVar("T")
UID, GID = 1000, 1000
BIG = bytes(range(256)) * 1200  # 300 KiB, more than one small read


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    """Run one test body on a fresh event loop, with a generous deadline (a hang fails)."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_tree(src: Path) -> None:
    """The tree every server test starts from."""
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "hello.txt").write_bytes(b"hello, world\n")
    (src / "big.bin").write_bytes(BIG)
    (src / "dir" / "a").write_bytes(b"A" * 10)
    (src / "dir" / "b").write_bytes(b"B" * 20)
    (src / "dir" / "sub" / "deep").write_bytes(b"deep\n")
    os.symlink("hello.txt", src / "link")
    for i in range(40):
        (src / "many" / f"f{i:02d}").parent.mkdir(exist_ok=True)
        (src / "many" / f"f{i:02d}").write_bytes(b"%d" % i)
    # The attach acts as UID (the engine checks its permissions): the tree is that user's.
    for p in [src, *src.rglob("*")]:
        os.lchown(p, UID, GID)


@dataclass
class Env:
    """One spawn and a listener serving it."""

    tmp: Path
    store: LocalStore
    engine: Engine
    link: LocalLink
    sock: Path
    listener: Listener | None = None
    tcp: Listener | None = None  # also listening on TCP (p9fs speaks TCP only)
    locks: LockTable = field(default_factory=LockTable)
    attaches: list[tuple[bytes, bytes, int, Peer]] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    uid: int = UID  # who the next attach acts as (the engine checks its permissions)
    gid: int = GID

    def attachment(self) -> Attachment:
        return Attachment(link=self.link, uid=self.uid, gid=self.gid, groups=frozenset({self.gid, 2000}),
                          locks=self.locks, fsid=7)

    def resolver_for(self, peer: Peer) -> Callable[[bytes, bytes, int], Awaitable[Attachment]]:
        async def resolve(uname: bytes, aname: bytes, n_uname: int) -> Attachment:
            self.attaches.append((uname, aname, n_uname, peer))
            if aname == b"forbidden":
                raise PermissionError("not yours")
            if aname not in (b"", b"spawn"):
                raise LookupError(f"no spawn {aname!r}")
            return self.attachment()
        return resolve

    async def client(self, version: bytes = b"9P2000.L", msize: int | None = None) -> Client:
        c = await Client.connect_unix(self.sock)
        self.clients.append(c)
        if version:
            if msize is None:
                await c.version(version)
            else:
                await c.version(version, msize)
        return c

    async def attached(self, version: bytes = b"9P2000.L") -> tuple[Client, int]:
        """A client that has negotiated *version* and attached fid 0; (client, root fid)."""
        c = await self.client(version)
        root = c.fid()
        await c.attach(root, b"tester", b"spawn", n_uname=UID)
        return c, root

    def live_fids(self) -> int:
        assert self.listener is not None
        sessions = self.listener.sessions | (self.tcp.sessions if self.tcp else set())
        return sum(s.statistics().fids for s in sessions)

    @property
    def tcp_port(self) -> int:
        assert self.tcp is not None and self.tcp.server is not None
        return self.tcp.server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def served(tmp: Path, *, limits: Limits | None = None,
                 tcp: bool = False) -> AsyncIterator[Env]:
    """Import the test tree, spawn it, serve it; close everything at the end."""
    src = tmp / "src"
    src.mkdir()
    make_tree(src)
    LocalStore.create(tmp / "store")
    store = LocalStore.open(tmp / "store")
    root = Importer(store).run(src)
    engine = Engine(store, tmp / "overlay", root)
    link = LocalLink(engine)
    env = Env(tmp, store, engine, link, tmp / "9p.sock")
    try:
        env.listener = await serve_unix(env.sock, env.resolver_for, limits=limits)
        if tcp:
            env.tcp = await serve_tcp("127.0.0.1", 0, env.resolver_for, limits=limits)
        yield env
    finally:
        for c in env.clients:
            await c.close()
        for lst in (env.listener, env.tcp):
            if lst is not None:
                await lst.close()
        link.close()
        engine.close()
        store.close()


async def eventually(pred: Callable[[], Any], timeout: float = 10) -> None:
    """Wait until *pred()* is true (state changes that travel through the event loop)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)
