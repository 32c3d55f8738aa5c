"""9P2000 error texts (spawn/ninep/errtext.py, docs/9p.md "Error texts"): every errno grid
can answer is sent as a text that plain 9P2000 clients map back to that errno, checked
against the strings Linux v9fs matches (net/9p/error.c), over the wire in 9P2000 and .u,
and with p9fs (a 9P2000 client we did not write)."""

from __future__ import annotations

import asyncio
import errno
import re
from pathlib import Path

import pytest

from spawn.ninep import messages as m9
from spawn.ninep.client import blank_stat, errno_from_text
from spawn.ninep.errtext import Explained, errno_of, text_of
from tests.spawn.ninep_env import run, served

REPO = Path(__file__).resolve().parents[2]

#: The strings of Linux's net/9p/error.c for the errnos below (Linux compares Rerror's
#: whole text with these; any other text is a "server fault").
LINUX = {
    "Operation not permitted": errno.EPERM, "No such file or directory": errno.ENOENT,
    "file not found": errno.ENOENT, "Interrupted system call": errno.EINTR,
    "Input/output error": errno.EIO, "No such device or address": errno.ENXIO,
    "Argument list too long": errno.E2BIG, "Bad file descriptor": errno.EBADF,
    "Resource temporarily unavailable": errno.EAGAIN, "Cannot allocate memory": errno.ENOMEM,
    "Permission denied": errno.EACCES, "Device or resource busy": errno.EBUSY,
    "File exists": errno.EEXIST, "Invalid cross-device link": errno.EXDEV,
    "No such device": errno.ENODEV, "Not a directory": errno.ENOTDIR,
    "Is a directory": errno.EISDIR, "Invalid argument": errno.EINVAL,
    "Too many open files": errno.EMFILE, "Text file busy": errno.ETXTBSY,
    "File too large": errno.EFBIG, "No space left on device": errno.ENOSPC,
    "Read-only file system": errno.EROFS, "Too many links": errno.EMLINK,
    "Numerical result out of range": errno.ERANGE, "File name too long": errno.ENAMETOOLONG,
    "Function not implemented": errno.ENOSYS, "Directory not empty": errno.ENOTEMPTY,
    "Too many levels of symbolic links": errno.ELOOP, "No data available": errno.ENODATA,
    "Protocol error": errno.EPROTO, "Operation not supported": errno.EOPNOTSUPP,
    "Connection reset by peer": errno.ECONNRESET, "Disk quota exceeded": errno.EDQUOT,
}
#: errnos Linux's table has no string for, and the errno their text gives instead
SUBSTITUTED = {errno.ESTALE: errno.ENOENT, errno.EOVERFLOW: errno.ERANGE}
#: errnos the host's filesystem may give the store or the engine, besides those named in
#: the code
FROM_THE_HOST = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EMLINK, errno.EIO,
                 errno.ENOMEM, errno.EAGAIN, errno.ETXTBSY}


def emitted() -> set[int]:
    """Every errno named in the 9P server, the engine and the daemon's 9P namespace."""
    names: set[str] = set()
    for path in [*(REPO / "spawn").rglob("*.py"), *(REPO / "grid" / "daemon").glob("ninep*.py")]:
        names |= set(re.findall(r"errno\.(E[A-Z0-9]+)", path.read_text()))
    return {getattr(errno, n) for n in names}


def test_every_errno_grid_answers_maps_back_through_linuxs_table():
    codes = emitted() | FROM_THE_HOST
    assert {errno.ENOENT, errno.ENOTEMPTY, errno.EACCES, errno.ESTALE} <= codes  # the scan works
    for code in sorted(codes):
        text = text_of(code)
        assert text in LINUX, (errno.errorcode[code], text)
        assert LINUX[text] == SUBSTITUTED.get(code, code), (errno.errorcode[code], text)
        assert errno_of(text) == SUBSTITUTED.get(code, code)  # and grid's own client agrees


def test_explained_errors_keep_their_words():
    e = Explained(errno.EINVAL, "usage: spawn NAME")
    assert e.errno == errno.EINVAL and e.strerror == "Invalid argument: usage: spawn NAME"
    assert errno_of(e.strerror) == errno.EINVAL


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u"])
def test_rmdir_missing_file_and_permission_texts(tmp_path, version):
    """The three cases of issue 17 on the wire: a non-empty directory's removal, a missing
    file, a permission refusal; the text alone names the errno, and .u carries the number."""
    async def body():
        async with served(tmp_path) as env:
            c = await env.client(version)
            root = c.fid()
            await c.attach(root, b"tester", b"spawn", n_uname=1000)

            async def reply(msg: m9.Message) -> tuple[bytes, int]:
                r = await c.rpc(msg)
                assert isinstance(r, m9.Rerror), r
                return r.ename, r.errno

            d = c.fid()
            await c.walk(root, d, [b"dir"])
            got = [await reply(m9.Tremove(tag=c.tag(), fid=d))]
            got.append(await reply(m9.Twalk(tag=c.tag(), fid=root, newfid=c.fid(),
                                            wnames=(b"nope",))))
            f = c.fid()
            await c.walk(root, f, [b"hello.txt"])
            await c.wstat(f, blank_stat(mode=0))  # the tree is the attaching user's
            got.append(await reply(m9.Topen(tag=c.tag(), fid=f, mode=m9.OREAD)))
            expect = [(b"Directory not empty", errno.ENOTEMPTY), (b"file not found", errno.ENOENT),
                      (b"Permission denied", errno.EACCES)]
            u = c.dialect is m9.Dialect.UNIX
            assert got == [(text, code if u else 0) for text, code in expect]
            assert [LINUX[t.decode()] for t, _ in got] == [code for _, code in expect]
    run(body())


p9fs = pytest.importorskip("p9fs", reason="p9fs is not installed (pip install p9fs)")


def test_p9fs_in_9p2000_sees_the_errors(tmp_path):
    """p9fs reads error texts only: a missing file is known by "file not found" (so its
    exists() works against grid), and the others come through word for word."""
    from py9p import py9p

    async def body():
        async with served(tmp_path, tcp=True) as env:
            port = env.tcp_port
            c = await env.client(b"9P2000")
            root = c.fid()
            await c.attach(root, b"tester", b"spawn")
            f = c.fid()
            await c.walk(root, f, [b"dir", b"a"])
            await c.wstat(f, blank_stat(mode=0))

            def session() -> list[object]:
                fs = p9fs.P9FileSystem("127.0.0.1", port, "tester", version="9P2000",
                                       aname="spawn", skip_instance_cache=True)
                out: list[object] = [fs.exists("nope"), fs.exists("hello.txt")]
                for act in (lambda: fs.rmdir("dir"), lambda: fs.open("dir/a", "rb").read()):
                    try:
                        act()
                        out.append("no error")
                    except py9p.RpcError as e:
                        out.append(e.args[0])
                return out
            got = await asyncio.get_running_loop().run_in_executor(None, session)
            assert got == [False, True, b"Directory not empty", b"Permission denied"]
            await c.close()
    run(body())


def test_a_client_error_text_round_trip():
    """grid's own client reads both kinds of text (spawn.ninep.client.errno_from_text)."""
    assert errno_from_text("file not found") == errno.ENOENT
    assert errno_from_text("Directory not empty") == errno.ENOTEMPTY
    assert errno_from_text("Invalid argument: usage: save [NAME] | kill") == errno.EINVAL
    assert errno_from_text("something else") == 0
