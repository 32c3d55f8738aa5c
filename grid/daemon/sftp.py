"""The SFTP exporter: a thin asyncssh adapter over the spawns' engine links.

One SFTP session serves one grid user's namespace (docs/ssh.md)::

    /            one directory per spawn of the user, named by its id (nothing of others)
    /ID/...      that spawn's tree, every operation one call through the spawn's link

As in spawn.fuse, filesystem semantics live in the engine: each handler here turns a path
into inode numbers (lookups through the link) and makes one engine call. The engine is never
touched directly, so SFTP shares the spawn's owner thread with FUSE and 9P (invariant 8). FUSE
mounts attached to the daemon cache names and attributes; a change made here first tells them
what to forget (:class:`SharedLink`, as the daemon's vfs sessions tell each other), so they see
it at once.

Paths are the one thing SFTP has that FUSE has not: the client names files by path, and the
server resolves them. Resolution is confined the way a chroot is:

* a path is split on ``/``; empty parts (``//``) and ``.`` are dropped, ``..`` goes up but
  never above ``/``; a relative path is relative to ``/`` (the session's only directory);
* symbolic links met on the way are followed *inside the spawn*: an absolute target starts
  at the spawn's root, ``..`` stops there. A link can never lead into another spawn, the
  node's own filesystem or another user's namespace. (Symlinks are stored as written;
  readlink returns them unchanged, for the client to interpret.)

Privacy (invariant 9): the session acts for one Unix uid, the one ndb lists for the SSH key's
user; ``daemon.live(sid, uid)`` refuses a spawn that uid may not use, and the top directory
lists only ``daemon.control(uid, "spawns")``. Every engine call carries the session's
credentials (that uid, its primary group and its supplementary groups), and the engine
checks them (spawn.access) as it does for FUSE and 9P: this adapter checks nothing itself.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncssh
from asyncssh.constants import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
)

from grid.daemon.sharedlink import SharedLink
from spawn.attr import Attr
from spawn.cred import Cred
from spawn.fsformat import NAME_MAX

log = logging.getLogger("grid.daemon.sftp")

ROOT_INO = 1  # the engine's root directory (spawn.engine.ROOT_INO)
SYMLOOP_MAX = 40  # links followed in one resolution before ELOOP, as Linux does
_TOP_MODE = stat.S_IFDIR | 0o500  # "/": a read-only listing of the user's spawns


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


def split(path: bytes) -> list[bytes]:
    """A client's path as the components it names below ``/``: ``//`` and ``.`` dropped,
    ``..`` applied lexically and clamped at ``/``, relative paths taken from ``/``."""
    out: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def to_attrs(a: Attr) -> asyncssh.SFTPAttrs:
    """An engine Attr as SFTP attributes (seconds and nanoseconds both: v3 clients use the
    seconds, later versions the nanoseconds)."""
    return asyncssh.SFTPAttrs(
        type=_sftp_type(a.mode), size=a.size, uid=a.uid, gid=a.gid, permissions=a.mode,
        atime=a.atime_ns // 10**9, atime_ns=a.atime_ns % 10**9,
        mtime=a.mtime_ns // 10**9, mtime_ns=a.mtime_ns % 10**9,
        ctime=a.ctime_ns // 10**9, ctime_ns=a.ctime_ns % 10**9, nlink=a.nlink)


def _sftp_type(mode: int) -> int:
    from asyncssh.constants import (
        FILEXFER_TYPE_DIRECTORY,
        FILEXFER_TYPE_REGULAR,
        FILEXFER_TYPE_SPECIAL,
        FILEXFER_TYPE_SYMLINK,
    )

    if stat.S_ISDIR(mode):
        return FILEXFER_TYPE_DIRECTORY
    if stat.S_ISREG(mode):
        return FILEXFER_TYPE_REGULAR
    if stat.S_ISLNK(mode):
        return FILEXFER_TYPE_SYMLINK
    return FILEXFER_TYPE_SPECIAL


@dataclass(slots=True)
class _Where:
    """A resolved path: the spawn's link, the directory holding the name, the name, and the
    inode's attributes (None when the name does not exist). *parent* 0 and *name* the spawn
    id mean the spawn's root itself; *link* None means ``/``."""

    link: Any
    parent: int
    name: bytes
    attr: Attr | None


#: Bytes one engine read fetches for a handle read sequentially (sshfs asks 32 KiB at a time;
#: per request the engine's tree walk and leaf checks cost as much as the bytes).
READ_AHEAD = 512 << 10


@dataclass(slots=True)
class _Handle:
    """An open file: the engine counted the open, ``close`` releases it. Sequential reads
    keep what one larger engine read fetched (*ra*, from offset *ra_off*), valid while the
    spawn's committed state is still *ra_state* (SharedLink.snapshot): any change since
    makes it stale, so a read never returns bytes another client has since overwritten."""

    link: Any
    ino: int
    append: bool
    write: bool = False  # opened for writing: an fsetstat of its size is an ftruncate
    next_off: int = 0  # where a sequential read would go on
    ra: bytes = b""
    ra_off: int = 0
    ra_state: int | None = None
    ra_eof: bool = False  # the file ended inside the buffer (at that state)


class _Link:
    """A spawn's shared link that makes every call as the session's user."""

    def __init__(self, shared: SharedLink, cred: Cred) -> None:
        self.shared = shared
        self.cred = cred
        self.sid = shared.sid

    async def call(self, op: str, *args: Any, **kw: Any) -> Any:
        return await self.shared.call(op, self.cred, *args, **kw)


class GridSFTPServer(asyncssh.SFTPServer):
    """One SFTP session of one grid user over the daemon's spawns (see the module docstring).
    *uid* is the Unix uid the session acts as, decided from the SSH key at authentication."""

    def __init__(self, chan: asyncssh.SSHServerChannel, daemon: Any, uid: int) -> None:
        super().__init__(chan)  # no chroot: every path method below is our own
        self.daemon = daemon
        self.uid = uid
        self.cred = Cred.of_user(uid)
        self.gid = self.cred.gid

    # -- resolution ---------------------------------------------------------------------

    async def _link(self, sid: bytes) -> _Link:
        try:
            text = sid.decode("ascii")
        except UnicodeDecodeError:
            raise _err(errno.ENOENT, "no such spawn") from None
        try:
            return _Link(SharedLink(await self.daemon.live(text, self.uid)), self.cred)
        except OSError:
            raise
        except Exception:  # SpawnNotFound and the like: to this user it does not exist
            raise _err(errno.ENOENT, f"no spawn {text}") from None

    async def _resolve(self, path: bytes, *, follow: bool = True, must_exist: bool = True) -> _Where:
        """Walk *path* through the spawn's link, following symlinks inside the spawn (and the
        last component's only with *follow*). With *must_exist* False a missing last name
        is returned with attr None, for the operations that make it."""
        parts = split(path)
        if not parts:
            return _Where(None, 0, b"", None)
        if path.endswith((b"/", b"/.", b"/..")):
            follow = True  # "link/" names the directory the link leads to (POSIX)
        link = await self._link(parts[0])
        todo = list(reversed(parts[1:]))  # a stack: symlink targets are pushed onto it
        stack: list[tuple[int, bytes, Attr]] = []  # (parent, name, attr) from the root down
        root = await link.call("getattr", ROOT_INO)
        hops = 0
        while todo:
            name = todo.pop()
            if name in (b"", b"."):
                continue
            if name == b"..":
                if stack:
                    stack.pop()
                continue
            if len(name) > NAME_MAX:
                raise _err(errno.ENAMETOOLONG)
            dir_ino = stack[-1][2].ino if stack else ROOT_INO
            cur = stack[-1][2] if stack else root
            if not stat.S_ISDIR(cur.mode):
                raise _err(errno.ENOTDIR)
            try:
                a = await link.call("lookup", dir_ino, name)
            except FileNotFoundError:
                if todo or must_exist:
                    raise
                return _Where(link, dir_ino, name, None)
            if stat.S_ISLNK(a.mode) and (todo or follow):
                hops += 1
                if hops > SYMLOOP_MAX:
                    raise _err(errno.ELOOP)
                target = await link.call("readlink", a.ino)
                if target.startswith(b"/"):
                    stack.clear()  # absolute: from the spawn's root, never the node's
                todo.extend(reversed(target.split(b"/")))
                continue
            stack.append((dir_ino, name, a))
        if not stack:
            return _Where(link, 0, parts[0], root)
        parent, name, a = stack[-1]
        return _Where(link, parent, name, a)

    async def _entry(self, path: bytes) -> _Where:
        """Where a name is to be made, removed or renamed: inside a spawn, not a spawn root
        or ``/`` (those are the daemon's to make and remove: ``grid spawn``, ``grid kill``)."""
        w = await self._resolve(path, follow=False, must_exist=False)
        if w.link is None or w.parent == 0:
            raise _err(errno.EPERM, "the top directories are the spawns: use grid spawn/kill")
        return w

    async def _stat(self, path: bytes, follow: bool) -> asyncssh.SFTPAttrs:
        w = await self._resolve(path, follow=follow)
        if w.link is None:
            return asyncssh.SFTPAttrs(type=_sftp_type(_TOP_MODE), permissions=_TOP_MODE,
                                      uid=self.uid, gid=self.gid, size=0, nlink=2)
        assert w.attr is not None
        return to_attrs(w.attr)

    # -- paths ----------------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        """Lexical, as OpenSSH's sftp-server is for names that do not exist yet; every later
        request resolves again, with symlinks, inside the spawn."""
        return b"/" + b"/".join(split(path))

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:  # type: ignore[override]
        return await self._stat(path, True)

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:  # type: ignore[override]
        return await self._stat(path, False)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        """A snapshot of the directory (one readdir call), as spawn.fuse's opendir takes."""
        w = await self._resolve(path)
        if w.link is None:
            top = asyncssh.SFTPAttrs(type=_sftp_type(_TOP_MODE), permissions=_TOP_MODE,
                                     uid=self.uid, gid=self.gid, size=0, nlink=2)
            yield asyncssh.SFTPName(b".", attrs=top)
            yield asyncssh.SFTPName(b"..", attrs=top)
            for d in await self.daemon.control(self.uid, "spawns"):
                a = await (await self._link(str(d["id"]).encode())).call("getattr", ROOT_INO)
                yield asyncssh.SFTPName(str(d["id"]).encode(), attrs=to_attrs(a))
            return
        assert w.attr is not None
        if not stat.S_ISDIR(w.attr.mode):
            raise _err(errno.ENOTDIR)
        entries = await w.link.call("readdir", w.attr.ino)
        yield asyncssh.SFTPName(b".", attrs=to_attrs(w.attr))
        yield asyncssh.SFTPName(b"..", attrs=to_attrs(w.attr))
        for name, a in entries:
            yield asyncssh.SFTPName(name, attrs=to_attrs(a))

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:  # type: ignore[override]
        w = await self._resolve(path)
        if w.link is None:
            raise _err(errno.EPERM)
        assert w.attr is not None
        await self._setattr(w.link, w.attr, attrs)

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:  # type: ignore[override]
        w = await self._resolve(path, follow=False)
        if w.link is None:
            raise _err(errno.EPERM)
        assert w.attr is not None
        await self._setattr(w.link, w.attr, attrs)

    async def _setattr(self, link: Any, cur: Attr, attrs: asyncssh.SFTPAttrs,
                       handle: bool = False) -> None:
        """One engine setattr for all fields, as spawn.fusechan does; the engine checks
        (*handle*: through a handle open for writing, an ftruncate)."""
        kw: dict[str, Any] = {}
        if attrs.size is not None:
            kw["size"] = attrs.size
            kw["handle"] = handle
        if attrs.permissions is not None:
            kw["mode"] = stat.S_IMODE(attrs.permissions)
        if attrs.uid is not None:
            kw["uid"] = attrs.uid
        if attrs.gid is not None:
            kw["gid"] = attrs.gid
        if attrs.atime is not None:
            kw["atime_ns"] = attrs.atime * 10**9 + (attrs.atime_ns or 0)
        if attrs.mtime is not None:
            kw["mtime_ns"] = attrs.mtime * 10**9 + (attrs.mtime_ns or 0)
        if kw:
            await link.call("setattr", cur.ino, **kw)

    async def statvfs(self, path: bytes) -> asyncssh.SFTPVFSAttrs:  # type: ignore[override]
        w = await self._resolve(path)
        if w.link is None:
            return asyncssh.SFTPVFSAttrs(bsize=4096, frsize=4096, namemax=NAME_MAX)
        return await self._statvfs(w.link)

    @staticmethod
    async def _statvfs(link: Any) -> asyncssh.SFTPVFSAttrs:
        total, free, avail = await link.call("statfs")
        return asyncssh.SFTPVFSAttrs(
            bsize=4096, frsize=4096, blocks=total // 4096, bfree=free // 4096,
            bavail=avail // 4096, files=1 << 32, ffree=(1 << 32) - 1, favail=(1 << 32) - 1,
            namemax=NAME_MAX)

    # -- names ----------------------------------------------------------------------------

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:  # type: ignore[override]
        w = await self._entry(path)
        if w.attr is not None:
            raise _err(errno.EEXIST)
        mode = attrs.permissions if attrs.permissions is not None else 0o777
        await w.link.call("mkdir", w.parent, w.name, stat.S_IMODE(mode))

    async def rmdir(self, path: bytes) -> None:  # type: ignore[override]
        w = await self._entry(path)
        if w.attr is None:
            raise _err(errno.ENOENT)
        await w.link.call("rmdir", w.parent, w.name)

    async def remove(self, path: bytes) -> None:  # type: ignore[override]
        w = await self._entry(path)
        if w.attr is None:
            raise _err(errno.ENOENT)
        await w.link.call("unlink", w.parent, w.name)

    async def _rename(self, oldpath: bytes, newpath: bytes, noreplace: bool) -> None:
        a = await self._entry(oldpath)
        b = await self._entry(newpath)
        if a.link.sid != b.link.sid:
            raise _err(errno.EXDEV, "a rename stays inside one spawn")
        if a.attr is None:
            raise _err(errno.ENOENT)
        await a.link.call("rename", a.parent, a.name, b.parent, b.name, noreplace=noreplace)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:  # type: ignore[override]
        """SFTP v3's rename must not replace an existing target (the draft says so; OpenSSH
        clients use posix-rename for the other)."""
        await self._rename(oldpath, newpath, True)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:  # type: ignore[override]
        await self._rename(oldpath, newpath, False)

    async def readlink(self, path: bytes) -> bytes:  # type: ignore[override]
        w = await self._resolve(path, follow=False)
        if w.attr is None or w.link is None:
            raise _err(errno.EINVAL)
        return await w.link.call("readlink", w.attr.ino)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:  # type: ignore[override]
        """*oldpath* is the target, stored as the client wrote it (asyncssh has already
        undone OpenSSH's swapped argument order)."""
        w = await self._entry(newpath)
        if w.attr is not None:
            raise _err(errno.EEXIST)
        await w.link.call("symlink", w.parent, w.name, oldpath)

    async def link(self, oldpath: bytes, newpath: bytes) -> None:  # type: ignore[override]
        a = await self._resolve(oldpath, follow=False)
        b = await self._entry(newpath)
        if a.link is None or a.parent == 0 or a.attr is None:
            raise _err(errno.EPERM)
        if a.link.sid != b.link.sid:
            raise _err(errno.EXDEV)
        await b.link.call("link", a.attr.ino, b.parent, b.name)

    # -- files ----------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _Handle:  # type: ignore[override]
        """SFTP v3 open: create (with EXCL: only create) and truncate in one engine call
        each, as spawn.fuse's create and open do."""
        if pflags & FXF_CREAT:
            w = await self._entry(path)
            if w.attr is not None and stat.S_ISLNK(w.attr.mode):
                w = await self._resolve(path, must_exist=False)  # create through the link
        else:
            w = await self._resolve(path)
        if w.link is None or w.parent == 0:
            raise _err(errno.EISDIR)
        append = bool(pflags & FXF_APPEND)
        write = bool(pflags & (FXF_WRITE | FXF_APPEND))
        if w.attr is None:
            mode = attrs.permissions if attrs.permissions is not None else 0o666
            a = await w.link.call("create", w.parent, w.name, stat.S_IMODE(mode), open=True)
            return _Handle(w.link, a.ino, append, write)
        if pflags & FXF_CREAT and pflags & FXF_EXCL:
            raise _err(errno.EEXIST)
        if stat.S_ISDIR(w.attr.mode):
            raise _err(errno.EISDIR)
        read = bool(pflags & FXF_READ)
        flags = os.O_RDWR if read and write else os.O_WRONLY if write else os.O_RDONLY
        if pflags & FXF_TRUNC:
            flags |= os.O_TRUNC
        a = await w.link.call("open", w.attr.ino, flags)
        return _Handle(w.link, a.ino, append, write)

    async def close(self, file_obj: _Handle) -> None:  # type: ignore[override]
        """Release the engine's open count. A spawn killed meanwhile has nothing to release,
        and asyncssh's end-of-session cleanup must get through every handle."""
        try:
            await file_obj.link.call("release", file_obj.ino)
        except OSError as e:
            if e.errno != errno.ESTALE:
                raise

    def cached(self, file_obj: _Handle, offset: int, size: int) -> bytes | None:
        """The answer to READ(*offset*, *size*) from the handle's read-ahead buffer, when the
        buffer holds it at the spawn's committed state of now (b"" at the end of the file);
        None when only the engine can answer. The one place that decides whether buffered
        bytes may be served: GridSFTPServer.read and the request reader's fast path
        (grid.daemon.sftp_fast) both ask it."""
        h = file_obj
        if h.ra_state is None or size <= 0 or offset < h.ra_off:
            return None
        if h.link.shared.snapshot() != h.ra_state:
            return None
        start = offset - h.ra_off
        if offset + size > h.ra_off + len(h.ra) and not (h.ra_eof and start <= len(h.ra)):
            return None  # past the buffer, and the file goes on (or the request starts
            # beyond the end the buffer saw, which the engine answers as ever)
        h.next_off = offset + size
        return h.ra[start:start + size]

    async def read(self, file_obj: _Handle, offset: int, size: int) -> bytes:  # type: ignore[override]
        """One engine read per request, except for a handle read in order: then one engine
        read of READ_AHEAD bytes serves the requests it covers, for as long as the spawn has
        not changed (the same state the engine's own read would see then)."""
        h = file_obj
        data = self.cached(h, offset, size)
        if data is not None:
            return data
        state = h.link.shared.snapshot()
        if offset != h.next_off or state is None or size >= READ_AHEAD:
            h.next_off = offset + size
            return await h.link.call("read", h.ino, offset, size)
        data = await h.link.call("read", h.ino, offset, READ_AHEAD)
        if h.link.shared.snapshot() == state:  # else a change came between: keep nothing
            h.ra, h.ra_off, h.ra_state = data, offset, state
            h.ra_eof = len(data) < READ_AHEAD  # the engine reads short only at the end
        h.next_off = offset + size
        return data[:size]

    def joinable(self, file_obj: _Handle) -> bool:
        """May WRITEs on this handle at contiguous offsets be made as one write
        (grid.daemon.sftp_fast)? Not when opened for appending: each such WRITE goes to the
        end as it is then, which the reader does not know."""
        return not file_obj.append

    async def write(self, file_obj: _Handle, offset: int, data: bytes) -> int:  # type: ignore[override]
        return await file_obj.link.call("write", file_obj.ino, offset, data,
                                        append=file_obj.append)

    async def fstat(self, file_obj: _Handle) -> asyncssh.SFTPAttrs:  # type: ignore[override]
        return to_attrs(await file_obj.link.call("getattr", file_obj.ino))

    async def fsetstat(self, file_obj: _Handle, attrs: asyncssh.SFTPAttrs) -> None:  # type: ignore[override]
        cur = await file_obj.link.call("getattr", file_obj.ino)
        await self._setattr(file_obj.link, cur, attrs, handle=file_obj.write)

    async def fstatvfs(self, file_obj: _Handle) -> asyncssh.SFTPVFSAttrs:  # type: ignore[override]
        return await self._statvfs(file_obj.link)

    async def fsync(self, file_obj: _Handle) -> None:  # type: ignore[override]
        await file_obj.link.call("fsync")

