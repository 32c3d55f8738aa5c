"""The 9P server end to end over a real Unix socket and a real spawn engine: version and
attach, the fid and walk rules, 9P2000 and 9P2000.u files (open, create, read, write, stat,
wstat, directory reads), errors in each dialect's form, and the per-connection limits.

9P2000.L operations are in test_ninep_linux.py, Tflush and pipelining in
test_ninep_flush.py, hostile bytes in test_ninep_fuzz.py.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

import pytest

from spawn.cred import ROOT
from spawn.ninep import messages as m9
from spawn.ninep.client import ServerError, blank_stat
from spawn.ninep.codec import encode
from spawn.ninep.messages import NOFID, NOTAG, Dialect
from spawn.ninep.session import MSIZE, Limits, negotiate
from tests.spawn.ninep_env import BIG, GID, UID, eventually, run, served

DIALECTS = [b"9P2000", b"9P2000.u", b"9P2000.L"]


def open_count(env) -> int:
    """Open handles the engine counts (released at clunk)."""
    return sum(env.engine._open.values())


async def open_file(c, root, path: bytes, mode: int = m9.OREAD) -> int:
    """Walk to *path* and open it in *mode* (9P2000 modes; translated for .L)."""
    fid = c.fid()
    await c.walk(root, fid, [n for n in path.split(b"/") if n])
    try:
        if c.dialect is Dialect.LINUX:
            flags = {m9.OREAD: os.O_RDONLY, m9.OWRITE: os.O_WRONLY, m9.ORDWR: os.O_RDWR}[mode & 3]
            await c.lopen(fid, flags | (os.O_TRUNC if mode & m9.OTRUNC else 0))
        else:
            await c.open(fid, mode)
    except ServerError:
        await c.clunk(fid)
        raise
    return fid


# --- version and attach -----------------------------------------------------------------------


def test_negotiate_version_strings():
    assert negotiate(b"9P2000") is Dialect.BASE
    assert negotiate(b"9P2000.u") is Dialect.UNIX
    assert negotiate(b"9P2000.L") is Dialect.LINUX
    assert negotiate(b"9P2000.X") is Dialect.BASE  # version(5): the part before the period
    assert negotiate(b"9P2000.L.extra") is Dialect.BASE
    assert negotiate(b"9P1999") is None
    assert negotiate(b"") is None


def test_version_msize_and_dialects(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            for v in DIALECTS:
                c = await env.client(None)
                r = await c.version(v, 8192)
                assert (r.version, r.msize) == (v, 8192)  # theirs is smaller: theirs
                r = await c.version(v, 64 << 20)
                assert r.msize == MSIZE >= 1 << 20  # ours is smaller: ours, at least 1 MiB
                assert r.tag == NOTAG
            c = await env.client(None)
            assert (await c.version(b"9P2000.x", 9000)).version == b"9P2000"
            r = await c.version(b"10P", 9000)
            assert r.version == b"unknown"
            # without a version, requests are refused (in 9P2000's form) and nothing opens
            reply = await c.rpc(m9.Tattach(tag=1, fid=1, afid=NOFID, uname=b"u", aname=b""))
            assert isinstance(reply, m9.Rerror)
            assert (await c.version(b"9P2000.L", 100)).version == b"unknown"  # msize too small
            assert env.live_fids() == 0
    run(body())


def test_new_version_resets_the_session(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(b"9P2000.L")
            f = await open_file(c, root, b"hello.txt")
            assert open_count(env) == 1
            assert env.live_fids() == 2
            await c.version(b"9P2000.L")
            assert env.live_fids() == 0
            assert open_count(env) == 0  # the open file was released in the engine
            with pytest.raises(ServerError) as ei:
                await c.read(f, 0, 10)
            assert ei.value.errno == errno.EBADF
            root = c.fid()
            await c.attach(root, b"u", b"", n_uname=UID)
            assert env.live_fids() == 1
    run(body())


@pytest.mark.parametrize("version", DIALECTS)
def test_auth_is_refused_so_clients_attach(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c = await env.client(version)
            extra = {} if c.dialect is Dialect.BASE else {"n_uname": UID}
            reply = await c.rpc(m9.Tauth(tag=3, afid=9, uname=b"u", aname=b"", **extra))
            if c.dialect is Dialect.LINUX:
                assert reply == m9.Rlerror(tag=3, ecode=errno.ENOENT)
            else:
                assert isinstance(reply, m9.Rerror) and b"authentication" in reply.ename
                assert reply.errno == (errno.ENOENT if c.dialect is Dialect.UNIX else 0)
            with pytest.raises(ServerError):  # an afid we never made
                await c.attach(1, b"u", b"", afid=9)
            qid = await c.attach(1, b"u", b"spawn", n_uname=UID)
            assert qid.type == m9.QTDIR and qid.path == 1
    run(body())


def test_attach_goes_through_the_resolver_with_the_peer(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            c = await env.client(b"9P2000.L")
            await c.attach(1, b"alice", b"spawn", n_uname=1234)
            uname, aname, n_uname, peer = env.attaches[-1]
            assert (uname, aname, n_uname) == (b"alice", b"spawn", 1234)
            assert (peer.uid, peer.gid, peer.pid) == (os.getuid(), os.getgid(), os.getpid())
            with pytest.raises(ServerError) as ei:
                await c.attach(2, b"alice", b"forbidden")
            assert ei.value.errno == errno.EACCES
            with pytest.raises(ServerError) as ei:
                await c.attach(2, b"alice", b"nosuch")
            assert ei.value.errno == errno.ENOENT
            with pytest.raises(ServerError) as ei:
                await c.attach(1, b"alice", b"")  # fid in use
            assert ei.value.errno == errno.EBADF
            assert env.live_fids() == 1
    run(body())


# --- fids and walks ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", DIALECTS)
def test_walk_rules(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            # clone with no names; the clone is a new fid at the same place
            assert await c.walk(root, 10, []) == ()
            assert (await c.stat(10) if c.dialect is not Dialect.LINUX
                    else await c.getattr(10)).qid.path == 1
            # newfid = fid moves the fid itself
            qids = await c.walk(10, 10, [b"dir", b"sub"])
            assert [q.type for q in qids] == [m9.QTDIR, m9.QTDIR]
            deep = await c.walk(10, 11, [b"deep"])
            assert deep[0].type == m9.QTFILE
            # '..' climbs the fid's own path; at the attach root it stays there
            up = await c.walk(10, 12, [b"..", b"..", b"..", b".."])
            assert [q.path for q in up][1:] == [1, 1, 1]
            assert up[0].path == qids[0].path
            # partial walk: the qids that worked, and newfid is not made
            part = await c.walk(root, 13, [b"dir", b"nosuch", b"x"])
            assert len(part) == 1
            with pytest.raises(ServerError) as ei:
                await c.clunk(13)
            assert ei.value.errno == errno.EBADF
            part = await c.walk(10, 10, [b"deep", b"under-a-file"])  # newfid = fid: unchanged
            assert len(part) == 1
            assert (await c.walk(10, 14, [b"deep"]))[0] == deep[0]
            # the first name failing is an error, and the fid is not made either
            with pytest.raises(ServerError) as ei:
                await c.walk(root, 13, [b"nosuch"])
            assert ei.value.errno == errno.ENOENT
            for bad in (b"a/b", b"a\0b", b""):
                with pytest.raises(ServerError):
                    await c.walk(root, 13, [bad])
            # newfid in use, unknown fid
            with pytest.raises(ServerError) as ei:
                await c.walk(root, 11, [b"dir"])
            assert ei.value.errno == errno.EBADF
            with pytest.raises(ServerError) as ei:
                await c.walk(999, 15, [])
            assert ei.value.errno == errno.EBADF
            # sixteen names at most: the seventeenth does not even decode
            assert len(await c.walk(root, 16, [b".."] * 16)) == 16
            frame = bytearray(encode(m9.Twalk(tag=60005, fid=root, newfid=17, wnames=(b"..",) * 16),
                                     c.dialect))
            frame[15:17] = struct.pack("<H", 17)
            frame += struct.pack("<H", 2) + b".."
            frame[0:4] = struct.pack("<I", len(frame))
            c.send_raw(bytes(frame))
            await eventually(lambda: any(t == 60005 for t, _ in c.received))
            reply = next(msg for t, msg in c.received if t == 60005)
            assert isinstance(reply, m9.Rlerror | m9.Rerror)
            assert not c.closed
            assert env.live_fids() == 6  # root, 10, 11, 12, 14, 16
    run(body())


@pytest.mark.parametrize("version", DIALECTS)
def test_open_fid_rules(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            f = await open_file(c, root, b"dir")
            if c.dialect is Dialect.LINUX:  # relaxed as diod does: to another fid only
                w1, w2 = c.fid(), c.fid()
                assert len(await c.walk(f, w1, [b"a"])) == 1
                assert await c.walk(f, w2, []) == ()
                await c.clunk(w1)
                await c.clunk(w2)
            else:
                with pytest.raises(ServerError):  # walk(5): no walking from an open fid
                    await c.walk(f, c.fid(), [b"a"])
                with pytest.raises(ServerError):  # not even a clone
                    await c.walk(f, c.fid(), [])
            with pytest.raises(ServerError):  # never a walk that moves the open fid itself
                await c.walk(f, f, [b"a"])
            with pytest.raises(ServerError):  # no second open
                if c.dialect is Dialect.LINUX:
                    await c.lopen(f)
                else:
                    await c.open(f)
            g = await open_file(c, root, b"hello.txt", m9.OREAD)
            with pytest.raises(ServerError) as ei:
                await c.write(g, 0, b"x")
            assert ei.value.errno == errno.EBADF
            h = await open_file(c, root, b"hello.txt", m9.OWRITE)
            with pytest.raises(ServerError) as ei:
                await c.read(h, 0, 5)
            assert ei.value.errno == errno.EBADF
            with pytest.raises(ServerError) as ei:
                await c.read(c.fid(), 0, 5)  # unknown fid
            assert ei.value.errno == errno.EBADF
            unopened = c.fid()
            await c.walk(root, unopened, [b"hello.txt"])
            with pytest.raises(ServerError) as ei:
                await c.read(unopened, 0, 5)
            assert ei.value.errno == errno.EBADF
            with pytest.raises(ServerError) as ei:  # a directory opens for reading only
                await open_file(c, root, b"dir", m9.ORDWR)
            assert ei.value.errno == errno.EISDIR
            for fid in (f, g, h, unopened):
                await c.clunk(fid)
            assert open_count(env) == 0
            assert env.live_fids() == 1
    run(body())


def test_fid_limit(tmp_path):
    async def body():
        async with served(tmp_path, limits=Limits(max_fids=4)) as env:
            c, root = await env.attached(b"9P2000.L")
            for fid in (2, 3, 4):
                await c.walk(root, fid, [])
            with pytest.raises(ServerError) as ei:
                await c.walk(root, 5, [])
            assert ei.value.errno == errno.EMFILE
            await c.clunk(4)
            await c.walk(root, 5, [b"dir"])
            assert env.live_fids() == 4
    run(body())


# --- 9P2000 and 9P2000.u files ----------------------------------------------------------------


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u"])
def test_read_write_truncate_and_rclose(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            f = await open_file(c, root, b"big.bin")
            assert await c.read_all(f) == BIG
            assert await c.read(f, len(BIG) - 3, 100) == BIG[-3:]
            assert await c.read(f, len(BIG) + 100, 100) == b""
            g = await open_file(c, root, b"hello.txt", m9.ORDWR)
            assert await c.write(g, 7, b"grid!") == 5
            assert await c.read(g, 0, 100) == b"hello, grid!\n"
            t = await open_file(c, root, b"hello.txt", m9.OWRITE | m9.OTRUNC)
            assert (await c.stat(t)).length == 0
            # ORCLOSE: the file goes when the fid is clunked
            d = c.fid()
            await c.walk(root, d, [b"dir"])
            await c.create(d, b"scratch", 0o644, m9.ORDWR | m9.ORCLOSE)
            await c.write(d, 0, b"temporary")
            probe = c.fid()
            await c.walk(root, probe, [b"dir", b"scratch"])
            await c.clunk(probe)
            await c.clunk(d)
            assert len(await c.walk(root, probe, [b"dir", b"scratch"])) == 1  # partial: gone
            # a big read is cut to what the msize can carry
            c2 = await env.client(version, 4096)
            r2 = c2.fid()
            await c2.attach(r2, b"u", b"")
            f2 = await open_file(c2, r2, b"big.bin")
            assert len(await c2.read(f2, 0, 1 << 20)) == 4096 - 11
            for fid in (f, g, t):
                await c.clunk(fid)
            assert open_count(env) == 1  # c2's
    run(body())


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u"])
def test_create_files_and_directories(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            d = c.fid()
            await c.walk(root, d, [b"dir"])
            qid, iounit = await c.create(d, b"new.txt", 0o666, m9.ORDWR)
            assert qid.type == m9.QTFILE and iounit == c.msize - 24
            await c.write(d, 0, b"abc")
            st = await c.stat(d)
            assert (st.name, st.length) == (b"new.txt", 3)
            a = env.engine.lookup(ROOT, env.engine.lookup(ROOT, 1, b"dir").ino, b"new.txt")
            assert (a.uid, a.gid) == (UID, GID)
            dir_perm = env.engine.lookup(ROOT, 1, b"dir").mode & 0o777
            if c.dialect is Dialect.BASE:  # create(5): masked by the directory's bits
                assert a.mode & 0o777 == 0o666 & (~0o666 | dir_perm)
            else:
                assert a.mode & 0o777 == 0o666
            await c.clunk(d)
            d = c.fid()
            await c.walk(root, d, [b"dir"])
            qid, _ = await c.create(d, b"newdir", m9.DMDIR | 0o755, m9.OREAD)
            assert qid.type == m9.QTDIR
            assert await c.list_dir(d) == []
            await c.clunk(d)
            d = c.fid()
            await c.walk(root, d, [b"dir"])
            with pytest.raises(ServerError) as ei:
                await c.create(d, b"a", 0o644)
            assert ei.value.errno == errno.EEXIST
            for bad in (b".", b"..", b"x/y", b"", b"n" * 256):
                with pytest.raises(ServerError):
                    await c.create(d, bad, 0o644)
            with pytest.raises(ServerError) as ei:  # a directory for writing
                await c.create(d, b"d2", m9.DMDIR | 0o755, m9.ORDWR)
            assert ei.value.errno == errno.EISDIR
            f = c.fid()
            await c.walk(root, f, [b"hello.txt"])
            with pytest.raises(ServerError) as ei:
                await c.create(f, b"inside", 0o644)
            assert ei.value.errno == errno.ENOTDIR
            assert open_count(env) == 0
    run(body())


def test_dotu_special_files(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(b"9P2000.u")

            async def make(name, perm, ext=b""):
                d = c.fid()
                await c.walk(root, d, [])
                await c.create(d, name, perm, m9.OREAD, ext)
                await c.clunk(d)

            await make(b"sym", m9.DMSYMLINK | 0o777, b"hello.txt")
            await make(b"fifo", m9.DMNAMEDPIPE | 0o644)
            await make(b"suid", m9.DMSETUID | 0o755)
            with pytest.raises(ServerError) as ei:  # device nodes are root's to make
                await make(b"null", m9.DMDEVICE | 0o666, b"c 1 3")
            assert ei.value.errno == errno.EPERM
            env.uid = env.gid = 0
            c, root = await env.attached(b"9P2000.u")
            await make(b"null", m9.DMDEVICE | 0o666, b"c 1 3")
            await make(b"sda", m9.DMDEVICE | 0o660, b"b 8 0")
            target = c.fid()
            await c.walk(root, target, [b"hello.txt"])
            await make(b"hard", m9.DMLINK, b"%d\n" % target)
            e = env.engine
            assert e.readlink(ROOT, e.lookup(ROOT, 1, b"sym").ino) == b"hello.txt"
            assert stat.S_ISFIFO(e.lookup(ROOT, 1, b"fifo").mode)
            assert e.lookup(ROOT, 1, b"null").rdev == os.makedev(1, 3)
            assert stat.S_ISBLK(e.lookup(ROOT, 1, b"sda").mode)
            assert e.lookup(ROOT, 1, b"suid").mode & 0o7777 == 0o4755
            assert e.lookup(ROOT, 1, b"hard").ino == e.lookup(ROOT, 1, b"hello.txt").ino
            d = await open_file(c, root, b"")
            stats = {s.name: s for s in await c.list_dir(d)}
            assert stats[b"sym"].mode & m9.DMSYMLINK and stats[b"sym"].extension == b"hello.txt"
            assert stats[b"sym"].qid.type == m9.QTSYMLINK
            assert stats[b"null"].extension == b"c 1 3"
            assert stats[b"sda"].extension == b"b 8 0"
            assert stats[b"fifo"].mode & m9.DMNAMEDPIPE
            assert stats[b"suid"].mode & m9.DMSETUID
            assert stats[b"hello.txt"].n_uid == e.lookup(ROOT, 1, b"hello.txt").uid
            for ext in (b"x 1 2", b"c one two", b"c 1"):
                with pytest.raises(ServerError):
                    await make(b"bad", m9.DMDEVICE | 0o600, ext)
    run(body())


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u"])
def test_stat(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            st = await c.stat(root)
            assert st.name == b"/" and st.mode & m9.DMDIR and st.length == 0
            f = c.fid()
            await c.walk(root, f, [b"dir", b"b"])
            st = await c.stat(f)
            a = env.engine.lookup(ROOT, env.engine.lookup(ROOT, 1, b"dir").ino, b"b")
            assert (st.name, st.length, st.qid.path) == (b"b", 20, a.ino)
            assert st.mode == a.mode & 0o777
            assert st.mtime == a.mtime_ns // 10**9
            assert st.uid == str(a.uid).encode()
            assert st.qid.version == a.ctime_ns & 0xFFFFFFFF
            if c.dialect is Dialect.UNIX:
                assert (st.n_uid, st.n_gid) == (a.uid, a.gid)
            link = c.fid()
            await c.walk(root, link, [b"link"])
            st = await c.stat(link)
            if c.dialect is Dialect.UNIX:
                assert st.extension == b"hello.txt" and st.mode & m9.DMSYMLINK
            else:
                assert st.extension == b"" and st.qid.type == m9.QTFILE
    run(body())


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u"])
def test_directory_read_offsets(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            d = await open_file(c, root, b"many")
            from spawn.ninep.codec import unpack_stats
            dialect = c.dialect
            names: list[bytes] = []
            offset = 0
            counts = []
            first = await c.read(d, 0, 200)
            assert first and len(first) <= 200
            got = unpack_stats(first, dialect)  # whole entries only
            names += [s.name for s in got]
            offset = len(first)
            # the directory changes during the pass: the pass is not disturbed
            w = c.fid()
            await c.walk(root, w, [b"many"])
            await c.create(w, b"zz-new", 0o644, m9.OWRITE)
            await c.clunk(w)
            with pytest.raises(ServerError) as ei:  # not the previous offset + count
                await c.read(d, offset + 1, 200)
            assert ei.value.errno == errno.EINVAL
            with pytest.raises(ServerError):
                await c.read(d, 3, 200)
            with pytest.raises(ServerError):  # too small for one entry
                await c.read(d, offset, 10)
            while True:
                data = await c.read(d, offset, 300)
                if not data:
                    break
                counts.append(len(data))
                names += [s.name for s in unpack_stats(data, dialect)]
                offset += len(data)
            assert names == [b"f%02d" % i for i in range(40)]
            assert all(n <= 300 for n in counts)
            # offset 0 starts a new pass, which sees the change
            again = [s.name for s in await c.list_dir(d)]
            assert again == [*names, b"zz-new"]
    run(body())


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u"])
def test_wstat_all_or_nothing(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached(version)
            f = c.fid()
            await c.walk(root, f, [b"dir", b"a"])
            dir_ino = e.lookup(ROOT, 1, b"dir").ino
            before = e.lookup(ROOT, dir_ino, b"a")
            # renaming onto an existing name fails, and the mode change with it does not happen
            with pytest.raises(ServerError) as ei:
                await c.wstat(f, blank_stat(name=b"b", mode=0o600))
            assert ei.value.errno == errno.EEXIST
            assert e.lookup(ROOT, dir_ino, b"a").mode == before.mode
            # a bad field anywhere: nothing changes
            with pytest.raises(ServerError):
                await c.wstat(f, blank_stat(name=b"renamed", mode=m9.DMDIR | 0o600))
            with pytest.raises(ServerError):
                await c.wstat(f, blank_stat(name=b"renamed", type=5))
            with pytest.raises(ServerError):
                await c.wstat(f, blank_stat(name=b"bad/name", mode=0o600))
            with pytest.raises(ServerError):
                await c.wstat(f, blank_stat(mode=0o600, muid=b"someone"))
            assert e.lookup(ROOT, dir_ino, b"a").mode == before.mode
            assert [n for n, _ in e.readdir(ROOT, dir_ino)] == [b"a", b"b", b"sub"]
            # everything at once: name, mode, mtime, length
            await c.wstat(f, blank_stat(name=b"renamed", mode=0o600, mtime=1_000_000,
                                        length=4))
            a = e.lookup(ROOT, dir_ino, b"renamed")
            assert (a.ino, a.mode & 0o777, a.mtime_ns, a.size) == (before.ino, 0o600,
                                                                  1_000_000 * 10**9, 4)
            assert (await c.stat(f)).name == b"renamed"  # the fid follows its file
            # a blank wstat changes nothing (stat(5): a request to sync)
            await c.wstat(f, blank_stat())
            assert e.lookup(ROOT, dir_ino, b"renamed") == a
            # gid by number; the owner only in .u (n_uid), as Linux chown does
            await c.wstat(f, blank_stat(gid=b"2000"))
            assert e.lookup(ROOT, dir_ino, b"renamed").gid == 2000
            if c.dialect is Dialect.UNIX:
                with pytest.raises(ServerError) as ei:  # giving a file away is root's
                    await c.wstat(f, blank_stat(n_uid=4321, n_gid=4322))
                assert ei.value.errno == errno.EPERM
                assert e.lookup(ROOT, dir_ino, b"renamed").uid == 1000
            # directories: no length but 0, and the root has no name to change
            d = c.fid()
            await c.walk(root, d, [b"dir", b"sub"])
            with pytest.raises(ServerError):
                await c.wstat(d, blank_stat(length=5, name=b"sub2"))
            assert e.lookup(ROOT, dir_ino, b"sub")
            await c.wstat(d, blank_stat(length=0, mode=m9.DMDIR | 0o700))
            assert e.lookup(ROOT, dir_ino, b"sub").mode & 0o777 == 0o700
            with pytest.raises(ServerError) as ei:
                await c.wstat(root, blank_stat(name=b"newroot"))
            assert ei.value.errno == errno.EBUSY
            # a stale path (renamed behind the fid's back) is refused, not misapplied
            await c.clunk(f)
            f = c.fid()
            await c.walk(root, f, [b"dir", b"b"])
            await env.link.call("rename", ROOT, dir_ino, b"b", dir_ino, b"b-moved")  # on the owner
            await env.link.call("create", ROOT, dir_ino, b"b", 0o644)
            with pytest.raises(ServerError) as ei:
                await c.wstat(f, blank_stat(name=b"c"))
            # 9P2000 texts have no ESTALE (Linux's table lacks it): the name is "not found"
            stale = errno.ENOENT if c.dialect is Dialect.BASE else errno.ESTALE
            assert ei.value.errno == stale
            assert {n for n, _ in e.readdir(ROOT, dir_ino)} == {b"b", b"b-moved", b"renamed", b"sub"}
    run(body())


@pytest.mark.parametrize("version", DIALECTS)
def test_remove_always_clunks(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            f = c.fid()
            await c.walk(root, f, [b"dir", b"a"])
            await c.remove(f)
            assert len(await c.walk(root, c.fid(), [b"dir", b"a"])) == 1  # partial: gone
            with pytest.raises(ServerError) as ei:
                await c.clunk(f)
            assert ei.value.errno == errno.EBADF
            d = c.fid()
            await c.walk(root, d, [b"dir"])
            with pytest.raises(ServerError) as ei:  # not empty: fails, and the fid is gone
                await c.remove(d)
            assert ei.value.errno == errno.ENOTEMPTY
            with pytest.raises(ServerError):
                await c.clunk(d)
            r2 = c.fid()
            await c.walk(root, r2, [])
            with pytest.raises(ServerError) as ei:
                await c.remove(r2)
            assert ei.value.errno == errno.EBUSY
            # an open file removed: its data stays until the clunk releases it
            g = await open_file(c, root, b"hello.txt")
            h = c.fid()
            await c.walk(root, h, [b"hello.txt"])
            await c.remove(h)
            assert await c.read(g, 0, 5) == b"hello"
            await c.clunk(g)
            assert open_count(env) == 0
            assert env.live_fids() == 1
    run(body())


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", DIALECTS)
def test_errors_in_the_dialects_form(tmp_path, version):
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            reply = await c.rpc(m9.Twalk(tag=60004, fid=root, newfid=9, wnames=(b"nosuch",)))
            if c.dialect is Dialect.LINUX:
                assert reply == m9.Rlerror(tag=60004, ecode=errno.ENOENT)
            else:
                assert isinstance(reply, m9.Rerror)
                # a bare text that 9P2000 clients' tables map to ENOENT (spawn.ninep.errtext)
                assert reply.ename == b"file not found"
                assert reply.errno == (errno.ENOENT if c.dialect is Dialect.UNIX else 0)
            # a message of another dialect: an error for that tag, the connection stays
            if c.dialect is Dialect.LINUX:
                raw = encode(m9.Topen(tag=60006, fid=root, mode=0), Dialect.BASE)
            else:
                raw = encode(m9.Tlopen(tag=60006, fid=root, flags=0), Dialect.LINUX)
            c.send_raw(raw)
            await eventually(lambda: any(t == 60006 for t, _ in c.received))
            reply = next(msg for t, msg in c.received if t == 60006)
            if c.dialect is Dialect.LINUX:
                assert reply == m9.Rlerror(tag=60006, ecode=errno.EOPNOTSUPP)
            else:
                assert isinstance(reply, m9.Rerror)
            # a reply type sent to the server
            c.send_raw(encode(m9.Rclunk(tag=60007), c.dialect))
            await eventually(lambda: any(t == 60007 for t, _ in c.received))
            assert all(isinstance(msg, m9.Rlerror if c.dialect is Dialect.LINUX else m9.Rerror)
                       for t, msg in c.received if t in (60004, 60006, 60007))
            assert await c.walk(root, 9, [b"dir"])  # still serving
    run(body())


def test_two_sessions_share_the_spawn(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            a, ra = await env.attached(b"9P2000")
            b, rb = await env.attached(b"9P2000.L")
            fa = await open_file(a, ra, b"hello.txt", m9.ORDWR)
            fb = await open_file(b, rb, b"hello.txt")
            await a.write(fa, 0, b"HELLO")
            assert await b.read(fb, 0, 5) == b"HELLO"  # at once (invariant 8)
    run(body())
