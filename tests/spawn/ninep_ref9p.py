"""A small reference 9P2000 server for tests: a plain directory served with os calls,
following the Plan 9 manual's section 5 (intro, attach, walk, open, read, stat, remove,
clunk, flush) and nothing else. It exists so tests can compare grid's 9P2000 dialect with
something written from the manual, not from grid (tests/spawn/test_ninep_ref9p.py).

Kept simple on purpose: one connection at a time is enough, requests are answered in order
(so a Tflush always finds its request answered and just gets Rflush), fids name paths (a
rename or remove by another fid is not followed), no authentication, the attach root is the
served directory whatever uname/aname say. Errors are "<strerror>: <detail>" so that
spawn.ninep.client.errno_from_text recovers the errno; errors the manual describes with no
errno ("fid in use", "file not open" ...) are plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat as st
from dataclasses import dataclass
from pathlib import Path

from spawn.ninep import messages as m9
from spawn.ninep.codec import FrameBuffer, decode, encode, encode_stat
from spawn.ninep.messages import IOHDRSZ, Dialect, Message, Qid, Stat

MSIZE = 65536 + IOHDRSZ
NOT_TOUCHED32 = 0xFFFFFFFF


class Err(Exception):
    """An Rerror's text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _oserr(e: OSError) -> Err:
    return Err(f"{os.strerror(e.errno or errno.EIO)}: {e.filename or ''}")


def _errno(code: int, detail: str = "") -> Err:
    return Err(f"{os.strerror(code)}: {detail}")


@dataclass
class Fid:
    path: str  # a real path under the served root
    mode: int | None = None  # the open mode (OREAD...), None while not open
    rclose: bool = False
    # the file opened ORCLOSE, held open (O_PATH) so that its inode number cannot be reused:
    # the clunk removes the path only if it still names that file, not a newcomer
    keep: int | None = None
    dirbuf: bytes = b""  # a directory's entries, packed once at the first read
    dirpos: int = 0  # the offset the next directory read must start at (read(5))


class RefServer:
    """Serves *root* over 9P2000 on a Unix socket (``await start(sock)``)."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.server: asyncio.AbstractServer | None = None

    async def start(self, sock: Path) -> None:
        self.server = await asyncio.start_unix_server(self._conn, os.fspath(sock))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self.root)
        buf = FrameBuffer(MSIZE)
        try:
            while data := await reader.read(1 << 16):
                buf.receive_data(data)
                while (frame := buf.next_frame()) is not None:
                    reply = session.handle(decode(frame, Dialect.BASE))
                    writer.write(encode(reply, Dialect.BASE))
                await writer.drain()
        finally:
            session.clunk_all()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Session:
    def __init__(self, root: str) -> None:
        self.root = root
        self.fids: dict[int, Fid] = {}
        self.msize = MSIZE

    def clunk_all(self) -> None:
        for fid in list(self.fids):
            self._clunk(fid)

    # -- helpers -------------------------------------------------------------------------

    def _fid(self, n: int) -> Fid:
        f = self.fids.get(n)
        if f is None:
            raise Err("unknown fid")
        return f

    def _lstat(self, path: str) -> os.stat_result:
        try:
            return os.lstat(path)
        except OSError as e:
            raise _oserr(e) from None

    def _qid(self, s: os.stat_result) -> Qid:
        t = m9.QTDIR if st.S_ISDIR(s.st_mode) else m9.QTFILE
        return Qid(type=t, version=int(s.st_mtime_ns) & 0xFFFFFFFF, path=s.st_ino)

    def _stat(self, path: str) -> Stat:
        s = self._lstat(path)
        isdir = st.S_ISDIR(s.st_mode)
        name = b"/" if path == self.root else os.fsencode(os.path.basename(path))
        return Stat(type=0, dev=0, qid=self._qid(s),
                    mode=(m9.DMDIR if isdir else 0) | (s.st_mode & 0o777),
                    atime=int(s.st_atime) & 0xFFFFFFFF, mtime=int(s.st_mtime) & 0xFFFFFFFF,
                    length=0 if isdir else s.st_size, name=name,
                    uid=str(s.st_uid).encode(), gid=str(s.st_gid).encode(), muid=b"")

    @staticmethod
    def _name_ok(name: bytes) -> None:
        if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
            raise _errno(errno.EINVAL, f"bad name {name!r}")

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, m: Message) -> Message:
        h = getattr(self, "_h_" + type(m).__name__[1:].lower(), None)
        if h is None:
            return m9.Rerror(tag=m.tag, ename=b"unknown request")
        try:
            return h(m)
        except Err as e:
            return m9.Rerror(tag=m.tag, ename=e.text.encode())
        except OSError as e:
            return m9.Rerror(tag=m.tag, ename=_oserr(e).text.encode())

    def _h_version(self, m: m9.Tversion) -> Message:
        self.clunk_all()
        self.msize = min(m.msize, MSIZE)
        ok = m.version.split(b".", 1)[0] == b"9P2000"
        return m9.Rversion(tag=m.tag, msize=self.msize, version=b"9P2000" if ok else b"unknown")

    def _h_attach(self, m: m9.Tattach) -> Message:
        if m.fid in self.fids:
            raise Err("fid in use")
        self.fids[m.fid] = Fid(self.root)
        return m9.Rattach(tag=m.tag, qid=self._qid(self._lstat(self.root)))

    def _h_flush(self, m: m9.Tflush) -> Message:
        return m9.Rflush(tag=m.tag)  # every earlier request has been answered

    def _h_walk(self, m: m9.Twalk) -> Message:
        f = self._fid(m.fid)
        if f.mode is not None:
            raise Err("walk of an open fid")
        if m.newfid != m.fid and m.newfid in self.fids:
            raise Err("fid in use")
        path, qids = f.path, []
        for i, name in enumerate(m.wnames):
            try:
                if not st.S_ISDIR(self._lstat(path).st_mode):
                    raise _errno(errno.ENOTDIR, "walk in a non-directory")
                if name == b"..":
                    nxt = path if path == self.root else os.path.dirname(path)
                elif name == b"." or b"/" in name or not name:
                    raise _errno(errno.ENOENT, f"bad name {name!r}")
                else:
                    nxt = os.path.join(path, os.fsdecode(name))
                qids.append(self._qid(self._lstat(nxt)))
            except Err:
                if i == 0:
                    raise
                return m9.Rwalk(tag=m.tag, wqids=tuple(qids))  # partial: newfid untouched
            path = nxt
        self.fids[m.newfid] = Fid(path)
        return m9.Rwalk(tag=m.tag, wqids=tuple(qids))

    def _open_fd_flags(self, mode: int) -> int:
        return [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY][mode & 3]

    def _h_open(self, m: m9.Topen) -> Message:
        f = self._fid(m.fid)
        if f.mode is not None:
            raise Err("file already open")
        s = self._lstat(f.path)
        if st.S_ISDIR(s.st_mode):
            if m.mode & 3 in (m9.OWRITE, m9.ORDWR) or m.mode & m9.OTRUNC:
                raise _errno(errno.EISDIR, "a directory opens for reading only")
        else:
            os.close(os.open(f.path, self._open_fd_flags(m.mode)))  # the permission check
            if m.mode & 3 == m9.OEXEC and not os.access(f.path, os.X_OK):
                raise _errno(errno.EACCES, "OEXEC needs execute permission")
            if m.mode & m9.OTRUNC:  # needs write permission whatever the mode (open(5))
                os.close(os.open(f.path, os.O_WRONLY | os.O_TRUNC))
        # ORCLOSE needs write permission in the parent (open(5)); the root's parent is the
        # root itself (walk(5)), and we act as root: allowed, and the clunk's remove fails.
        f.mode, f.rclose = m.mode, bool(m.mode & m9.ORCLOSE)
        if f.rclose:
            f.keep = os.open(f.path, os.O_PATH | os.O_NOFOLLOW)
        return m9.Ropen(tag=m.tag, qid=self._qid(self._lstat(f.path)), iounit=0)

    def _h_create(self, m: m9.Tcreate) -> Message:
        f = self._fid(m.fid)
        if f.mode is not None:
            raise Err("create on an open fid")
        ds = self._lstat(f.path)
        if not st.S_ISDIR(ds.st_mode):
            raise _errno(errno.ENOTDIR, "create in a non-directory")
        self._name_ok(m.name)
        path = os.path.join(f.path, os.fsdecode(m.name))
        # The request's own sense first (a directory opens for reading only), then the tree.
        if m.perm & m9.DMDIR and (m.mode & 3 in (m9.OWRITE, m9.ORDWR) or m.mode & m9.OTRUNC):
            raise _errno(errno.EISDIR, "a directory opens for reading only")
        if os.path.lexists(path):
            raise _errno(errno.EEXIST, os.fsdecode(m.name))
        if m.perm & m9.DMDIR:
            perm = m.perm & (~0o777 | (ds.st_mode & 0o777)) & 0o777
            os.mkdir(path)
        else:
            perm = m.perm & (~0o666 | (ds.st_mode & 0o666)) & 0o777
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.chmod(path, perm)
        f.path, f.mode, f.rclose = path, m.mode, bool(m.mode & m9.ORCLOSE)
        if f.rclose:
            f.keep = os.open(path, os.O_PATH | os.O_NOFOLLOW)
        f.dirbuf, f.dirpos = b"", 0
        return m9.Rcreate(tag=m.tag, qid=self._qid(self._lstat(path)), iounit=0)

    def _h_read(self, m: m9.Tread) -> Message:
        f = self._fid(m.fid)
        if f.mode is None or f.mode & 3 == m9.OWRITE:
            raise Err("file not open for reading")
        count = min(m.count, self.msize - IOHDRSZ)
        if st.S_ISDIR(self._lstat(f.path).st_mode):
            if m.offset == 0:
                names = sorted(os.listdir(os.fsencode(f.path)))
                f.dirbuf = b"".join(encode_stat(self._stat(os.path.join(f.path, os.fsdecode(n))),
                                                Dialect.BASE) for n in names)
                f.dirpos = 0
            elif m.offset != f.dirpos:
                raise _errno(errno.EINVAL, "bad offset in directory read")
            data, pos = b"", f.dirpos
            while pos < len(f.dirbuf):  # whole entries only (read(5))
                size = 2 + int.from_bytes(f.dirbuf[pos:pos + 2], "little")
                if len(data) + size > count:
                    break
                data += f.dirbuf[pos:pos + size]
                pos += size
            if not data and pos < len(f.dirbuf) and count > 0:
                raise _errno(errno.EINVAL, "count too small for a directory entry")
            f.dirpos = pos
            return m9.Rread(tag=m.tag, data=data)
        fd = os.open(f.path, os.O_RDONLY)
        try:
            return m9.Rread(tag=m.tag, data=os.pread(fd, count, m.offset))
        finally:
            os.close(fd)

    def _h_write(self, m: m9.Twrite) -> Message:
        f = self._fid(m.fid)
        if f.mode is None or f.mode & 3 in (m9.OREAD, m9.OEXEC):
            raise Err("file not open for writing")
        if st.S_ISDIR(self._lstat(f.path).st_mode):
            raise _errno(errno.EISDIR, "write to a directory")
        fd = os.open(f.path, os.O_WRONLY)
        try:
            return m9.Rwrite(tag=m.tag, count=os.pwrite(fd, m.data, m.offset))
        finally:
            os.close(fd)

    def _clunk(self, n: int) -> None:
        f = self.fids.pop(n)
        try:
            if f.rclose and f.path != self.root:  # the root is never removed (as Tremove)
                with contextlib.suppress(OSError):
                    if f.keep is not None and os.path.samestat(os.fstat(f.keep),
                                                               os.lstat(f.path)):
                        self._unlink(f.path)
        finally:
            if f.keep is not None:
                os.close(f.keep)

    def _unlink(self, path: str) -> None:
        if st.S_ISDIR(os.lstat(path).st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)

    def _h_clunk(self, m: m9.Tclunk) -> Message:
        self._fid(m.fid)
        self._clunk(m.fid)
        return m9.Rclunk(tag=m.tag)

    def _h_remove(self, m: m9.Tremove) -> Message:
        f = self._fid(m.fid)
        del self.fids[m.fid]  # remove(5): the fid is clunked even when the remove fails
        if f.keep is not None:
            os.close(f.keep)
        if f.path == self.root:
            raise _errno(errno.EBUSY, "remove of the root")
        self._unlink(f.path)
        return m9.Rremove(tag=m.tag)

    def _h_stat(self, m: m9.Tstat) -> Message:
        return m9.Rstat(tag=m.tag, stat=self._stat(self._fid(m.fid).path))

    def _h_wstat(self, m: m9.Twstat) -> Message:
        f = self._fid(m.fid)
        s, w = self._lstat(f.path), m.stat
        isdir = st.S_ISDIR(s.st_mode)
        # Check everything first: stat(5) says a wstat succeeds or fails as a whole.
        if w.mode != NOT_TOUCHED32 and bool(w.mode & m9.DMDIR) != isdir:
            raise _errno(errno.EPERM, "cannot change DMDIR")
        if w.length != (1 << 64) - 1 and isdir and w.length != 0:
            raise _errno(errno.EISDIR, "length of a directory")
        if w.uid or w.muid:
            raise _errno(errno.EPERM, "cannot change owner")
        if w.gid and w.gid != str(s.st_gid).encode():
            raise _errno(errno.EPERM, "cannot change group")
        new = None
        if w.name and os.fsencode(os.path.basename(f.path)) != w.name:
            self._name_ok(w.name)
            if f.path == self.root:
                raise _errno(errno.EBUSY, "rename of the root")
            new = os.path.join(os.path.dirname(f.path), os.fsdecode(w.name))
            if os.path.lexists(new):
                raise _errno(errno.EEXIST, os.fsdecode(w.name))
        if w.length != (1 << 64) - 1 and not isdir:
            os.truncate(f.path, w.length)
        if w.mode != NOT_TOUCHED32:
            os.chmod(f.path, w.mode & 0o777)
        if w.mtime != NOT_TOUCHED32 or w.atime != NOT_TOUCHED32:
            os.utime(f.path, (s.st_atime if w.atime == NOT_TOUCHED32 else w.atime,
                              s.st_mtime if w.mtime == NOT_TOUCHED32 else w.mtime))
        if new is not None:
            os.rename(f.path, new)
            old = f.path
            for other in self.fids.values():  # fids below the renamed path follow it
                if other.path == old or other.path.startswith(old + "/"):
                    other.path = new + other.path[len(old):]
        return m9.Rwstat(tag=m.tag)
