"""The 9P requests every dialect has: attach, walk, clunk, remove, read, write (docs/9p.md)."""

from __future__ import annotations

import errno
import stat
import struct

from spawn.engine import Attr
from spawn.ninep import messages as m9
from spawn.ninep.codec import encode_stat
from spawn.ninep.errtext import Explained
from spawn.ninep.fids import Fid, Listing, XattrRead, XattrWrite
from spawn.ninep.messages import (
    NOFID,
    Dialect,
    Message,
)
from spawn.ninep.sendfile import PlainRead
from spawn.ninep.session import MAX_FILE, RHDR, SessionCore, _err, _Request
from store.plaincache import PlainRange

_TREAD_BODY = struct.Struct("<HIQI")  # tag fid offset count, after size[4] type[1]


class CommonRequests(SessionCore):
    """Tattach, Twalk, Tclunk, Tremove, Tread and Twrite, for a :class:`SessionCore`."""

    # -- version, auth, attach, walk, clunk, remove ---------------------------------------

    async def _h_auth(self, req: _Request, m: m9.Tauth) -> Message:
        """No 9P authentication: identity comes from the transport. An error makes clients
        attach with afid NOFID (diod's tools read Rlerror ENOENT that way)."""
        raise Explained(errno.ENOENT, "authentication not required")

    async def _h_attach(self, req: _Request, m: m9.Tattach) -> Message:
        self._new_fid_ok(m.fid)
        if m.afid != NOFID:
            raise _err(errno.EBADF, "no authentication fids: attach with afid NOFID")
        try:
            att = await self._resolve(m.uname, m.aname, m.n_uname)
        except PermissionError as e:
            raise _err(errno.EACCES, str(e) or None) from None
        except LookupError as e:
            raise _err(errno.ENOENT, str(e) or None) from None
        a = await att.link.call("getattr", att.cred, att.root)
        self._new_fid_ok(m.fid)
        self._fids[m.fid] = Fid(m.fid, att, [(att.root, b"/")])
        self._table_refs[id(att.locks)] = att.locks
        return m9.Rattach(tag=m.tag, qid=self._qid(a))

    async def _h_walk(self, req: _Request, m: m9.Twalk) -> Message:
        """walk(5): all names or an error for the first; a partial walk answers the qids it
        got and leaves newfid unmade. ``..`` pops the fid's path and stays at the root.

        walk(5) forbids walking from an open fid. 9P2000.L relaxes that for a walk to another
        fid, as diod does (its diodls walks from the directory it reads): the open fid stays
        as it is."""
        fid = self._fid(m.fid)
        if self.dialect is not Dialect.LINUX or m.newfid == m.fid or fid.xattr is not None:
            self._unopened(fid)
        if m.newfid != m.fid:
            self._new_fid_ok(m.newfid)
        path = list(fid.path)
        qids = []
        for i, name in enumerate(m.wnames):
            try:
                path, a = await self._step(fid, path, name)
            except OSError:
                if i == 0:
                    raise
                break
            qids.append(self._qid(a))
        if len(qids) == len(m.wnames):
            if m.newfid == m.fid:
                fid.path = path
            else:
                self._new_fid_ok(m.newfid)
                self._fids[m.newfid] = Fid(m.newfid, fid.att, path)
        return m9.Rwalk(tag=m.tag, wqids=tuple(qids))

    async def _step(self, fid: Fid, path: list[tuple[int, bytes]],
                    name: bytes) -> tuple[list[tuple[int, bytes]], Attr]:
        if name == b"..":
            # a file has no "..": ENOTDIR, as lookup(2) and diod answer
            a = await self._call(fid, "getattr", path[-1][0])
            if not stat.S_ISDIR(a.mode):
                raise _err(errno.ENOTDIR)
            if len(path) > 1:
                path = path[:-1]
                a = await self._call(fid, "getattr", path[-1][0])
            return path, a
        if not name or b"/" in name or b"\0" in name:
            raise _err(errno.EINVAL, f"bad name {name!r}")
        if name == b".":
            a = await self._call(fid, "getattr", path[-1][0])
            if not stat.S_ISDIR(a.mode):
                raise _err(errno.ENOTDIR)
            return path, a
        a = await self._call(fid, "lookup", path[-1][0], name)
        return [*path, (a.ino, name)], a

    async def _h_clunk(self, req: _Request, m: m9.Tclunk) -> Message:
        """clunk(5): the fid is gone whatever happens; an error of what the clunk does (an
        xattr set, an ORCLOSE removal) is still reported."""
        fid = self._fid(m.fid)
        del self._fids[m.fid]
        await self._release(fid)
        return m9.Rclunk(tag=m.tag)

    async def _h_remove(self, req: _Request, m: m9.Tremove) -> Message:
        """remove(5): remove the file and clunk the fid, even if the remove fails."""
        fid = self._fid(m.fid)
        del self._fids[m.fid]
        try:
            if fid.xattr is not None:
                raise _err(errno.EINVAL, "an xattr fid names no file to remove")
            await self._remove(fid)
        finally:
            if fid.opened is not None:
                fid.opened.rclose = False
            await self._release(fid, commit=False)
        return m9.Rremove(tag=m.tag)

    # -- reading and writing -----------------------------------------------------------------

    async def _h_read(self, req: _Request, m: m9.Tread) -> Message | PlainRead:
        fid = self._fid(m.fid)
        count = min(m.count, self.msize - RHDR)
        x = fid.xattr
        if isinstance(x, XattrRead):
            return m9.Rread(tag=m.tag, data=x.data[m.offset:m.offset + count])
        o = fid.opened
        if o is None or not o.read or x is not None:
            raise _err(errno.EBADF, "fid not open for reading")
        if o.dir:
            if self.dialect is Dialect.LINUX:
                raise _err(errno.EISDIR, "read a directory with Treaddir")
            return m9.Rread(tag=m.tag, data=await self._read_dir(req, fid, m.offset, count))
        if o.link:  # 9P2000 has no symlinks: reading one gives its target (docs/9p.md)
            target = await self._call(fid, "readlink", fid.ino)
            return m9.Rread(tag=m.tag, data=target[m.offset:m.offset + count])
        r = self._plain(fid, m.offset, count)
        if r is not None:
            return PlainRead(m.tag, r)
        data = await self._call(fid, "read", fid.ino, m.offset, count)
        return m9.Rread(tag=m.tag, data=data)

    def _read_now(self, frame: bytes | bytearray) -> bool:
        """Answer a Tread from decoded memory at once (docs/9p.md, "Reads the kernel
        serves"), without a request's bookkeeping: called only while no request is in
        flight, when every turn is free and ``_start`` would run ``_h_read`` to its end
        right here too. False: nothing was done; the frame takes the ordinary way."""
        if self.dialect is None:
            return False
        tag, number, offset, count = _TREAD_BODY.unpack_from(frame, 5)
        fid = self._fids.get(number)
        if fid is None or fid.xattr is not None:
            return False
        o = fid.opened
        if o is None or not o.read or o.dir or o.link:
            return False
        r = self._plain(fid, offset, min(count, self.msize - RHDR))
        if r is None:
            return False
        self._received += 1
        self._write(PlainRead(tag, r))
        return True

    @staticmethod
    def _plain(fid: Fid, offset: int, count: int) -> PlainRange | None:
        """The bytes of a read as a range the kernel can send (docs/9p.md, "Reads the kernel
        serves"), when the fid's link offers them (a spawn's, in the daemon); else None."""
        plain = getattr(fid.att.link, "read_plain", None)
        return None if plain is None else plain(fid.att.cred, fid.ino, offset, count)

    async def _read_dir(self, req: _Request, fid: Fid, offset: int, count: int) -> bytes:
        """read(5) of a directory: whole stat entries only; offset 0 (re)starts the listing,
        any other offset must be the previous offset plus the count returned."""
        if offset == 0:
            fid.listing = Listing(await self._call(fid, "readdir", fid.ino))
        listing = fid.listing
        if listing is None or offset != listing.offset:
            raise _err(errno.EINVAL, "bad offset in directory read")
        out: list[bytes] = []
        size = 0
        i = listing.index
        while i < len(listing.entries):
            name, a = listing.entries[i]
            b = encode_stat(await self._stat(fid, a, name), self.dialect or Dialect.BASE)
            if size + len(b) > count:
                break
            out.append(b)
            size += len(b)
            i += 1
        if not out and i < len(listing.entries):
            raise _err(errno.EINVAL, "count too small for one directory entry")
        listing.index = i
        listing.offset += size
        return b"".join(out)

    async def _h_write(self, req: _Request, m: m9.Twrite) -> Message:
        fid = self._fid(m.fid)
        x = fid.xattr
        if isinstance(x, XattrWrite):
            # as diod: the value is the announced size, zero-filled; a write keeps what fits
            # (count 0 past the end) and the clunk sets the whole value
            n = max(0, min(len(m.data), x.size - m.offset))
            x.data[m.offset:m.offset + n] = m.data[:n]
            return m9.Rwrite(tag=m.tag, count=n)
        o = fid.opened
        if o is None or not o.write or x is not None:
            raise _err(errno.EBADF, "fid not open for writing")
        if m.offset + len(m.data) > MAX_FILE:
            raise _err(errno.EFBIG)
        n = await self._call(fid, "write", fid.ino, m.offset, m.data, append=o.append)
        return m9.Rwrite(tag=m.tag, count=n)
