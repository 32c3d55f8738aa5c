"""9P2000.L through the server, message by message: lopen and lcreate flags, getattr and
setattr masks, readdir cookies, xattrs, statfs, fsync, links, symlinks, device nodes,
directories, renames, unlinkat, and POSIX locks across sessions. A .L connection only
ever gets Rlerror; a 9P2000 connection never does."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from spawn.cred import ROOT
from spawn.ninep import messages as m9
from spawn.ninep.client import ServerError
from spawn.ninep.codec import encode
from spawn.ninep.locks import EOF, LockTable
from spawn.ninep.messages import Dialect, GetattrMask, LockFlags, LockStatus, LockType, SetattrMask
from spawn.ninep.requests_linux import V9FS_MAGIC
from spawn.ninep.session import XATTR_CREATE, XATTR_REPLACE
from tests.spawn.ninep_env import GID, UID, eventually, run, served


async def lwalk(c, root, *names: bytes) -> int:
    fid = c.fid()
    got = await c.walk(root, fid, names)
    assert len(got) == len(names)
    return fid


def test_lopen_lcreate_flags(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached()
            d = await lwalk(c, root, b"dir")
            qid, iounit = await c.lcreate(d, b"new", os.O_RDWR | os.O_CREAT, 0o640, GID)
            assert qid.type == m9.QTFILE and iounit == c.msize - 24
            assert await c.write(d, 0, b"0123456789") == 10
            assert await c.read(d, 2, 3) == b"234"
            a = e.lookup(ROOT, e.lookup(ROOT, 1, b"dir").ino, b"new")
            assert (a.mode & 0o7777, a.uid, a.gid, a.size) == (0o640, UID, GID, 10)
            # a gid the attach may use is taken; another falls back to the attach's own
            await c.lcreate(await lwalk(c, root, b"dir"), b"g2000", os.O_WRONLY, 0o600, 2000)
            await c.lcreate(await lwalk(c, root, b"dir"), b"g3000", os.O_WRONLY, 0o600, 3000)
            dino = e.lookup(ROOT, 1, b"dir").ino
            assert e.lookup(ROOT, dino, b"g2000").gid == 2000
            assert e.lookup(ROOT, dino, b"g3000").gid == GID
            with pytest.raises(ServerError) as ei:  # O_EXCL: the name must be new
                await c.lcreate(await lwalk(c, root, b"dir"), b"new", os.O_RDWR | os.O_EXCL,
                                0o600, GID)
            assert ei.value.errno == errno.EEXIST
            # without O_EXCL, open(2)'s O_CREAT: the file there is opened, as diod does
            await c.lcreate(await lwalk(c, root, b"dir"), b"new", os.O_RDONLY, 0o600, GID)
            # O_APPEND writes land at the end whatever the offset; O_TRUNC empties
            f = await lwalk(c, root, b"dir", b"new")
            await c.lopen(f, os.O_WRONLY | os.O_APPEND)
            await c.write(f, 0, b"END")
            assert e.read(ROOT, a.ino, 0, 100) == b"0123456789END"
            t = await lwalk(c, root, b"dir", b"new")
            await c.lopen(t, os.O_WRONLY | os.O_TRUNC)
            assert e.getattr(ROOT, a.ino).size == 0
            # directories: read-only, and O_DIRECTORY on a file fails
            with pytest.raises(ServerError) as ei:
                await c.lopen(await lwalk(c, root, b"dir"), os.O_RDWR)
            assert ei.value.errno == errno.EISDIR
            with pytest.raises(ServerError) as ei:
                await c.lopen(await lwalk(c, root, b"hello.txt"), os.O_RDONLY | os.O_DIRECTORY)
            assert ei.value.errno == errno.ENOTDIR
            with pytest.raises(ServerError) as ei:  # .L reads directories with Treaddir only
                dd = await lwalk(c, root, b"dir")
                await c.lopen(dd)
                await c.read(dd, 0, 100)
            assert ei.value.errno == errno.EISDIR
            with pytest.raises(ServerError) as ei:
                await c.lopen(await lwalk(c, root, b"hello.txt"), 3)  # O_ACCMODE
            assert ei.value.errno == errno.EINVAL
    run(body())


def test_getattr_and_setattr(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached()
            f = await lwalk(c, root, b"big.bin")
            r = await c.getattr(f, GetattrMask.ALL)
            a = e.lookup(ROOT, 1, b"big.bin")
            assert r.valid == GetattrMask.BASIC
            assert (r.qid.path, r.mode, r.uid, r.gid, r.nlink, r.size, r.blocks) == (
                a.ino, a.mode, a.uid, a.gid, a.nlink, a.size, a.blocks)
            assert (r.mtime_sec * 10**9 + r.mtime_nsec, r.ctime_sec * 10**9 + r.ctime_nsec) == (
                a.mtime_ns, a.ctime_ns)
            assert r.qid.version == a.ctime_ns & 0xFFFFFFFF
            await c.call(m9.Tsetattr, fid=f, valid=SetattrMask.MODE | SetattrMask.SIZE
                         | SetattrMask.ATIME | SetattrMask.ATIME_SET | SetattrMask.MTIME
                         | SetattrMask.MTIME_SET, mode=0o100600, uid=0, gid=0, size=1000,
                         atime_sec=5, atime_nsec=6, mtime_sec=7, mtime_nsec=8)
            b = e.getattr(ROOT, a.ino)
            assert (b.mode, b.size, b.atime_ns, b.mtime_ns) == (
                stat.S_IFREG | 0o600, 1000, 5 * 10**9 + 6, 7 * 10**9 + 8)
            assert (b.uid, b.gid) == (a.uid, a.gid)  # not selected: untouched
            with pytest.raises(ServerError) as ei:  # giving a file away is root's
                await c.call(m9.Tsetattr, fid=f, valid=SetattrMask.UID | SetattrMask.GID
                             | SetattrMask.MTIME, mode=0, uid=42, gid=43, size=0, atime_sec=0,
                             atime_nsec=0, mtime_sec=0, mtime_nsec=0)
            assert ei.value.errno == errno.EPERM
            assert e.getattr(ROOT, a.ino) == b  # nothing of it happened
            await c.call(m9.Tsetattr, fid=f, valid=SetattrMask.GID | SetattrMask.MTIME, mode=0,
                         uid=0, gid=2000, size=0, atime_sec=0, atime_nsec=0, mtime_sec=0,
                         mtime_nsec=0)  # chgrp to a group of one's own: the owner may
            b2 = e.getattr(ROOT, a.ino)
            assert (b2.uid, b2.gid) == (UID, 2000)
            assert b2.mtime_ns > b.mtime_ns  # MTIME without MTIME_SET: now
            await c.call(m9.Tsetattr, fid=f, valid=SetattrMask.CTIME, mode=0, uid=0, gid=0,
                         size=0, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
            assert e.getattr(ROOT, a.ino).ctime_ns >= b2.ctime_ns
            d = await lwalk(c, root, b"dir")
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Tsetattr, fid=d, valid=SetattrMask.SIZE, mode=0, uid=0, gid=0,
                             size=0, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
            assert ei.value.errno == errno.EISDIR
    run(body())


def test_readdir_cookies(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached()
            d = await lwalk(c, root, b"many")
            await c.lopen(d)
            first = await c.readdir(d, 0, 120)  # a few entries only
            assert [x.name for x in first[:2]] == [b".", b".."]
            assert first[0].qid.path == e.lookup(ROOT, 1, b"many").ino and first[1].qid.path == 1
            assert [x.offset for x in first] == list(range(1, len(first) + 1))
            assert first[2].type == m9.DT_REG and first[0].type == m9.DT_DIR
            # the directory changes in the middle of the pass: nothing skipped or repeated
            many = e.lookup(ROOT, 1, b"many").ino
            await env.link.call("unlink", ROOT, many, b"f39")  # another client, on the owner
            await env.link.call("create", ROOT, many, b"aaa-new", 0o644)
            rest = []
            cookie = first[-1].offset
            while batch := await c.readdir(d, cookie, 120):
                rest += batch
                cookie = batch[-1].offset
            names = [x.name for x in first + rest]
            assert names == [b".", b"..", *(b"f%02d" % i for i in range(40))]
            # a cookie from the pass resumes there (seekdir), and 0 starts a new pass
            again = await c.readdir(d, first[3].offset, 60)
            assert again[0].name == names[4]
            fresh = [x.name for x in await c.readdir_all(d)]
            assert b"aaa-new" in fresh and b"f39" not in fresh
            with pytest.raises(ServerError) as ei:
                await c.readdir(d, 0, 10)  # too small for one entry
            assert ei.value.errno == errno.EINVAL
            with pytest.raises(ServerError) as ei:  # only on an open directory
                await c.readdir(await lwalk(c, root, b"dir"), 0, 1000)
            assert ei.value.errno == errno.EBADF
            # at the root, '..' is the root
            r = await lwalk(c, root)
            await c.lopen(r)
            top = await c.readdir_all(r)
            assert [x.qid.path for x in top[:2]] == [1, 1]
            assert {x.name for x in top} >= {b"dir", b"link", b"hello.txt"}
            assert next(x for x in top if x.name == b"link").type == m9.DT_LNK
    run(body())


def test_xattrs(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached()
            ino = e.lookup(ROOT, 1, b"hello.txt").ino

            async def setx(name: bytes, value: bytes, flags: int = 0) -> None:
                f = await lwalk(c, root, b"hello.txt")
                await c.call(m9.Txattrcreate, fid=f, name=name, attr_size=len(value),
                             flags=flags)
                for i in range(0, len(value), 7):  # in pieces, as a small msize would
                    await c.write(f, i, value[i:i + 7])
                await c.clunk(f)  # the value is set now

            await setx(b"user.one", b"first value")
            await setx(b"user.two", b"", XATTR_CREATE)  # empty, made (no flags: a removal)
            assert e.getxattr(ROOT, ino, b"user.one") == b"first value"
            # read one value, and the list
            f = await lwalk(c, root, b"hello.txt")
            w = c.fid()
            r = await c.call(m9.Txattrwalk, fid=f, newfid=w, name=b"user.one")
            assert r.size == 11 and await c.read(w, 0, 100) == b"first value"
            assert await c.read(w, 6, 3) == b"val"
            lw = c.fid()
            r = await c.call(m9.Txattrwalk, fid=f, newfid=lw, name=b"")
            assert await c.read(lw, 0, r.size) == b"user.one\0user.two\0"
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Txattrwalk, fid=f, newfid=c.fid(), name=b"user.none")
            assert ei.value.errno == errno.ENODATA
            # XATTR_CREATE on an existing name fails at the clunk, and the fid is gone anyway
            with pytest.raises(ServerError) as ei:
                await setx(b"user.one", b"x", XATTR_CREATE)
            assert ei.value.errno == errno.EEXIST
            with pytest.raises(ServerError) as ei:
                await setx(b"user.three", b"x", XATTR_REPLACE)
            assert ei.value.errno == errno.ENODATA
            # as Debian's diod (tests/spawn/test_ninep_diff.py): a write past the announced
            # size keeps what fits, unwritten bytes are zeros, the clunk sets the value
            g = await lwalk(c, root, b"hello.txt")
            await c.call(m9.Txattrcreate, fid=g, name=b"user.short", attr_size=10, flags=0)
            assert await c.write(g, 0, b"abc") == 3
            assert await c.write(g, 8, b"toolong") == 2
            assert await c.write(g, 12, b"x") == 0
            await c.clunk(g)
            with pytest.raises(ServerError) as ei:
                await c.clunk(g)
            assert ei.value.errno == errno.EBADF
            assert e.getxattr(ROOT, ino, b"user.short") == b"abc\0\0\0\0\0to"
            await setx(b"user.short", b"", 0)  # removes it
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Txattrcreate, fid=await lwalk(c, root, b"hello.txt"),
                             name=b"user.huge", attr_size=1 << 20, flags=0)
            assert ei.value.errno == errno.E2BIG
            # removal: size 0 with XATTR_REPLACE (as Linux's removexattr sends it)
            await setx(b"user.one", b"", XATTR_REPLACE)
            assert e.listxattr(ROOT, ino) == [b"user.two"]
    run(body())


def test_statfs_fsync_readlink_symlink_mknod_mkdir(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached()
            r = await c.call(m9.Tstatfs, fid=root)
            total, _, _ = e.statfs(ROOT)
            assert (r.type, r.bsize, r.namelen, r.fsid) == (V9FS_MAGIC, 4096, 255, 7)
            assert r.blocks == total // 4096 and r.bavail <= r.blocks
            with pytest.raises(ServerError) as ei:  # fsync(2) needs an open file, as in diod
                await c.call(m9.Tfsync, fid=root, datasync=0)
            assert ei.value.errno == errno.EBADF
            o = await lwalk(c, root, b"hello.txt")
            await c.lopen(o, os.O_RDONLY)
            await c.call(m9.Tfsync, fid=o, datasync=0)
            lk = await lwalk(c, root, b"link")
            assert (await c.call(m9.Treadlink, fid=lk)).target == b"hello.txt"
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Treadlink, fid=root)
            assert ei.value.errno == errno.EINVAL
            d = await lwalk(c, root, b"dir")
            q = (await c.call(m9.Tsymlink, fid=d, name=b"sl", symtgt=b"../x", gid=GID)).qid
            assert q.type == m9.QTSYMLINK
            dino = e.lookup(ROOT, 1, b"dir").ino
            assert e.readlink(ROOT, e.lookup(ROOT, dino, b"sl").ino) == b"../x"
            q = (await c.call(m9.Tmknod, dfid=d, name=b"fifo", mode=stat.S_IFIFO | 0o600,
                              major=0, minor=0, gid=GID)).qid
            assert stat.S_ISFIFO(e.lookup(ROOT, dino, b"fifo").mode)
            with pytest.raises(ServerError) as ei:  # device nodes are root's
                await c.call(m9.Tmknod, dfid=d, name=b"tty", mode=stat.S_IFCHR | 0o600,
                             major=4, minor=1, gid=GID)
            assert ei.value.errno == errno.EPERM
            env.uid = env.gid = 0
            rc, rroot = await env.attached()
            rd = await lwalk(rc, rroot, b"dir")
            await rc.call(m9.Tmknod, dfid=rd, name=b"tty", mode=stat.S_IFCHR | 0o600, major=4,
                          minor=1, gid=0)
            assert e.lookup(ROOT, dino, b"tty").rdev == os.makedev(4, 1)
            dev = await lwalk(c, root, b"dir", b"tty")
            assert (await c.getattr(dev)).rdev == os.makedev(4, 1)
            q = (await c.call(m9.Tmkdir, dfid=d, name=b"nd", mode=0o750, gid=2000)).qid
            nd = e.lookup(ROOT, dino, b"nd")
            assert q.type == m9.QTDIR and q.path == nd.ino
            assert (stat.S_IMODE(nd.mode), nd.uid, nd.gid) == (0o750, UID, 2000)
            for bad in (b"..", b"a/b", b"", b"x" * 256):
                with pytest.raises(ServerError):
                    await c.call(m9.Tmkdir, dfid=d, name=bad, mode=0o755, gid=GID)
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Tmkdir, dfid=d, name=b"nd", mode=0o755, gid=GID)
            assert ei.value.errno == errno.EEXIST
    run(body())


def test_link_rename_renameat_unlinkat_remove(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached()
            dino = e.lookup(ROOT, 1, b"dir").ino
            d = await lwalk(c, root, b"dir")
            f = await lwalk(c, root, b"hello.txt")
            await c.call(m9.Tlink, dfid=d, fid=f, name=b"hard")
            assert e.lookup(ROOT, dino, b"hard").ino == e.lookup(ROOT, 1, b"hello.txt").ino
            assert e.lookup(ROOT, 1, b"hello.txt").nlink == 2
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Tlink, dfid=d, fid=await lwalk(c, root, b"many"), name=b"dl")
            assert ei.value.errno == errno.EPERM
            # Trename moves the fid's file; the fid follows it
            await c.call(m9.Trename, fid=f, dfid=d, name=b"moved.txt")
            assert e.lookup(ROOT, dino, b"moved.txt").ino == e.lookup(ROOT, dino, b"hard").ino
            await c.lopen(f)
            assert await c.read(f, 0, 5) == b"hello"
            fd = await lwalk(c, root, b"many", b"f00")
            await c.call(m9.Trename, fid=fd, dfid=d, name=b"f00")
            r = await c.call(m9.Tgetattr, fid=fd, request_mask=GetattrMask.BASIC)
            assert r.qid.path == e.lookup(ROOT, dino, b"f00").ino
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Trename, fid=root, dfid=d, name=b"x")
            assert ei.value.errno == errno.EBUSY
            # Trenameat by names
            await c.call(m9.Trenameat, olddirfid=d, oldname=b"a", newdirfid=root, newname=b"a2")
            assert e.lookup(ROOT, 1, b"a2")
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Trenameat, olddirfid=d, oldname=b"nosuch", newdirfid=root,
                             newname=b"x")
            assert ei.value.errno == errno.ENOENT
            # Tunlinkat: files, and directories only with AT_REMOVEDIR
            await c.call(m9.Tunlinkat, dirfid=root, name=b"a2", flags=0)
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Tunlinkat, dirfid=d, name=b"sub", flags=0)
            assert ei.value.errno == errno.EISDIR
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Tunlinkat, dirfid=d, name=b"sub", flags=m9.AT_REMOVEDIR)
            assert ei.value.errno == errno.ENOTEMPTY
            sub = await lwalk(c, root, b"dir", b"sub")
            await c.call(m9.Tunlinkat, dirfid=sub, name=b"deep", flags=0)
            await c.call(m9.Tunlinkat, dirfid=d, name=b"sub", flags=m9.AT_REMOVEDIR)
            with pytest.raises(ServerError) as ei:
                await c.call(m9.Tunlinkat, dirfid=d, name=b"b", flags=0x1)
            assert ei.value.errno == errno.EINVAL
            # Tremove in .L
            rm = await lwalk(c, root, b"dir", b"b")
            await c.remove(rm)
            assert [n for n, _ in e.readdir(ROOT, dino)] == [b"f00", b"hard", b"moved.txt"]
    run(body())


def test_locks_across_sessions(tmp_path):
    async def body():
        async with served(tmp_path) as env:
            a, ra = await env.attached()
            b, rb = await env.attached()
            fa = await lwalk(a, ra, b"hello.txt")
            await a.lopen(fa, os.O_RDWR)
            fb = await lwalk(b, rb, b"hello.txt")
            await b.lopen(fb, os.O_RDWR)

            async def lock(c, fid, type, start=0, length=0, flags=0, pid=1):
                r = await c.call(m9.Tlock, fid=fid, type=type, flags=flags, start=start,
                                 length=length, proc_id=pid, client_id=b"host")
                return r.status

            async def getlock(c, fid, type, start=0, length=0, pid=1):
                return await c.call(m9.Tgetlock, fid=fid, type=type, start=start, length=length,
                                    proc_id=pid, client_id=b"host")

            assert await lock(a, fa, LockType.WRLCK, 0, 10) == LockStatus.SUCCESS
            # the owner sees no conflict with itself; the other session does
            assert (await getlock(a, fa, LockType.WRLCK)).type == LockType.UNLCK
            g = await getlock(b, fb, LockType.RDLCK, 5, 1)
            assert (g.type, g.start, g.length, g.proc_id, g.client_id) == (
                LockType.WRLCK, 0, 10, 1, b"host")
            assert await lock(b, fb, LockType.RDLCK, 5, 1) == LockStatus.BLOCKED
            assert await lock(b, fb, LockType.RDLCK, 10, 5) == LockStatus.SUCCESS  # no overlap
            # a blocking request waits in the server until the lock is free
            waiting = b.send(m9.Tlock(tag=b.tag(), fid=fb, type=LockType.WRLCK,
                                      flags=LockFlags.BLOCK, start=0, length=0, proc_id=1,
                                      client_id=b"host"))
            await eventually(lambda: env.locks.waiting() == 1)
            assert not waiting.done()
            assert await lock(a, fa, LockType.UNLCK, 0, 4) == LockStatus.SUCCESS  # partly
            await eventually(lambda: env.locks.waiting() == 1)
            assert not waiting.done()
            assert await lock(a, fa, LockType.UNLCK, 0, 0) == LockStatus.SUCCESS
            assert (await waiting).status == LockStatus.SUCCESS
            assert (await getlock(a, fa, LockType.RDLCK)).type == LockType.WRLCK
            # a clunk drops the locks taken through that fid
            await b.clunk(fb)
            assert (await getlock(a, fa, LockType.WRLCK)).type == LockType.UNLCK
            # read locks share; a session's end drops its locks
            assert await lock(a, fa, LockType.RDLCK, pid=2) == LockStatus.SUCCESS
            fb2 = await lwalk(b, rb, b"hello.txt")
            with pytest.raises(ServerError) as ei:  # locks are on open files, as in diod
                await lock(b, fb2, LockType.RDLCK)
            assert ei.value.errno == errno.EBADF
            await b.lopen(fb2, os.O_RDWR)
            assert await lock(b, fb2, LockType.RDLCK) == LockStatus.SUCCESS
            assert await lock(b, fb2, LockType.WRLCK) == LockStatus.BLOCKED
            await a.close()
            await eventually(lambda: len(env.listener.sessions) == 1)
            assert await lock(b, fb2, LockType.WRLCK) == LockStatus.SUCCESS
            with pytest.raises(ServerError) as ei:
                await lock(b, fb2, 7)
            assert ei.value.errno == errno.EINVAL
    run(body())


def test_lock_table_ranges():
    t = LockTable()
    me, you = ("s", b"h", 1), ("s", b"h", 2)
    assert t.set(1, me, LockType.WRLCK, 0, 100)
    assert t.set(1, me, LockType.RDLCK, 40, 60)  # a change in the middle splits
    assert [(lk.type, lk.start, lk.end) for lk in t.held(1)] == [
        (LockType.WRLCK, 0, 40), (LockType.RDLCK, 40, 60), (LockType.WRLCK, 60, 100)]
    assert t.conflict(1, you, LockType.RDLCK, 45, 50) is None
    assert t.conflict(1, you, LockType.RDLCK, 30, 50).start == 0
    assert not t.set(1, you, LockType.WRLCK, 50, 55)
    assert t.set(1, me, LockType.UNLCK, 0, EOF)
    assert t.held(1) == []
    assert t.set(1, me, LockType.RDLCK, 0, 10) and t.set(1, me, LockType.RDLCK, 10, 20)
    assert [(lk.start, lk.end) for lk in t.held(1)] == [(0, 20)]  # adjacent: merged
    assert t.set(1, you, LockType.RDLCK, 5, EOF)
    assert t.release(lambda lk: lk.owner == you) == 1
    assert t.count() == 1


@pytest.mark.parametrize("version", [b"9P2000", b"9P2000.u", b"9P2000.L"])
def test_only_the_dialects_error_reply(tmp_path, version):
    """A .L connection never sees Rerror, a 9P2000 one never sees Rlerror, whatever is sent."""
    async def body():
        async with served(tmp_path) as env:
            c, root = await env.attached(version)
            other = Dialect.BASE if c.dialect is Dialect.LINUX else Dialect.LINUX
            frames = [
                encode(m9.Tgetattr(tag=100, fid=root, request_mask=1), Dialect.LINUX),
                encode(m9.Tstat(tag=101, fid=root), Dialect.BASE),
                encode(m9.Tclunk(tag=102, fid=12345), c.dialect),
                encode(m9.Twalk(tag=103, fid=root, newfid=5, wnames=(b"nope",)), c.dialect),
                encode(m9.Tread(tag=104, fid=root, offset=0, count=10), other),
                b"\x08\x00\x00\x00\xff\x69\x00\x00",  # an unknown type
            ]
            for fr in frames:
                c.send_raw(fr)
            await eventually(lambda: sum(100 <= t <= 105 for t, _ in c.received) == 6)
            for _, msg in c.received:
                if c.dialect is Dialect.LINUX:
                    assert not isinstance(msg, m9.Rerror)
                else:
                    assert not isinstance(msg, m9.Rlerror)
    run(body())
