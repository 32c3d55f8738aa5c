"""The harness's steps as 9P2000.L messages (spawn.ninep.client), with no kernel in the way.

The problem: the kernel's 9P client cannot be mounted on this machine, and even where it can,
a kernel mount mixes its own permission checks (``access=user``, setattr_prepare) with the
server's. This executor asks the server alone. Each step runs, like the os executor's, in a
forked child that has become the step's user (groups, gid, uid), so the daemon's SO_PEERCRED
identity is that user; the child connects to HOME/run/9p.sock, attaches to the spawn
(``aname`` = its id, empty ``uname`` with ``n_uname`` = the uid), walks to the case's
directory, and sends the messages a Linux client would send for the system call.

What the executor does itself is what Linux's VFS does on the client side before any
message is sent, and nothing that judges permissions: resolving paths one name at a time
(each Twalk is the server's search check), following symlinks (Treadlink) except where the
call does not, ``O_NOFOLLOW`` on a symlink (ELOOP), ``O_DIRECTORY`` and a trailing ``/`` on
a non-directory (ENOTDIR), an existing name before a create (EEXIST: the kernel looks the
name up first), ``rmdir`` of ``.`` and ``..``, a negative truncate (EINVAL), the umask on
creation modes, ``utimensat`` with both times omitted (nothing to do), and turning
``chown(f, -1, -1)`` of a setuid/setgid file into the mode change notify_change makes of it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections import deque
from pathlib import PurePosixPath
from typing import Any

from spawn.ninep import messages as m9
from spawn.ninep.client import Client
from spawn.ninep.messages import SetattrMask as SA
from tests.posix import harness
from tests.posix.harness import KINDS, RECENT, Cred

XATTR_CREATE = 1
MAXSYMLINKS = 40


def _e(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code), what)


class Steps:
    """One attach of the spawn, rooted at the case's directory; every harness operation."""

    def __init__(self, c: Client, top: int, case: int, cred: Cred, umask: int) -> None:
        self.c = c
        self.top = top  # the spawn's root (absolute symlink targets start there)
        self.case = case  # the case's directory (relative paths start there)
        self.cred = cred
        self.umask = umask

    # -- paths, as the kernel's namei resolves them --------------------------------------

    async def _clone(self, fid: int) -> int:
        new = self.c.fid()
        await self.c.walk(fid, new, ())
        return new

    async def _walk_from(self, start: int, names: list[str], follow_last: bool) -> tuple[int, m9.Rgetattr]:
        """A new fid for *names* walked from *start*, following symlinks on the way (and at
        the end when *follow_last*); each Twalk is one name, so each is the server's check."""
        cur = await self._clone(start)
        work = deque(names)
        links = 0
        try:
            a = await self.c.getattr(cur)
            while work:
                name = work.popleft()
                if not stat.S_ISDIR(a.mode):
                    raise _e(errno.ENOTDIR, name)
                new = self.c.fid()
                await self.c.walk(cur, new, [os.fsencode(name)])
                b = await self.c.getattr(new)
                if stat.S_ISLNK(b.mode) and (work or follow_last):
                    links += 1
                    if links > MAXSYMLINKS:
                        await self.c.clunk(new)
                        raise _e(errno.ELOOP, name)
                    target = os.fsdecode((await self.c.call(m9.Treadlink, fid=new)).target)  # type: ignore[attr-defined]
                    await self.c.clunk(new)
                    if target.startswith("/"):
                        await self.c.clunk(cur)
                        cur = await self._clone(self.top)
                        a = await self.c.getattr(cur)
                    work.extendleft(reversed([n for n in target.split("/") if n]))
                    continue
                await self.c.clunk(cur)
                cur, a = new, b
            return cur, a
        except BaseException:
            await self.c.clunk(cur)
            raise

    @staticmethod
    def _names(path: str) -> list[str]:
        return [n for n in path.split("/") if n]

    async def node(self, path: str, follow: bool = True) -> tuple[int, m9.Rgetattr]:
        """A fid on *path*'s file and its attributes (a trailing ``/`` needs a directory)."""
        fid, a = await self._walk_from(self.case, self._names(path),
                                       follow or path.endswith("/"))
        if path.endswith("/") and not stat.S_ISDIR(a.mode):
            await self.c.clunk(fid)
            raise _e(errno.ENOTDIR, path)
        return fid, a

    async def parent(self, path: str) -> tuple[int, bytes]:
        """A fid on the directory that holds *path*'s last name, and that name."""
        names = self._names(path)
        fid, a = await self._walk_from(self.case, names[:-1], True)
        if not stat.S_ISDIR(a.mode):
            await self.c.clunk(fid)
            raise _e(errno.ENOTDIR, path)
        return fid, os.fsencode(names[-1])

    async def exists(self, dfid: int, name: bytes) -> bool:
        """Whether *name* is in the directory (the kernel's lookup before a create)."""
        if name in (b".", b".."):
            return True
        new = self.c.fid()
        try:
            await self.c.walk(dfid, new, [name])
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        await self.c.clunk(new)
        return True

    async def new_name(self, path: str) -> tuple[int, bytes]:
        """The directory and name of a file about to be made (EEXIST when it is there)."""
        dfid, name = await self.parent(path)
        if await self.exists(dfid, name):
            await self.c.clunk(dfid)
            raise _e(errno.EEXIST, path)
        return dfid, name

    async def setattr(self, fid: int, valid: int, **fields: int) -> None:
        base = dict(mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0, mtime_sec=0,
                    mtime_nsec=0)
        base.update(fields)
        await self.c.call(m9.Tsetattr, fid=fid, valid=valid, **base)

    # -- the operations (harness.OPS) -------------------------------------------------------

    async def op_file(self, path: str, mode: int, uid: int, gid: int, size: int = 0) -> None:
        dfid, name = await self.new_name(path)
        await self.c.lcreate(dfid, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, self.cred.gid)
        if size:
            await self.c.write(dfid, 0, b"x" * size)
        await self.c.clunk(dfid)
        await self.op_chown(path, uid, gid)
        await self.op_chmod(path, mode)

    async def op_dir(self, path: str, mode: int, uid: int, gid: int) -> None:
        await self.op_mkdir(path, 0o700)
        await self.op_chown(path, uid, gid)
        await self.op_chmod(path, mode)

    async def op_create(self, path: str, mode: int) -> None:
        await self.op_open(path, "w|creat|excl", mode)

    async def op_open(self, path: str, flags: str, mode: int = 0o644) -> None:
        words = set(flags.split("|"))
        acc = harness.FLAGS[next(w for w in ("r", "w", "rw") if w in words)]
        lflags = acc | (os.O_TRUNC if "trunc" in words else 0) | (os.O_APPEND if "append" in words else 0)
        if "creat" in words:
            dfid, name = await self.parent(path)
            there = await self.exists(dfid, name)
            if there and "excl" in words:
                await self.c.clunk(dfid)
                raise _e(errno.EEXIST, path)
            if not there:
                await self.c.lcreate(dfid, name, lflags | os.O_CREAT | (os.O_EXCL if "excl" in words else 0),
                                     mode & ~self.umask & 0o7777, self.cred.gid)
                await self.c.clunk(dfid)
                return
            await self.c.clunk(dfid)
        fid, a = await self.node(path, follow="nofollow" not in words)
        try:
            if stat.S_ISLNK(a.mode):
                raise _e(errno.ELOOP, path)
            if "dir" in words and not stat.S_ISDIR(a.mode):
                raise _e(errno.ENOTDIR, path)
            await self.c.lopen(fid, lflags | (os.O_DIRECTORY if "dir" in words else 0))
        finally:
            await self.c.clunk(fid)

    async def _opened(self, path: str, flags: int) -> int:
        fid, _ = await self.node(path)
        try:
            await self.c.lopen(fid, flags)
        except BaseException:
            await self.c.clunk(fid)
            raise
        return fid

    async def op_read(self, path: str) -> str:
        fid = await self._opened(path, os.O_RDONLY)
        try:
            return (await self.c.read(fid, 0, 100)).decode()
        finally:
            await self.c.clunk(fid)

    async def op_write(self, path: str, data: str) -> int:
        fid = await self._opened(path, os.O_WRONLY)
        try:
            return await self.c.write(fid, 0, data.encode())
        finally:
            await self.c.clunk(fid)

    async def op_truncate(self, path: str, size: int) -> None:
        if size < 0:
            raise _e(errno.EINVAL, path)
        fid, _ = await self.node(path)
        try:
            await self.setattr(fid, SA.SIZE, size=size)
        finally:
            await self.c.clunk(fid)

    async def op_ftruncate(self, path: str, size: int) -> None:
        fid = await self._opened(path, os.O_WRONLY)
        try:
            await self.setattr(fid, SA.SIZE, size=size)
        finally:
            await self.c.clunk(fid)

    async def op_chmod(self, path: str, mode: int) -> None:
        fid, _ = await self.node(path)
        try:
            await self.setattr(fid, SA.MODE, mode=mode)
        finally:
            await self.c.clunk(fid)

    async def _chown(self, path: str, uid: int, gid: int, follow: bool) -> None:
        fid, a = await self.node(path, follow)
        try:
            valid, fields = SA.CTIME, {}
            if uid != -1:
                valid |= SA.UID
                fields["uid"] = uid
            if gid != -1:
                valid |= SA.GID
                fields["gid"] = gid
            if uid == gid == -1 and not stat.S_ISDIR(a.mode):
                # notify_change makes ATTR_KILL_SUID/SGID a mode change (v9fs sends MODE)
                kill = stat.S_ISUID if a.mode & stat.S_ISUID else 0
                if a.mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP:
                    kill |= stat.S_ISGID
                if kill:
                    valid |= SA.MODE
                    fields["mode"] = stat.S_IMODE(a.mode) & ~kill
            await self.setattr(fid, valid, **fields)
        finally:
            await self.c.clunk(fid)

    async def op_chown(self, path: str, uid: int, gid: int) -> None:
        await self._chown(path, uid, gid, True)

    async def op_lchown(self, path: str, uid: int, gid: int) -> None:
        await self._chown(path, uid, gid, False)

    async def op_link(self, src: str, dst: str) -> None:
        fid, _ = await self.node(src, follow=False)
        try:
            dfid, name = await self.new_name(dst)
            try:
                await self.c.call(m9.Tlink, dfid=dfid, fid=fid, name=name)
            finally:
                await self.c.clunk(dfid)
        finally:
            await self.c.clunk(fid)

    async def op_mkdir(self, path: str, mode: int) -> None:
        dfid, name = await self.new_name(path)
        try:
            await self.c.call(m9.Tmkdir, dfid=dfid, name=name, mode=mode & ~self.umask & 0o7777,
                              gid=self.cred.gid)
        finally:
            await self.c.clunk(dfid)

    async def op_mknod(self, path: str, kind: str, mode: int, major: int = 0, minor: int = 0) -> None:
        dfid, name = await self.new_name(path)
        try:
            await self.c.call(m9.Tmknod, dfid=dfid, name=name,
                              mode=KINDS[kind] | (mode & ~self.umask & 0o7777), major=major,
                              minor=minor, gid=self.cred.gid)
        finally:
            await self.c.clunk(dfid)

    async def op_mkfifo(self, path: str, mode: int) -> None:
        await self.op_mknod(path, "fifo", mode)

    async def op_rename(self, src: str, dst: str) -> None:
        d1, n1 = await self.parent(src)
        try:
            d2, n2 = await self.parent(dst)
            try:
                await self.c.call(m9.Trenameat, olddirfid=d1, oldname=n1, newdirfid=d2, newname=n2)
            finally:
                await self.c.clunk(d2)
        finally:
            await self.c.clunk(d1)

    async def _unlinkat(self, path: str, flags: int) -> None:
        dfid, name = await self.parent(path)
        try:
            if flags and name in (b".", b".."):  # do_rmdir: LAST_DOT, LAST_DOTDOT
                raise _e(errno.EINVAL if name == b"." else errno.ENOTEMPTY, path)
            await self.c.call(m9.Tunlinkat, dirfid=dfid, name=name, flags=flags)
        finally:
            await self.c.clunk(dfid)

    async def op_rmdir(self, path: str) -> None:
        await self._unlinkat(path, m9.AT_REMOVEDIR)

    async def op_unlink(self, path: str) -> None:
        await self._unlinkat(path, 0)

    async def op_symlink(self, path: str, target: str) -> None:
        dfid, name = await self.new_name(path)
        try:
            await self.c.call(m9.Tsymlink, fid=dfid, name=name, symtgt=os.fsencode(target),
                              gid=self.cred.gid)
        finally:
            await self.c.clunk(dfid)

    async def op_readlink(self, path: str) -> str:
        fid, _ = await self.node(path, follow=False)
        try:
            return os.fsdecode((await self.c.call(m9.Treadlink, fid=fid)).target)  # type: ignore[attr-defined]
        finally:
            await self.c.clunk(fid)

    async def op_utimes(self, path: str, atime: Any = None, mtime: Any = None,
                        nofollow: bool = False) -> None:
        fid, _ = await self.node(path, follow=not nofollow)
        try:
            if atime is None and mtime is None:
                atime = mtime = "now"
            if atime == mtime == "omit":
                return  # vfs_utimes: nothing to change, nothing checked
            valid, fields = SA.CTIME, {}
            for t, bit, setbit, key in ((atime, SA.ATIME, SA.ATIME_SET, "atime_sec"),
                                        (mtime, SA.MTIME, SA.MTIME_SET, "mtime_sec")):
                if t == "omit":
                    continue
                valid |= bit
                if t != "now":
                    valid |= setbit
                    fields[key] = int(t)
            await self.setattr(fid, valid, **fields)
        finally:
            await self.c.clunk(fid)

    async def _setxattr(self, path: str, name: str, value: str, follow: bool) -> None:
        fid, _ = await self.node(path, follow)
        data = value.encode()
        try:
            await self.c.call(m9.Txattrcreate, fid=fid, name=name.encode(), attr_size=len(data),
                              flags=0)
            if data:
                await self.c.write(fid, 0, data)
        finally:
            await self.c.clunk(fid)  # the clunk sets the value, and reports its error

    async def op_setxattr(self, path: str, name: str, value: str) -> None:
        await self._setxattr(path, name, value, True)

    async def op_lsetxattr(self, path: str, name: str, value: str) -> None:
        await self._setxattr(path, name, value, False)

    async def op_getxattr(self, path: str, name: str) -> str:
        fid, _ = await self.node(path)
        try:
            new = self.c.fid()
            size = (await self.c.call(m9.Txattrwalk, fid=fid, newfid=new, name=name.encode())).size  # type: ignore[attr-defined]
            try:
                return (await self.c.read(new, 0, size)).decode()
            finally:
                await self.c.clunk(new)
        finally:
            await self.c.clunk(fid)

    async def op_listdir(self, path: str) -> list[str]:
        fid = await self._opened(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.fsdecode(d.name) for d in await self.c.readdir_all(fid)
                          if d.name not in (b".", b".."))
        finally:
            await self.c.clunk(fid)

    async def op_stat(self, path: str) -> dict[str, Any]:
        """What harness.op_stat reports, from Tgetattr."""
        fid, a = await self.node(path, follow=False)
        await self.c.clunk(fid)
        out: dict[str, Any] = {"type": stat.filemode(a.mode)[0], "mode": oct(stat.S_IMODE(a.mode)),
                               "uid": a.uid, "gid": a.gid}
        if stat.S_ISREG(a.mode) or stat.S_ISLNK(a.mode):
            out["size"] = a.size
        if not stat.S_ISDIR(a.mode):
            out["nlink"] = a.nlink
        if stat.S_ISCHR(a.mode) or stat.S_ISBLK(a.mode):
            out["rdev"] = [os.major(a.rdev), os.minor(a.rdev)]
        return out

    async def op_times(self, path: str) -> list[Any]:
        fid, a = await self.node(path, follow=False)
        await self.c.clunk(fid)
        now = time.time()
        return [("now" if abs(now - t) < RECENT else int(t))
                for t in (a.atime_sec + a.atime_nsec / 1e9, a.mtime_sec + a.mtime_nsec / 1e9)]


async def attach(sock: str, sid: str, cred: Cred) -> tuple[Client, int]:
    """A 9P2000.L connection as the calling process's uid, attached to spawn *sid*."""
    c = await Client.connect_unix(sock)
    await c.version(b"9P2000.L")
    top = c.fid()
    try:
        await c.attach(top, b"", sid.encode(), n_uname=cred.uid)
    except BaseException:
        await c.close()
        raise
    return c, top


async def step(sock: str, sid: str, dirname: str, cred: Cred, umask: int, op: str,
               args: tuple[Any, ...]) -> Any:
    c, top = await attach(sock, sid, cred)
    try:
        case = c.fid()
        await c.walk(top, case, [os.fsencode(n) for n in PurePosixPath(dirname).parts])
        return await getattr(Steps(c, top, case, cred, umask), "op_" + op)(*args)
    finally:
        await c.close()


class NinepExecutor:
    """Steps over the daemon's 9P socket, each in a child that has become the step's user."""

    name = "9p2000.L"

    def __init__(self, sock: str | os.PathLike[str], sid: str) -> None:
        self.sock = os.fspath(sock)
        self.sid = sid

    def make_case_dir(self, dirname: str) -> None:
        res = harness.in_child(harness.ROOT, 0, lambda: asyncio.run(
            step(self.sock, self.sid, ".", harness.ROOT, 0, "mkdir", (dirname, 0o755))))
        if res != "ok":
            raise AssertionError(f"mkdir {dirname} over 9P: {res}")

    def call(self, dirname: str, cred: Cred, umask: int, op: str, args: tuple[Any, ...]) -> str:
        return harness.in_child(cred, umask, lambda: asyncio.run(
            step(self.sock, self.sid, dirname, cred, umask, op, args)))
