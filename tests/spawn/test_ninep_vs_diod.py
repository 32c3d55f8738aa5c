"""The same 9P2000.L requests to diod (Debian's reference server, exporting a directory) and
to grid (a spawn of the same tree), as the same user, with the answers compared: issue 17's
cases, where grid used to differ (create over an existing file, xattr removal, a small
msize), and a tree with symlinks read whole through a 9P2000 client."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from spawn.ninep import messages as m9
from spawn.ninep.client import Client, ServerError
from tests.spawn.ninep_env import make_tree, run, served

DIOD = shutil.which("diod") or "/usr/sbin/diod"
if not os.path.exists(DIOD):
    pytest.skip("diod is not installed", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("diod -n serves as the user it runs as: these tests run as root", allow_module_level=True)


@contextlib.contextmanager
def diod_serving(tmp_path: Path):
    """diod exporting a copy of the test tree on a Unix socket; yields (socket, aname)."""
    data = tmp_path / "diod-data"
    data.mkdir()
    make_tree(data)
    sock = tmp_path / "diod.sock"
    p = subprocess.Popen([DIOD, "-f", "-n", "-l", str(sock), "-e", str(data),
                          "-L", str(tmp_path / "diod.log")], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"diod did not start: {(tmp_path / 'diod.log').read_text()}")
            time.sleep(0.05)
        yield sock, str(data).encode()
    finally:
        p.terminate()
        p.wait(10)


async def attach(sock: Path, aname: bytes, version: bytes = b"9P2000.L",
                 msize: int = 65536, uid: int = 1000) -> tuple[Client, int]:
    c = await Client.connect_unix(sock)
    await c.version(version, msize)
    root = c.fid()
    await c.attach(root, b"", aname, n_uname=uid)
    return c, root


async def outcome(coro) -> object:
    """What a request sequence gives: its value, or the errno it fails with."""
    try:
        return await coro
    except ServerError as e:
        return ("errno", e.errno)


async def lcreate_over_existing(c: Client, root: int) -> list[object]:
    out = []
    for flags in (os.O_RDWR | os.O_TRUNC, os.O_RDWR | os.O_EXCL, os.O_WRONLY):
        f = c.fid()
        await c.walk(root, f, [])
        out.append(await outcome(c.call(m9.Tlcreate, fid=f, name=b"hello.txt", flags=flags,
                                        mode=0o644, gid=1000)))
        with contextlib.suppress(ServerError):
            await c.clunk(f)
    g = c.fid()
    await c.walk(root, g, [b"hello.txt"])
    out.append((await c.getattr(g)).size)  # truncated by the first
    await c.clunk(g)
    return [x if isinstance(x, (tuple, int)) else type(x).__name__ for x in out]


async def xattr_removal(c: Client, root: int) -> list[object]:
    async def setx(name: bytes, value: bytes, flags: int) -> object:
        f = c.fid()
        await c.walk(root, f, [b"hello.txt"])
        await c.call(m9.Txattrcreate, fid=f, name=name, attr_size=len(value), flags=flags)
        if value:
            await c.write(f, 0, value)
        return await outcome(c.clunk(f))

    async def names() -> list[bytes]:
        f = c.fid()
        await c.walk(root, f, [b"hello.txt"])
        r = await c.call(m9.Txattrwalk, fid=f, newfid=(g := c.fid()), name=b"")
        data = await c.read(g, 0, r.size) if r.size else b""
        await c.clunk(g)
        await c.clunk(f)
        return sorted(n for n in data.split(b"\0") if n)

    out: list[object] = [await setx(b"user.a", b"1", 0), await names()]
    out += [await setx(b"user.a", b"", 0), await names()]          # removes it
    out += [await setx(b"user.gone", b"", 0)]                      # absent: ENODATA
    out += [await setx(b"user.gone", b"", 2)]                      # absent, XATTR_REPLACE
    return [x if not isinstance(x, m9.Message) else "ok" for x in out]


def test_create_over_an_existing_file_and_xattr_removal_agree_with_diod(tmp_path):
    async def body(diod_sock: Path, diod_aname: bytes):
        async with served(tmp_path / "grid") as env:
            results = {}
            for who, (sock, aname) in (("diod", (diod_sock, diod_aname)), ("grid", (env.sock, b"spawn"))):
                c, root = await attach(sock, aname, uid=0 if who == "diod" else 1000)
                results[who] = (await lcreate_over_existing(c, root), await xattr_removal(c, root))
                await c.close()
            assert results["grid"] == results["diod"], results
    (tmp_path / "grid").mkdir()
    with diod_serving(tmp_path) as (sock, aname):
        run(body(sock, aname))


def test_a_small_msize_is_accepted_as_diod_accepts_it(tmp_path):
    async def body(diod_sock: Path, diod_aname: bytes):
        async with served(tmp_path / "grid") as env:
            for sock, aname, uid in ((diod_sock, diod_aname, 0), (env.sock, b"spawn", 1000)):
                c, root = await attach(sock, aname, msize=256, uid=uid)
                assert c.msize == 256
                f = c.fid()
                await c.walk(root, f, [b"hello.txt"])
                await c.lopen(f)
                assert await c.read_all(f) == b"hello, world\n"
                with pytest.raises(ServerError) as ei:
                    await c.walk(root, c.fid(), [b"no" * 60])
                assert ei.value.errno == 2
                await c.close()
    (tmp_path / "grid").mkdir()
    with diod_serving(tmp_path) as (sock, aname):
        run(body(sock, aname))


def test_a_tree_with_symlinks_reads_whole_through_9p2000(tmp_path):
    """9P2000 has no symlinks: a link reads as a file holding its target, so a copy of the
    tree through a 9P2000 client has every entry (it used to fail with EINVAL)."""
    async def body():
        async with served(tmp_path) as env:
            c = await env.client(b"9P2000")
            root = c.fid()
            await c.attach(root, b"tester", b"spawn")
            f = c.fid()
            await c.walk(root, f, [b"link"])
            st = await c.stat(f)
            await c.open(f, m9.OREAD)
            assert await c.read_all(f) == b"hello.txt"
            assert st.length == len(b"hello.txt")
            g = c.fid()
            await c.walk(root, g, [b"link"])
            with pytest.raises(ServerError):
                await c.open(g, m9.OWRITE)
    run(body())
