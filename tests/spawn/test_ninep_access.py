"""Permission rules the engine applies (spawn/access.py) as a 9P2000.L client meets them: the
cases where no kernel stands between the client and the rule (through FUSE the kernel applies
some of them first), found by tests/posix's 9P target."""

from __future__ import annotations

import errno
import stat

import pytest

from spawn.cred import ROOT
from spawn.ninep import messages as m9
from spawn.ninep.client import ServerError
from spawn.ninep.messages import SetattrMask
from tests.spawn.ninep_env import run, served


async def _setattr(c, fid: int, valid: int, **fields: int) -> None:
    base = dict(mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
    await c.call(m9.Tsetattr, fid=fid, valid=valid, **{**base, **fields})


def test_chmod_setgid_dropped_for_a_group_not_ones_own(tmp_path):
    """chmod g+s of a file whose group the owner is not in leaves setgid off (Linux's
    setattr_prepare), even when that gives back the mode the file had."""
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            for name in (b"hello.txt", b"dir"):
                ino = e.lookup(ROOT, 1, name).ino
                await env.link.call("setattr", ROOT, ino, gid=3000)  # not a group of the attach's
                was = e.getattr(ROOT, ino).mode
                c, root = await env.attached()
                f = c.fid()
                await c.walk(root, f, [name])
                await _setattr(c, f, SetattrMask.MODE, mode=stat.S_IMODE(was) | stat.S_ISGID)
                assert e.getattr(ROOT, ino).mode == was
                await _setattr(c, f, SetattrMask.MODE, mode=0o4755)
                assert stat.S_IMODE(e.getattr(ROOT, ino).mode) == 0o4755
    run(body())


def test_one_time_to_now_is_the_owners(tmp_path):
    """utimensat(NOW, OMIT) by a writer who is not the owner is EPERM on Linux (the kernel's
    ATTR_TIMES_SET), and only (NOW, NOW) is a touch a writer may do. Tsetattr carries no such
    bit: ATIME alone is the (NOW, OMIT)."""
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            ino = e.lookup(ROOT, 1, b"hello.txt").ino
            await env.link.call("setattr", ROOT, ino, uid=4000, mode=0o666, atime_ns=10**9,
                                mtime_ns=10**9)  # another's file the attach may write
            c, root = await env.attached()
            f = c.fid()
            await c.walk(root, f, [b"hello.txt"])
            for valid in (SetattrMask.ATIME, SetattrMask.MTIME):
                with pytest.raises(ServerError) as ei:
                    await _setattr(c, f, valid | SetattrMask.CTIME)
                assert ei.value.errno == errno.EPERM
            a = e.getattr(ROOT, ino)
            assert (a.atime_ns, a.mtime_ns) == (10**9, 10**9)
            await _setattr(c, f, SetattrMask.ATIME | SetattrMask.MTIME | SetattrMask.CTIME)
            a = e.getattr(ROOT, ino)
            assert a.atime_ns > 10**9 and a.mtime_ns > 10**9
    run(body())


def test_mkdir_keeps_permission_bits_and_sticky_only(tmp_path):
    """Tmkdir's mode loses setuid and setgid (Linux's vfs_mkdir); a setgid parent's new
    directory is setgid all the same."""
    async def body():
        async with served(tmp_path) as env:
            e = env.engine
            c, root = await env.attached()
            for name, mode, want in ((b"a", 0o1777, 0o1777), (b"b", 0o2755, 0o755),
                                     (b"c", 0o4755, 0o755)):
                await c.call(m9.Tmkdir, dfid=root, name=name, mode=mode, gid=env.gid)
                assert stat.S_IMODE(e.lookup(ROOT, 1, name).mode) == want
            await c.call(m9.Tsetattr, fid=root, valid=SetattrMask.MODE, mode=0o2755, uid=0, gid=0,
                         size=0, atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0)
            await c.call(m9.Tmkdir, dfid=root, name=b"d", mode=0o755, gid=env.gid)
            assert stat.S_IMODE(e.lookup(ROOT, 1, b"d").mode) == 0o2755
    run(body())
