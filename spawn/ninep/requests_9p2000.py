"""The requests of 9P2000 and 9P2000.u: open, create, stat, wstat (docs/9p.md, "9P2000 and
9P2000.u")."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Any

from spawn.access import O_EXEC
from spawn.engine import Attr
from spawn.fsformat import NAME_MAX
from spawn.ninep import messages as m9
from spawn.ninep.fids import Fid, Opened
from spawn.ninep.messages import (
    NONUNAME,
    Dialect,
    Message,
    Stat,
)
from spawn.ninep.session import _U64, MAX_FILE, SessionCore, _err, _Request

#: 9P2000 open modes (OREAD, OWRITE, ORDWR, OEXEC) as the engine's open flags.
_OPEN_FLAGS = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, O_EXEC)


class Plan9Requests(SessionCore):
    """Topen, Tcreate, Tstat and Twstat, for a :class:`SessionCore`."""

    # -- 9P2000 and 9P2000.u: open, create, stat, wstat ------------------------------------

    async def _h_open(self, req: _Request, m: m9.Topen) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        mode = m.mode
        access = mode & 3
        read = access in (m9.OREAD, m9.ORDWR, m9.OEXEC)
        write = access in (m9.OWRITE, m9.ORDWR)
        a = await self._call(fid, "getattr", fid.ino)
        rclose = bool(mode & m9.ORCLOSE)
        if stat.S_ISDIR(a.mode):
            if write or mode & m9.OTRUNC:
                raise _err(errno.EISDIR, "directories open for reading only")
            fid.opened = Opened(read=True, write=False, dir=True, rclose=rclose)
            fid.listing = None
            return m9.Ropen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)
        if stat.S_ISLNK(a.mode) and self.dialect is Dialect.BASE:
            # 9P2000 knows no symlinks: the link reads as a file holding its target, so
            # copying a tree through a 9P2000 client keeps something of every entry
            if write or mode & m9.OTRUNC:
                raise _err(errno.EACCES, "a symlink is read-only in 9P2000")
            fid.opened = Opened(read=True, write=False, rclose=rclose, link=True)
            return m9.Ropen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)
        append = bool(mode & m9.OAPPEND) and self.dialect is Dialect.UNIX
        flags = _OPEN_FLAGS[mode & 3] | (os.O_TRUNC if mode & m9.OTRUNC else 0)
        a = await self._call(fid, "open", fid.ino, flags)
        fid.opened = Opened(read=read, write=write, append=append, rclose=rclose, counted=True)
        return m9.Ropen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _h_create(self, req: _Request, m: m9.Tcreate) -> Message:
        """create(5): make *name* in the fid's directory; the fid becomes the new file, open
        in *mode*. 9P2000.u's perm bits and extension make symlinks (DMSYMLINK, target in
        extension), hard links (DMLINK, extension the decimal fid of the target) and device
        nodes (DMDEVICE "b|c major minor", DMNAMEDPIPE, DMSOCKET). In 9P2000 the permission
        is masked by the directory's, as create(5) says; in .u the client has applied its
        umask and the bits are taken as sent."""
        fid = self._fid(m.fid)
        self._unopened(fid)
        d = await self._call(fid, "getattr", fid.ino)
        if not stat.S_ISDIR(d.mode):
            raise _err(errno.ENOTDIR, "create in a file")
        perm, mode = m.perm, m.mode
        access = mode & 3
        read = access in (m9.OREAD, m9.ORDWR, m9.OEXEC)
        write = access in (m9.OWRITE, m9.ORDWR)
        bits = perm & 0o777
        if self.dialect is Dialect.UNIX:
            bits |= _suid_bits(perm)
        dot_u = self.dialect is Dialect.UNIX
        counted = False
        if perm & m9.DMDIR:
            if write or mode & m9.OTRUNC:
                raise _err(errno.EISDIR, "a new directory opens for reading only")
            if self.dialect is Dialect.BASE:
                bits = perm & (~0o777 | (d.mode & 0o777)) & 0o777
            a = await self._call(fid, "mkdir", fid.ino, m.name, bits)
        elif dot_u and perm & m9.DMSYMLINK:
            a = await self._call(fid, "symlink", fid.ino, m.name, m.extension)
        elif dot_u and perm & m9.DMLINK:
            target = self._fid(_parse_fid(m.extension))
            await self._call(fid, "link", target.ino, fid.ino, m.name)
            a = await self._call(fid, "lookup", fid.ino, m.name)
        elif dot_u and perm & (m9.DMDEVICE | m9.DMNAMEDPIPE | m9.DMSOCKET):
            fmt, rdev = _special(perm, m.extension)
            a = await self._call(fid, "mknod", fid.ino, m.name, fmt | bits, rdev)
        else:
            if self.dialect is Dialect.BASE:
                bits = perm & (~0o666 | (d.mode & 0o666)) & 0o777
            a = await self._call(fid, "create", fid.ino, m.name, bits, open=True)
            counted = True
        fid.path = [*fid.path, (a.ino, m.name)]
        is_dir = stat.S_ISDIR(a.mode)
        append = bool(mode & m9.OAPPEND) and dot_u
        fid.opened = Opened(read=read or is_dir, write=write and not is_dir, dir=is_dir,
                            append=append, rclose=bool(mode & m9.ORCLOSE), counted=counted)
        return m9.Rcreate(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _stat(self, fid: Fid, a: Attr, name: bytes) -> Stat:
        """stat(5) of *a*: uid and gid as decimal strings (grid has no user names here);
        9P2000.u adds the numbers, setuid bits, file types and the symlink or device
        extension."""
        fmt = stat.S_IFMT(a.mode)
        mode = a.mode & 0o777
        if fmt == stat.S_IFDIR:
            mode |= m9.DMDIR
        dot_u = self.dialect is Dialect.UNIX
        ext = b""
        if dot_u:
            mode |= _dm_suid(a.mode)
            if fmt == stat.S_IFLNK:
                mode |= m9.DMSYMLINK
                ext = await self._call(fid, "readlink", a.ino)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                mode |= m9.DMDEVICE
                kind = b"c" if fmt == stat.S_IFCHR else b"b"
                ext = b"%s %d %d" % (kind, os.major(a.rdev), os.minor(a.rdev))
            elif fmt == stat.S_IFIFO:
                mode |= m9.DMNAMEDPIPE
            elif fmt == stat.S_IFSOCK:
                mode |= m9.DMSOCKET
        uid, gid = str(a.uid).encode(), str(a.gid).encode()
        extra: dict[str, Any] = {}
        if dot_u:
            extra = {"extension": ext, "n_uid": a.uid & 0xFFFFFFFF, "n_gid": a.gid & 0xFFFFFFFF,
                     "n_muid": a.uid & 0xFFFFFFFF}
        return Stat(type=0, dev=0, qid=self._qid(a), mode=mode, atime=_u32_sec(a.atime_ns),
                    mtime=_u32_sec(a.mtime_ns), length=0 if fmt == stat.S_IFDIR else a.size,
                    name=name, uid=uid, gid=gid, muid=uid, **extra)

    async def _h_stat(self, req: _Request, m: m9.Tstat) -> Message:
        fid = self._fid(m.fid)
        a = await self._call(fid, "getattr", fid.ino)
        return m9.Rstat(tag=m.tag, stat=await self._stat(fid, a, fid.name))

    async def _h_wstat(self, req: _Request, m: m9.Twstat) -> Message:
        """stat(5)'s wstat, all or nothing: every field is checked before anything changes;
        then the rename (if the name changes, within the directory, never over an existing
        file), then one engine setattr for mode, times, length and owner; if that fails the
        rename is undone. ``~0`` and empty strings mean "don't touch"."""
        fid = self._fid(m.fid)
        s = m.stat
        a = await self._call(fid, "getattr", fid.ino)
        cur = await self._stat(fid, a, fid.name)
        is_dir = stat.S_ISDIR(a.mode)
        if s.type not in (0xFFFF, cur.type) or s.dev not in (0xFFFFFFFF, cur.dev):
            raise _err(errno.EPERM, "wstat cannot change type or dev")
        q = s.qid
        if (q.type, q.version, q.path) != (0xFF, 0xFFFFFFFF, _U64) and q.path != a.ino:
            raise _err(errno.EPERM, "wstat cannot change the qid")
        if s.muid not in (b"", cur.muid):
            raise _err(errno.EPERM, "wstat cannot change muid")
        kw: dict[str, int] = {}
        if s.mode != 0xFFFFFFFF:
            if bool(s.mode & m9.DMDIR) != is_dir:
                raise _err(errno.EPERM, "wstat cannot change the directory bit")
            if self.dialect is Dialect.UNIX:
                kw["mode"] = (s.mode & 0o777) | _suid_bits(s.mode)
            else:
                kw["mode"] = (a.mode & 0o7000) | (s.mode & 0o777)
        if s.atime != 0xFFFFFFFF:
            kw["atime_ns"] = s.atime * 1_000_000_000
        if s.mtime != 0xFFFFFFFF:
            kw["mtime_ns"] = s.mtime * 1_000_000_000
        if s.length != _U64:
            if is_dir:
                if s.length != 0:
                    raise _err(errno.EISDIR, "a directory has no length to set")
            elif stat.S_ISREG(a.mode):
                if s.length > MAX_FILE:
                    raise _err(errno.EFBIG)
                kw["size"] = s.length
            else:
                raise _err(errno.EINVAL, "only regular files have a length to set")
        uid = _owner(s.uid, s.n_uid, a.uid, "uid")
        gid = _owner(s.gid, s.n_gid, a.gid, "gid")
        if uid is not None:
            kw["uid"] = uid
        if gid is not None:
            kw["gid"] = gid
        rename: tuple[int, bytes, bytes] | None = None
        if s.name not in (b"", fid.name):
            _check_name(s.name)
            parent, old = await self._child_of(fid)
            try:
                await self._call(fid, "lookup", parent, s.name)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
            else:
                raise _err(errno.EEXIST, "a file of that name exists")
            rename = (parent, old, s.name)
        if rename is not None:
            parent, old, new = rename
            await self._call(fid, "rename", parent, old, parent, new, noreplace=True)
            fid.path = [*fid.path[:-1], (fid.ino, new)]
        if not kw and rename is None:
            await self._call(fid, "fsync")  # stat(5): a wstat that changes nothing syncs
        elif kw:
            try:
                await self._call(fid, "setattr", fid.ino, **kw)
            except OSError:
                if rename is not None:
                    parent, old, new = rename
                    with contextlib.suppress(OSError):
                        await self._call(fid, "rename", parent, new, parent, old, noreplace=True)
                        fid.path = [*fid.path[:-1], (fid.ino, old)]
                raise
        return m9.Rwstat(tag=m.tag)


def _check_name(name: bytes) -> None:
    if not name or len(name) > NAME_MAX or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise _err(errno.EINVAL, f"bad name {name!r}")


def _parse_fid(ext: bytes) -> int:
    try:
        return int(ext.strip())
    except ValueError:
        raise _err(errno.EINVAL, "DMLINK extension must be a fid number") from None


def _special(perm: int, ext: bytes) -> tuple[int, int]:
    """(S_IFMT, rdev) of a 9P2000.u special file from its perm bits and extension."""
    if perm & m9.DMNAMEDPIPE:
        return stat.S_IFIFO, 0
    if perm & m9.DMSOCKET:
        return stat.S_IFSOCK, 0
    parts = ext.split()
    if len(parts) != 3 or parts[0] not in (b"b", b"c"):
        raise _err(errno.EINVAL, "device extension must be 'b|c major minor'")
    try:
        major, minor = int(parts[1]), int(parts[2])
        rdev = os.makedev(major, minor)
    except (ValueError, OverflowError):
        raise _err(errno.EINVAL, "bad device numbers") from None
    return (stat.S_IFBLK if parts[0] == b"b" else stat.S_IFCHR), rdev


_SUID_PAIRS = ((m9.DMSETUID, stat.S_ISUID), (m9.DMSETGID, stat.S_ISGID),
               (m9.DMSETVTX, stat.S_ISVTX))


def _suid_bits(perm: int) -> int:
    """The setuid, setgid and sticky bits of a 9P2000.u perm, as Unix mode bits."""
    return sum(bit for dm, bit in _SUID_PAIRS if perm & dm)


def _dm_suid(mode: int) -> int:
    """The setuid, setgid and sticky bits of a Unix mode, as 9P2000.u perm bits."""
    return sum(dm for dm, bit in _SUID_PAIRS if mode & bit)


def _owner(text: bytes, number: int, current: int, what: str) -> int | None:
    """A wstat's uid or gid: the .u number if given, else a decimal string; None when
    untouched or unchanged."""
    if number != NONUNAME:
        return None if number == current else number
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise _err(errno.EINVAL, f"{what} {text!r} is not a number") from None
    return None if value == current else value


def _u32_sec(ns: int) -> int:
    return min(max(ns // 1_000_000_000, 0), 0xFFFFFFFF)
