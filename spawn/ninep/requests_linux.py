"""The requests of 9P2000.L (docs/9p.md, "9P2000.L")."""

from __future__ import annotations

import errno
import os
import stat

from spawn.access import NOW
from spawn.fsformat import NAME_MAX
from spawn.ninep import messages as m9
from spawn.ninep.codec import encode_dirent
from spawn.ninep.fids import Fid, Listing, Opened, XattrRead, XattrWrite
from spawn.ninep.locks import span
from spawn.ninep.messages import (
    Dirent,
    GetattrMask,
    LockFlags,
    LockStatus,
    LockType,
    Message,
    SetattrMask,
)
from spawn.ninep.session import (
    _U64,
    MAX_FILE,
    RHDR,
    XATTR_CREATE,
    XATTR_REPLACE,
    SessionCore,
    _err,
    _Request,
)

V9FS_MAGIC = 0x01021997  # statfs f_type of a 9P filesystem (Linux's V9FS_MAGIC)
BLKSIZE = 128 << 10  # the I/O size we suggest (st_blksize), as the FUSE adapter does
XATTR_SIZE_MAX = 64 << 10  # Linux's limit for one xattr value (the engine's too)

# 9P2000.L open flags (Linux's generic O_* values, as v9fs sends them on every architecture)
L_ACCMODE = 0o3
L_WRONLY = 0o1
L_RDWR = 0o2
L_EXCL = 0o200
L_TRUNC = 0o1000
L_APPEND = 0o2000
L_DIRECTORY = 0o200000

_DT_OF_FMT = {stat.S_IFDIR: m9.DT_DIR, stat.S_IFREG: m9.DT_REG, stat.S_IFLNK: m9.DT_LNK,
              stat.S_IFCHR: m9.DT_CHR, stat.S_IFBLK: m9.DT_BLK, stat.S_IFIFO: m9.DT_FIFO,
              stat.S_IFSOCK: m9.DT_SOCK}


class LinuxRequests(SessionCore):
    """The 9P2000.L requests (Tlopen ... Tgetlock), for a :class:`SessionCore`."""

    # -- 9P2000.L --------------------------------------------------------------------------

    async def _h_lopen(self, req: _Request, m: m9.Tlopen) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        access = m.flags & L_ACCMODE
        if access == L_ACCMODE:
            raise _err(errno.EINVAL, "bad access mode")
        a = await self._call(fid, "getattr", fid.ino)
        if stat.S_ISDIR(a.mode):
            if access != 0 or m.flags & L_TRUNC:  # open(2): EISDIR, as diod answers
                raise _err(errno.EISDIR)
            fid.opened = Opened(read=True, write=False, dir=True)
            fid.listing = None
            return m9.Rlopen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)
        if m.flags & L_DIRECTORY:
            raise _err(errno.ENOTDIR)
        a = await self._call(fid, "open", fid.ino, m.flags & (L_ACCMODE | L_TRUNC))
        fid.opened = Opened(read=access != L_WRONLY, write=access in (L_WRONLY, L_RDWR),
                            append=bool(m.flags & L_APPEND), counted=True)
        return m9.Rlopen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _h_lcreate(self, req: _Request, m: m9.Tlcreate) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        access = m.flags & L_ACCMODE
        if access == L_ACCMODE:
            raise _err(errno.EINVAL, "bad access mode")
        att = fid.att
        try:
            a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "create", fid.ino,
                                    m.name, m.mode & 0o7777, open=True)
        except FileExistsError:
            # open(2)'s O_CREAT without O_EXCL, as diod does it: the file there is opened
            # (and truncated if asked), with the permission checks of an open
            if m.flags & L_EXCL:
                raise
            found = await self._call(fid, "lookup", fid.ino, m.name)
            if stat.S_ISDIR(found.mode):
                raise _err(errno.EISDIR, "a directory") from None
            if stat.S_ISLNK(found.mode):
                raise _err(errno.EEXIST, "a symlink (the client follows links)") from None
            a = await self._call(fid, "open", found.ino, m.flags & (L_ACCMODE | L_TRUNC))
        fid.path = [*fid.path, (a.ino, m.name)]
        fid.opened = Opened(read=access != L_WRONLY, write=access in (L_WRONLY, L_RDWR),
                            append=bool(m.flags & L_APPEND), counted=True)
        return m9.Rlcreate(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _h_getattr(self, req: _Request, m: m9.Tgetattr) -> Message:
        """Every basic field is always valid (the engine has them all in one read);
        btime, gen and data_version are not given."""
        fid = self._fid(m.fid)
        a = await self._call(fid, "getattr", fid.ino)
        at, mt, ct = (_sec_nsec(ns) for ns in (a.atime_ns, a.mtime_ns, a.ctime_ns))
        return m9.Rgetattr(
            tag=m.tag, valid=GetattrMask.BASIC, qid=self._qid(a), mode=a.mode, uid=a.uid,
            gid=a.gid, nlink=a.nlink, rdev=a.rdev, size=a.size, blksize=BLKSIZE,
            blocks=a.blocks, atime_sec=at[0], atime_nsec=at[1], mtime_sec=mt[0],
            mtime_nsec=mt[1], ctime_sec=ct[0], ctime_nsec=ct[1])

    async def _h_setattr(self, req: _Request, m: m9.Tsetattr) -> Message:
        """One engine setattr for every selected field (so it is one change). A time bit
        without its _SET bit means now; CTIME alone just touches the file."""
        fid = self._fid(m.fid)
        v = m.valid
        kw: dict[str, int] = {}
        if v & SetattrMask.MODE:
            kw["mode"] = m.mode & 0o7777
        if v & SetattrMask.UID:
            kw["uid"] = m.uid
        if v & SetattrMask.GID:
            kw["gid"] = m.gid
        if v & SetattrMask.SIZE:
            kw["size"] = m.size
        if v & SetattrMask.SIZE and m.size > MAX_FILE:
            raise _err(errno.EFBIG)
        if v & SetattrMask.ATIME:
            kw["atime_ns"] = (_time_ns(m.atime_sec, m.atime_nsec)
                              if v & SetattrMask.ATIME_SET else NOW)
        if v & SetattrMask.MTIME:
            kw["mtime_ns"] = (_time_ns(m.mtime_sec, m.mtime_nsec)
                              if v & SetattrMask.MTIME_SET else NOW)
        await self._call(fid, "setattr", fid.ino, **kw)
        return m9.Rsetattr(tag=m.tag)

    async def _h_readdir(self, req: _Request, m: m9.Treaddir) -> Message:
        """Entries ``.``, ``..`` and the directory's, from a snapshot taken at offset 0; an
        entry's offset is the cookie of the one after it (its index + 1), so a listing pass
        neither skips nor repeats while the directory changes."""
        fid = self._fid(m.fid)
        if fid.opened is None or not fid.opened.dir:
            # an open file: EINVAL, as diod answers (tests/spawn/test_ninep_diff.py)
            raise _err(errno.EINVAL if fid.opened is not None else errno.EBADF,
                       "readdir needs a directory opened with Tlopen")
        if m.offset == 0 or fid.listing is None:
            here = await self._call(fid, "getattr", fid.ino)
            up = fid.path[-2][0] if len(fid.path) > 1 else fid.ino
            parent = here if up == fid.ino else await self._call(fid, "getattr", up)
            entries = await self._call(fid, "readdir", fid.ino)
            fid.listing = Listing([(b".", here), (b"..", parent), *entries])
        entries = fid.listing.entries
        count = min(m.count, self.msize - RHDR)
        out: list[bytes] = []
        size = 0
        i = m.offset
        while i < len(entries):
            name, a = entries[i]
            b = encode_dirent(Dirent(qid=self._qid(a), offset=i + 1,
                                     type=_DT_OF_FMT.get(stat.S_IFMT(a.mode), m9.DT_UNKNOWN),
                                     name=name))
            if size + len(b) > count:
                break
            out.append(b)
            size += len(b)
            i += 1
        if not out and i < len(entries):
            raise _err(errno.EINVAL, "count too small for one directory entry")
        return m9.Rreaddir(tag=m.tag, data=b"".join(out))

    async def _h_statfs(self, req: _Request, m: m9.Tstatfs) -> Message:
        fid = self._fid(m.fid)
        total, free, avail = await self._call(fid, "statfs")
        return m9.Rstatfs(tag=m.tag, type=V9FS_MAGIC, bsize=4096, blocks=total // 4096,
                          bfree=free // 4096, bavail=avail // 4096, files=1 << 32,
                          ffree=(1 << 32) - 1, fsid=fid.att.fsid & _U64, namelen=NAME_MAX)

    async def _h_fsync(self, req: _Request, m: m9.Tfsync) -> Message:
        fid = self._fid(m.fid)
        self._opened_for(fid, "fsync")
        await self._call(fid, "fsync")
        return m9.Rfsync(tag=m.tag)

    async def _h_readlink(self, req: _Request, m: m9.Treadlink) -> Message:
        fid = self._fid(m.fid)
        return m9.Rreadlink(tag=m.tag, target=await self._call(fid, "readlink", fid.ino))

    async def _h_symlink(self, req: _Request, m: m9.Tsymlink) -> Message:
        fid = self._fid(m.fid)
        att = fid.att
        a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "symlink", fid.ino, m.name,
                                m.symtgt)
        return m9.Rsymlink(tag=m.tag, qid=self._qid(a))

    async def _h_mknod(self, req: _Request, m: m9.Tmknod) -> Message:
        fid = self._fid(m.dfid)
        att = fid.att
        try:
            rdev = os.makedev(m.major, m.minor)
        except (OverflowError, ValueError):
            raise _err(errno.EINVAL, "device numbers out of range") from None
        a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "mknod", fid.ino, m.name,
                                m.mode, rdev)
        return m9.Rmknod(tag=m.tag, qid=self._qid(a))

    async def _h_mkdir(self, req: _Request, m: m9.Tmkdir) -> Message:
        fid = self._fid(m.dfid)
        att = fid.att
        a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "mkdir", fid.ino, m.name,
                                m.mode & 0o7777)
        return m9.Rmkdir(tag=m.tag, qid=self._qid(a))

    async def _h_link(self, req: _Request, m: m9.Tlink) -> Message:
        d, target = self._fid(m.dfid), self._fid(m.fid)
        _same_spawn(d, target)
        await self._call(d, "link", target.ino, d.ino, m.name)
        return m9.Rlink(tag=m.tag)

    async def _h_rename(self, req: _Request, m: m9.Trename) -> Message:
        fid, d = self._fid(m.fid), self._fid(m.dfid)
        _same_spawn(fid, d)
        parent, old = await self._child_of(fid)
        await self._call(fid, "rename", parent, old, d.ino, m.name)
        fid.path = [*d.path, (fid.ino, m.name)]
        return m9.Rrename(tag=m.tag)

    async def _h_renameat(self, req: _Request, m: m9.Trenameat) -> Message:
        old, new = self._fid(m.olddirfid), self._fid(m.newdirfid)
        _same_spawn(old, new)
        await self._call(old, "rename", old.ino, m.oldname, new.ino, m.newname)
        return m9.Rrenameat(tag=m.tag)

    async def _h_unlinkat(self, req: _Request, m: m9.Tunlinkat) -> Message:
        fid = self._fid(m.dirfid)
        if m.flags & ~m9.AT_REMOVEDIR:
            raise _err(errno.EINVAL, "unknown unlinkat flags")
        op = "rmdir" if m.flags & m9.AT_REMOVEDIR else "unlink"
        await self._call(fid, op, fid.ino, m.name)
        return m9.Runlinkat(tag=m.tag)

    async def _h_xattrwalk(self, req: _Request, m: m9.Txattrwalk) -> Message:
        """newfid reads one xattr's value, or with an empty name the list of names (each
        NUL-terminated, as listxattr(2) returns them)."""
        fid = self._fid(m.fid)
        if m.newfid != m.fid:
            self._new_fid_ok(m.newfid)
        if m.name:
            data = await self._call(fid, "getxattr", fid.ino, m.name)
        else:
            data = b"".join(n + b"\0" for n in await self._call(fid, "listxattr", fid.ino))
        new = Fid(m.newfid, fid.att, list(fid.path), xattr=XattrRead(data))
        if m.newfid == m.fid:
            await self._release(fid, commit=False)
        else:
            self._new_fid_ok(m.newfid)
        self._fids[m.newfid] = new
        return m9.Rxattrwalk(tag=m.tag, size=len(data))

    async def _h_xattrcreate(self, req: _Request, m: m9.Txattrcreate) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        if not m.name:
            raise _err(errno.EINVAL, "empty xattr name")
        if m.attr_size > XATTR_SIZE_MAX:
            raise _err(errno.E2BIG, f"xattr values are at most {XATTR_SIZE_MAX} bytes")
        if m.flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise _err(errno.EINVAL, "unknown xattr flags")
        fid.xattr = XattrWrite(m.name, m.attr_size, m.flags, bytearray(m.attr_size))
        return m9.Rxattrcreate(tag=m.tag)

    async def _h_lock(self, req: _Request, m: m9.Tlock) -> Message:
        """A POSIX record lock in the spawn's table. Without BLOCK a conflict answers
        BLOCKED (Linux: EAGAIN). With BLOCK the request waits here until it can take the
        lock, and a Tflush stops the wait (Linux sends one when the process gets a fatal
        signal); only when ``max_lock_waits`` requests already wait is BLOCKED answered,
        which Linux retries after its lock timeout."""
        fid = self._fid(m.fid)
        self._opened_for(fid, "lock")
        if m.type not in (LockType.RDLCK, LockType.WRLCK, LockType.UNLCK):
            raise _err(errno.EINVAL, "bad lock type")
        if m.flags & ~(LockFlags.BLOCK | LockFlags.RECLAIM):
            raise _err(errno.EINVAL, "bad lock flags")
        start, end = span(m.start, m.length)
        owner = (self.id, m.client_id, m.proc_id)
        table = fid.att.locks
        while True:
            if table.set(fid.ino, owner, LockType(m.type), start, end, token=fid,
                         proc_id=m.proc_id, client_id=m.client_id):
                return m9.Rlock(tag=m.tag, status=LockStatus.SUCCESS)
            if not m.flags & LockFlags.BLOCK or self._lock_waits >= self._max_lock_waits:
                return m9.Rlock(tag=m.tag, status=LockStatus.BLOCKED)
            self._lock_waits += 1
            try:
                await self._wait(req, table.changed(fid.ino))
            finally:
                self._lock_waits -= 1

    async def _h_getlock(self, req: _Request, m: m9.Tgetlock) -> Message:
        fid = self._fid(m.fid)
        self._opened_for(fid, "getlock")
        if m.type not in (LockType.RDLCK, LockType.WRLCK, LockType.UNLCK):
            raise _err(errno.EINVAL, "bad lock type")
        start, end = span(m.start, m.length)
        owner = (self.id, m.client_id, m.proc_id)
        lk = fid.att.locks.conflict(fid.ino, owner, LockType(m.type), start, end)
        if lk is None:
            return m9.Rgetlock(tag=m.tag, type=LockType.UNLCK, start=m.start, length=m.length,
                               proc_id=m.proc_id, client_id=m.client_id)
        return m9.Rgetlock(tag=m.tag, type=lk.type, start=lk.start, length=lk.length,
                           proc_id=lk.proc_id, client_id=lk.client_id)


def _same_spawn(a: Fid, b: Fid) -> None:
    if a.att.link is not b.att.link:
        raise _err(errno.EXDEV, "the fids are in different spawns")


def _sec_nsec(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec & _U64, nsec


def _time_ns(sec: int, nsec: int) -> int:
    """A .L time (u64 seconds read as signed, as Linux sends them) in nanoseconds, within
    what the engine stores (a signed 64-bit count of nanoseconds: years 1678 to 2262)."""
    sec = sec - (1 << 64) if sec >= 1 << 63 else sec
    ns = sec * 1_000_000_000 + nsec
    if nsec >= 1_000_000_000 or not -(1 << 63) <= ns < 1 << 63:
        raise _err(errno.EINVAL, "time out of range")
    return ns
