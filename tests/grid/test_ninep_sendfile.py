"""Reads the kernel serves (docs/9p.md): through a real daemon's 9P socket, a spawn's base
files of 1 MiB and more are answered from the daemon's decoded-content cache
(store.plaincache) with sendfile. Shown here: the bytes are the file's at every offset, with
our client, diodcat and over TLS; a client that stops reading while large replies are under
way still gets every byte in order (the socket fills, the rest goes through the transport); a
change to the file is what is read afterwards, before and after its checkpoint; two spawns of
one tree share the decoded content; the daemon reports the cache's work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from grid.daemon.client import DaemonClient
from spawn.ninep import messages as m9
from spawn.ninep.client import Client
from spawn.ninep.codec import encode
from spawn.ninep.messages import Dialect
from tests.grid.gridnode import Node, User, free_port, make_user, new_node

if os.geteuid() != 0:
    pytest.skip("runs as root (the daemon's 9P socket, real users for TLS)", allow_module_level=True)

MIB = 1 << 20


def _content(seed: int, size: int) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(40 << 10) + bytes(24 << 10)
    return bytes(out[:size])


FILES = {"big": _content(1, 3 * MIB + 4321), "mid": _content(2, MIB), "small": _content(3, 70000),
         "other": _content(4, 2 * MIB)}


@dataclass
class Env:
    node: Node
    alice: User
    port: int
    sid: str

    @property
    def sock(self) -> str:
        return str(self.node.home / "run" / "9p.sock")

    def cache(self) -> dict[str, int]:
        with DaemonClient(self.node.home / "run" / "grid.sock", timeout=10) as c:
            return c.call("ping")["content_cache"]


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    alice = make_user("gridtest-alice")
    n = new_node()
    try:
        n.init()
        n.import_shared(n.write_tree(FILES, owner=alice), "tree")
        n.grid("user", "add", alice.name, "--uid", str(alice.uid))
        port = free_port()
        n.start("--9p", f"127.0.0.1:{port}")
        sid = n.grid("spawn", "-q", "tree", user=alice).stdout.strip()
        yield Env(n, alice, port, sid)
    finally:
        n.close()


async def _attached(e: Env, msize: int = 65536 + 24, sid: str | None = None) -> tuple[Client, int]:
    c = await Client.connect_unix(e.sock)
    await c.version(b"9P2000.L", msize)
    await c.attach(0, b"root", (sid or e.sid).encode(), n_uname=0)
    return c, 0


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_reads_are_the_files_bytes_and_come_from_the_cache(env: Env) -> None:
    before = env.cache()

    async def body() -> None:
        c, root = await _attached(env)
        try:
            for name, data in FILES.items():
                fid = await c.walk_open(root, name.encode())
                assert await c.read_all(fid) == data, name
                await c.clunk(fid)
            fid = await c.walk_open(root, b"big")
            rnd = random.Random(7)
            big = FILES["big"]
            for _ in range(200):
                off = rnd.randrange(len(big) + 10)
                n = rnd.randrange(1, 65536)
                assert await c.read(fid, off, n) == big[off:off + n], (off, n)
            await c.clunk(fid)
        finally:
            await c.close()

    _run(body())
    after = env.cache()
    assert after["limit"] > 0
    assert after["hits"] > before["hits"]  # read from decoded memory, not decoded again
    # the small file is left to the store's leaf cache; the others are held whole once
    whole = sum(len(d) for k, d in FILES.items() if len(d) >= MIB)
    assert after["held"] - before["held"] <= whole
    fills = after["fills"]
    _run(body())  # all of it again: nothing decoded anew
    assert env.cache()["fills"] == fills


def test_diodcat_reads_the_same_bytes(env: Env, tmp_path) -> None:
    diodcat = shutil.which("diodcat") or "/usr/sbin/diodcat"
    for msize in ("8192", "65536", "1048600"):
        out = tmp_path / f"out-{msize}"
        with open(out, "wb") as f:
            subprocess.run([diodcat, "-s", env.sock, "-a", env.sid, "-m", msize, "big"],
                           stdout=f, check=True, timeout=60)
        assert out.read_bytes() == FILES["big"], msize


def test_a_client_that_stops_reading_still_gets_every_reply_in_order(env: Env) -> None:
    """Sixteen 1 MiB Treads sent at once to a client that reads nothing for a while: the
    socket fills in the middle of a sendfile, and the rest of that reply and the replies
    after it go through the transport's buffer, in order, whole."""
    async def body() -> None:
        c, root = await _attached(env, msize=MIB + 24)
        try:
            fid = await c.walk_open(root, b"other")
            c.writer.transport.pause_reading()
            offsets = [(i * 700_000) % (2 * MIB) for i in range(16)]
            futs = [c.send(m9.Tread(tag=500 + i, fid=fid, offset=off, count=MIB))
                    for i, off in enumerate(offsets)]
            await asyncio.sleep(0.5)
            c.writer.transport.resume_reading()
            replies = await asyncio.gather(*futs)
            data = FILES["other"]
            for off, r in zip(offsets, replies, strict=True):
                assert isinstance(r, m9.Rread) and r.data == data[off:off + MIB]
            got = [t for t, _ in c.received if 500 <= t < 516]
            assert got == sorted(got)
            # the session goes on
            assert await c.read(fid, 5, 10) == data[5:15]
        finally:
            await c.close()

    _run(body())


def test_changes_are_what_is_read_before_and_after_the_checkpoint(env: Env) -> None:
    sid = env.node.grid("spawn", "-q", "tree", user=env.alice).stdout.strip()
    want = bytearray(FILES["big"])

    async def read_all(c: Client, root: int) -> bytes:
        fid = await c.walk_open(root, b"big")
        try:
            return await c.read_all(fid)
        finally:
            await c.clunk(fid)

    async def body() -> None:
        c, root = await _attached(env, sid=sid)
        try:
            assert await read_all(c, root) == want  # decoded into the cache
            w = await c.walk_open(root, b"big", os.O_RDWR)
            patch = os.urandom(5000)
            assert await c.write(w, MIB + 100, patch) == len(patch)
            want[MIB + 100:MIB + 5100] = patch
            assert await read_all(c, root) == want  # not yet committed: the host reads
            await asyncio.sleep(3)  # the idle checkpoint: reads need no hop again
            assert await read_all(c, root) == want
            # shrink, then grow: the bytes past the cut are zeros, not the old content
            await c.call(m9.Tsetattr, fid=w, valid=m9.SetattrMask.SIZE, mode=0, uid=0, gid=0,
                         size=2 * MIB + 7, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
            await c.call(m9.Tsetattr, fid=w, valid=m9.SetattrMask.SIZE, mode=0, uid=0, gid=0,
                         size=3 * MIB, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
            del want[2 * MIB + 7:]
            want.extend(bytes(3 * MIB - len(want)))
            assert await read_all(c, root) == want
            await asyncio.sleep(3)
            assert await read_all(c, root) == want
            await c.clunk(w)
        finally:
            await c.close()

    _run(body())
    # the change stays in that spawn: the first still reads the tree as imported
    async def first() -> None:
        c, root = await _attached(env)
        try:
            assert await read_all(c, root) == FILES["big"]
        finally:
            await c.close()

    _run(first())
    env.node.grid("kill", "--force", sid, user=env.alice)


def test_two_spawns_of_one_tree_share_the_decoded_content(env: Env) -> None:
    sid = env.node.grid("spawn", "-q", "tree", user=env.alice).stdout.strip()

    async def read(s: str) -> None:
        c, root = await _attached(env, sid=s)
        try:
            fid = await c.walk_open(root, b"mid")
            assert await c.read_all(fid) == FILES["mid"]
        finally:
            await c.close()

    _run(read(env.sid))
    before = env.cache()
    _run(read(sid))
    after = env.cache()
    assert after["fills"] == before["fills"] and after["contents"] == before["contents"]
    assert after["hits"] > before["hits"]
    env.node.grid("kill", "--force", sid, user=env.alice)


def test_over_tls_the_same_bytes(env: Env) -> None:
    """A TLS connection cannot take bytes written under it: the reply goes through the
    transport, from the same decoded memory."""
    from tests.grid.test_ninep_service import _tls_attach, tls_ctx

    bundle = env.node.home / "certs" / "users" / env.alice.name
    ctx = tls_ctx(bundle / "cert.pem", bundle / "key.pem", bundle / "ca.pem")

    async def body() -> None:
        c = await _tls_attach(env.port, ctx, env.alice.name.encode(), env.sid.encode())
        try:
            fid = await c.walk_open(0, b"big")
            t0 = time.monotonic()
            assert await c.read_all(fid) == FILES["big"]
            assert time.monotonic() - t0 < 60
        finally:
            await c.close()

    _run(body())


def test_pipelined_requests_keep_their_order_around_reads_from_memory(env: Env) -> None:
    """In one write: read, write the same range through another fid, read again, clunk,
    read the clunked fid. The second read sees the write (it waits behind it: nothing is
    answered from memory while a request is in flight), the last one is refused, and every
    reply comes in the order asked."""
    sid = env.node.grid("spawn", "-q", "tree", user=env.alice).stdout.strip()

    async def body() -> None:
        c, root = await _attached(env, sid=sid)
        try:
            r = await c.walk_open(root, b"big")
            w = await c.walk_open(root, b"big", os.O_RDWR)
            assert await c.read(r, 0, 10) == FILES["big"][:10]  # in memory from here on
            patch = b"X" * 4096
            msgs = [m9.Tread(tag=700, fid=r, offset=MIB, count=8192),
                    m9.Twrite(tag=701, fid=w, offset=MIB, data=patch),
                    m9.Tread(tag=702, fid=r, offset=MIB, count=8192),
                    m9.Tclunk(tag=703, fid=r),
                    m9.Tread(tag=704, fid=r, offset=0, count=10)]
            got, order = await _pipelined(c, msgs)
            big = FILES["big"]
            assert got[700].data == big[MIB:MIB + 8192]
            assert got[701].count == len(patch)
            assert got[702].data == patch + big[MIB + 4096:MIB + 8192]
            assert isinstance(got[703], m9.Rclunk)
            assert isinstance(got[704], m9.Rlerror)
            assert order.index(701) < order.index(702) and order.index(703) < order.index(704)
            await c.clunk(w)
        finally:
            await c.close()

    _run(body())
    env.node.grid("kill", "--force", sid, user=env.alice)


async def _until(pred) -> None:
    while not pred():
        await asyncio.sleep(0.01)


async def _pipelined(c: Client, msgs: list[m9.Message]) -> tuple[dict[int, m9.Message], list[int]]:
    """Send *msgs* in one write; their replies by tag, and the tags in the order answered."""
    tags = {m.tag for m in msgs}
    c.send_raw(b"".join(encode(m, Dialect.LINUX) for m in msgs))
    await asyncio.wait_for(_until(lambda: sum(1 for t, _ in c.received if t in tags) == len(tags)), 30)
    return ({t: m for t, m in c.received if t in tags}, [t for t, _ in c.received if t in tags])


def test_the_cache_can_be_turned_off_and_a_bad_size_is_refused(tmp_path) -> None:
    n = new_node()
    try:
        n.init()
        bad = n.grid("serve", "--content-cache", "lots", check=False)
        assert bad.returncode == 2 and "not a size: 'lots'" in bad.stderr
        n.import_shared(n.write_tree({"big": FILES["big"]}), "t")
        n.start("--content-cache", "0")
        sid = n.grid("spawn", "-q", "t").stdout.strip()
        with DaemonClient(n.home / "run" / "grid.sock", timeout=10) as c:
            assert "content_cache" not in c.call("ping")
        e = Env(n, None, 0, sid)  # type: ignore[arg-type]

        async def body() -> None:
            c, root = await _attached(e)
            try:
                fid = await c.walk_open(root, b"big")
                assert await c.read_all(fid) == FILES["big"]  # read by the engine, as before
            finally:
                await c.close()

        _run(body())
    finally:
        n.close()


def test_a_burst_of_reads_with_a_write_inside_is_answered_in_order(env: Env) -> None:
    """Forty Treads in one write, a Twrite of the range they read as the twenty-first:
    the reads before it are answered from memory where they arrive, the write stops that
    (it waits for the spawn's host), and the reads after it see the written bytes."""
    sid = env.node.grid("spawn", "-q", "tree", user=env.alice).stdout.strip()

    async def body() -> None:
        c, root = await _attached(env, sid=sid)
        try:
            r = await c.walk_open(root, b"other")
            w = await c.walk_open(root, b"other", os.O_RDWR)
            await c.read(r, 0, 10)
            patch = b"Y" * 1000
            msgs: list[m9.Message] = [m9.Tread(tag=800 + i, fid=r, offset=MIB, count=3000)
                                      for i in range(20)]
            msgs.append(m9.Twrite(tag=820, fid=w, offset=MIB, data=patch))
            msgs += [m9.Tread(tag=821 + i, fid=r, offset=MIB, count=3000) for i in range(20)]
            got, order = await _pipelined(c, msgs)
            old = FILES["other"][MIB:MIB + 3000]
            new = patch + old[1000:]
            assert all(got[800 + i].data == old for i in range(20))
            assert got[820].count == 1000
            assert all(got[821 + i].data == new for i in range(20))
            assert order == sorted(order)
            await c.clunk(w)
            await c.clunk(r)
        finally:
            await c.close()

    _run(body())
    env.node.grid("kill", "--force", sid, user=env.alice)


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(d))
    return out


def test_a_first_read_is_decoded_ahead_by_the_decoder_process_which_ends_with_the_daemon(
        tmp_path) -> None:
    """A sequential first read of a large base file: the bytes are right, the daemon's
    decoder process decoded part of them (docs/store.md, "Decoded contents"), and a SIGKILL
    of the daemon ends that process too (it reads the end of its socket)."""
    data = _content(9, 12 * MIB + 5)
    n = new_node()
    try:
        n.init()
        n.import_shared(n.write_tree({"huge": data}), "t")
        n.start()
        sid = n.grid("spawn", "-q", "t").stdout.strip()
        out = tmp_path / "out"
        diodcat = shutil.which("diodcat") or "/usr/sbin/diodcat"
        with open(out, "wb") as f:
            subprocess.run([diodcat, "-s", str(n.home / "run" / "9p.sock"), "-a", sid, "-m", "65536",
                            "huge"], stdout=f, check=True, timeout=60)
        assert out.read_bytes() == data
        with DaemonClient(n.home / "run" / "grid.sock", timeout=10) as c:
            stats = c.call("ping")["content_cache"]
        assert stats["decoder_runs"] > 0 and stats["ahead_fills"] > 0, stats
        assert n.proc is not None
        helpers = [p for p in _children(n.proc.pid)
                   if b"store.decoder" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(helpers) == 1
        n.kill9()
        stat = Path(f"/proc/{helpers[0]}/stat")

        def ended() -> bool:  # gone, or a zombie waiting for whoever adopted it
            with contextlib.suppress(OSError):
                return stat.read_text().rpartition(")")[2].split()[0] == "Z"
            return True

        deadline = time.monotonic() + 15
        while not ended() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ended()
    finally:
        n.close()
