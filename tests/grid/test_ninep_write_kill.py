"""9P writes and a SIGKILL of the daemon right after their Rwrite: every written byte is
there after the restart (docs/spawn.md: a completed operation is journaled before it is
answered). The writes are 1 MiB Twrites, received into their own frame buffers and written
from views of them (spawn/ninep/receiver.py), and a few small ones across page edges."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from spawn.ninep import messages as m9
from spawn.ninep.client import Client
from spawn.ninep.server import MSIZE
from tests.grid.gridnode import Node, new_node

if os.geteuid() != 0:
    pytest.skip("runs as root (the daemon's 9P socket as its owner)", allow_module_level=True)

IOUNIT = MSIZE - m9.IOHDRSZ


@pytest.fixture
def node() -> Iterator[tuple[Node, str]]:
    n = new_node()
    try:
        n.init()
        n.grid("import", str(n.write_tree({"keep": "kept\n"})), "w")
        n.start()
        sid = n.grid("spawn", "-q", "w").stdout.strip()
        yield n, sid
    finally:
        n.close()


async def attached(n: Node, sid: str) -> tuple[Client, int]:
    c = await Client.connect_unix(n.home / "run" / "9p.sock")
    await c.version(b"9P2000.L", MSIZE)
    root = c.fid()
    await c.attach(root, b"", sid.encode(), n_uname=0)
    return c, root


def test_twrites_survive_sigkill_right_after_rwrite(node: tuple[Node, str]) -> None:
    n, sid = node
    data = bytearray(os.urandom(3 * IOUNIT + 12345))
    small = [(70_000, b"a" * 100), (65_530, b"b" * 20), (3 * IOUNIT + 12_000, b"c" * 2000)]

    async def write() -> None:
        c, root = await attached(n, sid)
        f = c.fid()
        await c.walk(root, f)
        await c.lcreate(f, b"big", os.O_WRONLY, 0o644, 0)
        for off in range(0, len(data), IOUNIT):
            assert await c.write(f, off, bytes(data[off:off + IOUNIT])) == len(data[off:off + IOUNIT])
        for off, piece in small:
            assert await c.write(f, off, piece) == len(piece)
            data[off:off + len(piece)] = piece
        n.kill9()  # the last Rwrite is in: no clunk, no checkpoint, no flush
        await c.close()

    async def read() -> bytes:
        c, root = await attached(n, sid)
        f = await c.walk_open(root, b"big")
        got = await c.read_all(f)
        await c.close()
        return got

    asyncio.run(write())
    n.start()
    got = asyncio.run(read())
    assert len(got) == len(data)
    assert got == data
