"""The FUSE exporter: one mounted /dev/fuse channel, served on its spawn's host thread.

The kernel's requests (spawn.fuseproto) are read from the channel's descriptor and answered
right there, on the thread that owns the spawn's engine (spawn.host): no event loop, no
hand-off between threads or processes per request. Every handler is a translation: fields
in, one engine call, attributes or an errno out; filesystem semantics live in the engine,
so that 9P and SFTP get the same behaviour.

What the adapter adds:

* **Credentials**: every request runs as its caller (uid, gid from the request header; the
  supplementary groups from /proc when a check needs them), and the engine applies the
  permission rules (spawn.access). The mount has ``default_permissions`` too (the kernel
  checks mode bits first, a second check) and ``allow_other``.
* **Privacy**: a request from a user the spawn does not admit (its owner, root, and those it
  is shared with: ``SpawnHost.admits``) is refused (EACCES) before anything else, except
  those that act on a handle a checked open returned (read, write, release, ...). Names and
  attributes the kernel has cached never reach us, so the root directory's attributes are
  never cached: every path walk into the mount from outside asks for them (the kernel checks
  search permission on it), with the caller's uid, and a stranger is refused there.
* **Kernel caching**: names and attributes are cached ``timeout`` seconds (10 by default)
  and file pages while a file's ctime does not move (``keep_cache``). Changes made by other
  clients of the spawn are announced before they return (spawn.host writes the kernel's
  invalidation notices from a thread of its own: such a write can wait on a lock that a
  request of this very channel holds).
* **Survival**: the mount process (spawn.fuse_main) holds a second copy of the descriptor,
  so the kernel connection outlives this process; a new daemon that receives the descriptor
  again asks the kernel to resend the requests that were in flight (NOTIFY_RESEND, Linux
  6.9+) and carries on with the negotiated parameters it is given.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spawn import fuseproto as fp
from spawn.access import NOW, O_EXEC
from spawn.attr import Attr
from spawn.cred import ROOT as ROOT_CRED
from spawn.cred import Cred
from spawn.fsformat import NAME_MAX
from store.errors import StoreError

if TYPE_CHECKING:
    from spawn.host import SpawnHost

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # entry and attribute cache timeouts, seconds
BLKSIZE = 4096  # st_blksize, as ext4 says: programs size their buffers by it
MAX_WRITE = 1 << 20  # the largest write request we accept (max_pages 256)
MAX_READAHEAD = 1 << 20
BUFSIZE = MAX_WRITE + 64 * 1024  # one read of /dev/fuse returns one whole request
ROOT = 1
_BATCH = 64  # requests handled per wake-up before others get a turn
_CACHED_MAX = 1 << 16
WANT = (fp.ASYNC_READ | fp.ATOMIC_O_TRUNC | fp.BIG_WRITES | fp.AUTO_INVAL_DATA
        | fp.DO_READDIRPLUS | fp.READDIRPLUS_AUTO | fp.PARALLEL_DIROPS | fp.MAX_PAGES
        | fp.CACHE_SYMLINKS | fp.HANDLE_KILLPRIV_V2)
#: Requests that carry a caller to check; the rest act on an already checked handle.
CHECKED = frozenset({fp.LOOKUP, fp.GETATTR, fp.SETATTR, fp.READLINK, fp.SYMLINK, fp.MKNOD,
                     fp.MKDIR, fp.UNLINK, fp.RMDIR, fp.RENAME, fp.RENAME2, fp.LINK, fp.OPEN,
                     fp.CREATE, fp.OPENDIR, fp.STATFS, fp.SETXATTR, fp.GETXATTR,
                     fp.LISTXATTR, fp.REMOVEXATTR, fp.ACCESS, fp.TMPFILE})
NO_REPLY = frozenset({fp.FORGET, fp.BATCH_FORGET, fp.INTERRUPT})
#: The open flags the engine's open checks (spawn.access.may_open); the rest are the kernel's.
_OPEN_FLAGS = os.O_ACCMODE | os.O_TRUNC | O_EXEC
# A handle names its inode (low 48 bits), so that the next server of a mount (after a daemon
# restart) serves handles it never gave out: a serial keeps handles apart, and flags say
# what the handle is for.
_INO_BITS = (1 << 48) - 1
_FH_APPEND = 1 << 61
_FH_DIR = 1 << 62


@dataclass(slots=True)
class _File:
    ino: int
    append: bool


@dataclass(slots=True)
class _Dir:
    ino: int
    entries: list[tuple[bytes, Attr]] = field(default_factory=list)


@dataclass
class InitParams:
    """What INIT negotiated; handed to the next server of the same mount."""

    minor: int
    flags: int

    def as_dict(self) -> dict[str, int]:
        return {"minor": self.minor, "flags": self.flags}


class FuseChannel:
    """One mounted channel of a spawn. Called on the host thread only."""

    def __init__(self, host: SpawnHost, fd: int, *, mountpoint: str = "",
                 uid: int = 0, timeout: float = TIMEOUT, init: dict[str, int] | None = None,
                 on_init: Callable[[InitParams], None] | None = None,
                 on_end: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.fd = fd
        self.uid = uid  # who mounted it (for grid spawns)
        self.cred: Cred = ROOT_CRED  # the caller of the request being handled
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.on_init = on_init
        self.on_end = on_end
        self.init = InitParams(init["minor"], init["flags"]) if init else None
        self.closed = False
        self._buf = bytearray(BUFSIZE)
        self._view = memoryview(self._buf)
        self._fh = itertools.count(1)
        self._files: dict[int, _File] = {}
        self._dirs: dict[int, _Dir] = {}
        self._cached: dict[int, int] = {}  # ino -> ctime_ns when the kernel last opened it
        self._parents: dict[int, int] = {ROOT: ROOT}
        self.opened: dict[int, int] = {}  # ino -> handles, released when the channel ends
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    # -- the loop's side ---------------------------------------------------------------------

    def resend(self) -> None:
        """A new server takes over a live mount: have the kernel send again the requests the
        last one read and never answered (Linux 6.9+; older kernels leave them waiting)."""
        try:
            os.write(self.fd, fp.notify(fp.NOTIFY_RESEND, b""))
        except OSError as e:
            log.info("mount %s: the kernel cannot resend lost requests (%s)", self.mountpoint, e)

    def readable(self) -> None:
        for _ in range(_BATCH):
            try:
                n = os.readv(self.fd, [self._buf])
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                self.end("unmounted" if e.errno == errno.ENODEV else f"read: {e}")
                return
            if n == 0:
                self.end("unmounted")
                return
            try:
                req = fp.parse(self._view[:n])
            except fp.ProtocolError as e:
                log.error("mount %s: %s", self.mountpoint, e)
                continue
            self._handle(req)

    def end(self, why: str) -> None:
        """The channel is done (unmounted, or its spawn is going away)."""
        if self.closed:
            return
        self.closed = True
        for ino, n in self.opened.items():
            for _ in range(n):
                try:
                    self.host.engine.release(ROOT_CRED, ino)
                except Exception:
                    log.exception("mount %s: releasing inode %d", self.mountpoint, ino)
        self.opened.clear()
        self.host.channel_ended(self)
        try:
            os.close(self.fd)
        except OSError:
            pass
        if self.on_end is not None:
            self.on_end(why)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            os.write(self.fd, data)
        except OSError as e:
            # ENOENT: the request was interrupted and is gone; nothing to answer.
            if e.errno not in (errno.ENOENT, errno.EINTR):
                log.warning("mount %s: reply: %s", self.mountpoint, e)

    def _handle(self, req: fp.Request) -> None:
        op = req.opcode
        if op in NO_REPLY:
            return
        self.cred = Cred.of_process(req.uid, req.gid, req.pid)
        if op in CHECKED and not self.host.admits(self.cred):
            self.write(fp.reply_error(req.unique, errno.EACCES))
            return
        handler = _HANDLERS.get(op)
        if handler is None:
            self.write(fp.reply_error(req.unique, errno.ENOSYS))
            return
        try:
            handler(self, req)
        except OSError as e:
            self.write(fp.reply_error(req.unique, e.errno or errno.EIO))
        except fp.ProtocolError as e:
            log.error("mount %s: %s: %s", self.mountpoint, fp.NAMES.get(op, op), e)
            self.write(fp.reply_error(req.unique, errno.EINVAL))
        except StoreError as e:  # a block missing or damaged: EIO, and the log says which
            log.error("mount %s: %s of inode %d: %s: %s", self.mountpoint, fp.NAMES.get(op, op),
                      req.nodeid, type(e).__name__, e)
            self.write(fp.reply_error(req.unique, errno.EIO))
        except Exception:
            log.exception("mount %s: %s failed", self.mountpoint, fp.NAMES.get(op, op))
            self.write(fp.reply_error(req.unique, errno.EIO))

    # -- helpers -----------------------------------------------------------------------------

    def _call(self, req: fp.Request, op: str, *args: Any, **kw: Any) -> tuple[Any, Callable[[bytes], None]]:
        """Run engine operation *op*; return its value and the function that answers the
        request (once other clients of the spawn have forgotten what it changed)."""
        value, items = self.host.engine_call(op, self.cred, list(args), kw, self)
        unique = req.unique

        def answer(body: bytes) -> None:
            self.host.announce(items, self, lambda: self.write(fp.reply(unique, body)))

        return value, answer

    def _attr(self, a: Attr) -> bytes:
        return fp.attr(a.ino, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.blocks,
                       a.atime_ns, a.mtime_ns, a.ctime_ns, BLKSIZE)

    def _entry(self, a: Attr) -> bytes:
        return fp.entry_out(a.ino, self._attr(a), 0.0 if a.ino == ROOT else self.timeout)

    def _note_parent(self, ino: int, parent: int) -> None:
        if len(self._parents) >= _CACHED_MAX:
            self._parents = {ROOT: ROOT}
        self._parents[ino] = parent

    def _count(self, ino: int, delta: int) -> None:
        n = self.opened.get(ino, 0) + delta
        if n > 0:
            self.opened[ino] = n
        else:
            self.opened.pop(ino, None)

    def _handle_for(self, ino: int, flags: int = 0) -> int:
        serial = next(self._fh) & 0x1FFF
        return (ino & _INO_BITS) | serial << 48 | flags if ino <= _INO_BITS else next(self._fh) << 48 | flags

    def _file(self, fh: int) -> _File:
        """The open file behind *fh*; one this server never gave out (its predecessor did,
        before a restart) is counted open again, as the kernel still holds it."""
        f = self._files.get(fh)
        if f is None:
            ino = fh & _INO_BITS
            if fh & _FH_DIR or not ino:
                raise OSError(errno.EBADF, "no such handle")
            self.host.engine_call("open", ROOT_CRED, [ino], {}, self)  # the kernel checked it
            f = self._files[fh] = _File(ino, bool(fh & _FH_APPEND))
            self._count(ino, 1)
        return f

    def _open_out(self, a: Attr, flags: int) -> bytes:
        append = bool(flags & os.O_APPEND)
        fh = self._handle_for(a.ino, _FH_APPEND if append else 0)
        self._files[fh] = _File(a.ino, append)
        self._count(a.ino, 1)
        keep = self._cached.get(a.ino) == a.ctime_ns
        if len(self._cached) >= _CACHED_MAX:
            self._cached.clear()
        self._cached[a.ino] = a.ctime_ns
        # O_APPEND handles write around the page cache: the engine appends at the real end.
        oflags = (fp.FOPEN_KEEP_CACHE if keep and not append else 0) | (fp.FOPEN_DIRECT_IO if append else 0)
        return fp.OPEN_OUT.pack(fh, oflags, 0)

    # -- handlers ------------------------------------------------------------------------------

    def h_init(self, req: fp.Request) -> None:
        major, minor, readahead, flags = fp.INIT_IN.unpack_from(req.body)
        if major != fp.KERNEL_MAJOR:
            self.write(fp.reply_error(req.unique, errno.EPROTO))
            return
        minor = min(minor, fp.KERNEL_MINOR)
        want = WANT & flags
        self.init = InitParams(minor, want)
        body = fp.INIT_OUT.pack(fp.KERNEL_MAJOR, minor, min(readahead, MAX_READAHEAD), want,
                                64, 48, MAX_WRITE, 1, MAX_WRITE // 4096, 0, 0, 0)
        self.write(fp.reply(req.unique, body))
        if self.on_init is not None:
            self.on_init(self.init)

    def h_destroy(self, req: fp.Request) -> None:
        self.write(fp.reply(req.unique))

    def h_lookup(self, req: fp.Request) -> None:
        name, _ = fp.cstr(req.body)
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        if name == b".":
            a, answer = self._call(req, "getattr", req.nodeid)
        else:
            a, answer = self._call(req, "lookup", req.nodeid, name)
        if stat.S_ISDIR(a.mode):
            self._note_parent(a.ino, req.nodeid)
        answer(self._entry(a))

    def h_getattr(self, req: fp.Request) -> None:
        a, answer = self._call(req, "getattr", req.nodeid)
        answer(fp.attr_out(self._attr(a), 0.0 if a.ino == ROOT else self.timeout))

    def h_setattr(self, req: fp.Request) -> None:
        (valid, _, _fh, size, _lo, atime, mtime, _ctime, atimens, mtimens, _ctimens, mode, _,
         uid, gid, _) = fp.SETATTR_IN.unpack_from(req.body)
        kw: dict[str, Any] = {}
        if valid & fp.FATTR_SIZE:
            kw["size"] = size
        if valid & fp.FATTR_MODE:
            kw["mode"] = mode
        if valid & fp.FATTR_UID:
            kw["uid"] = uid
        if valid & fp.FATTR_GID:
            kw["gid"] = gid
        if valid & fp.FATTR_ATIME:
            kw["atime_ns"] = NOW if valid & fp.FATTR_ATIME_NOW else _ns(atime, atimens)
        if valid & fp.FATTR_MTIME:
            kw["mtime_ns"] = NOW if valid & fp.FATTR_MTIME_NOW else _ns(mtime, mtimens)
        if valid & fp.FATTR_FH:
            kw["handle"] = True  # ftruncate: the handle's open was checked
        if not valid & (fp.FATTR_MODE | fp.FATTR_UID | fp.FATTR_GID | fp.FATTR_SIZE
                        | fp.FATTR_ATIME | fp.FATTR_MTIME):
            # With HANDLE_KILLPRIV_V2 the kernel leaves dropping setuid and setgid to us, and
            # sends a setattr of nothing else for chown(f, -1, -1) and before a non-root
            # write (file_remove_privs): both drop them (spawn.access.setattr_changes)
            kw["chown"] = True
        a, answer = self._call(req, "setattr", req.nodeid, **kw)
        answer(fp.attr_out(self._attr(a), 0.0 if a.ino == ROOT else self.timeout))

    def h_readlink(self, req: fp.Request) -> None:
        target, answer = self._call(req, "readlink", req.nodeid)
        answer(target)

    def _made(self, req: fp.Request, a: Attr, answer: Callable[[bytes], None]) -> None:
        if stat.S_ISDIR(a.mode):
            self._note_parent(a.ino, req.nodeid)
        answer(self._entry(a))

    def h_mknod(self, req: fp.Request) -> None:
        mode, rdev, _umask, _ = fp.MKNOD_IN.unpack_from(req.body)
        name, _ = fp.cstr(req.body, fp.MKNOD_IN.size)
        a, answer = self._call(req, "mknod", req.nodeid, name, mode, rdev)
        self._made(req, a, answer)

    def h_mkdir(self, req: fp.Request) -> None:
        mode, _umask = fp.MKDIR_IN.unpack_from(req.body)
        name, _ = fp.cstr(req.body, fp.MKDIR_IN.size)
        a, answer = self._call(req, "mkdir", req.nodeid, name, mode)
        self._made(req, a, answer)

    def h_symlink(self, req: fp.Request) -> None:
        name, pos = fp.cstr(req.body)
        target, _ = fp.cstr(req.body, pos)
        a, answer = self._call(req, "symlink", req.nodeid, name, target)
        self._made(req, a, answer)

    def h_link(self, req: fp.Request) -> None:
        (old,) = fp.LINK_IN.unpack_from(req.body)
        name, _ = fp.cstr(req.body, fp.LINK_IN.size)
        a, answer = self._call(req, "link", old, req.nodeid, name)
        answer(self._entry(a))

    def h_unlink(self, req: fp.Request) -> None:
        name, _ = fp.cstr(req.body)
        _, answer = self._call(req, "unlink", req.nodeid, name)
        answer(b"")

    def h_rmdir(self, req: fp.Request) -> None:
        name, _ = fp.cstr(req.body)
        _, answer = self._call(req, "rmdir", req.nodeid, name)
        answer(b"")

    def h_rename(self, req: fp.Request) -> None:
        (newdir,) = fp.RENAME_IN.unpack_from(req.body)
        self._rename(req, newdir, 0, fp.RENAME_IN.size)

    def h_rename2(self, req: fp.Request) -> None:
        newdir, flags, _ = fp.RENAME2_IN.unpack_from(req.body)
        self._rename(req, newdir, flags, fp.RENAME2_IN.size)

    def _rename(self, req: fp.Request, newdir: int, flags: int, off: int) -> None:
        old, pos = fp.cstr(req.body, off)
        new, _ = fp.cstr(req.body, pos)
        if flags & ~(fp.RENAME_NOREPLACE | fp.RENAME_EXCHANGE | fp.RENAME_WHITEOUT):
            raise OSError(errno.EINVAL, "rename flags")
        kw: dict[str, Any] = {"noreplace": bool(flags & fp.RENAME_NOREPLACE),
                              "exchange": bool(flags & fp.RENAME_EXCHANGE)}
        if flags & fp.RENAME_WHITEOUT:
            kw["whiteout"] = True
        _, answer = self._call(req, "rename", req.nodeid, old, newdir, new, **kw)
        answer(b"")

    def h_open(self, req: fp.Request) -> None:
        flags, _open_flags = fp.OPEN_IN.unpack_from(req.body)
        a, answer = self._call(req, "open", req.nodeid, flags & _OPEN_FLAGS)
        answer(self._open_out(a, flags))

    def h_create(self, req: fp.Request) -> None:
        flags, mode, _umask, _ = fp.CREATE_IN.unpack_from(req.body)
        name, _ = fp.cstr(req.body, fp.CREATE_IN.size)
        try:
            a, answer = self._call(req, "create", req.nodeid, name, mode, open=True)
        except OSError as e:
            # Another client of the spawn may have made the name since the kernel's own
            # lookup: without O_EXCL that is an ordinary open of the file now there.
            if e.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            found = self.host.engine.lookup(self.cred, req.nodeid, name)
            if stat.S_ISDIR(found.mode):
                raise OSError(errno.EISDIR, "a directory") from None
            a, answer = self._call(req, "open", found.ino, flags & _OPEN_FLAGS)
        answer(self._entry(a) + self._open_out(a, flags))

    def h_read(self, req: fp.Request) -> None:
        fh, off, size, *_ = fp.READ_IN.unpack_from(req.body)
        f = self._file(fh)
        data, answer = self._call(req, "read", f.ino, off, size)
        answer(data)

    def h_write(self, req: fp.Request) -> None:
        fh, off, size, _wflags, *_ = fp.WRITE_IN.unpack_from(req.body)
        f = self._file(fh)
        data = bytes(req.body[fp.WRITE_IN.size : fp.WRITE_IN.size + size])
        n, answer = self._call(req, "write", f.ino, off, data, append=f.append)
        answer(fp.WRITE_OUT.pack(n, 0))

    def h_flush(self, req: fp.Request) -> None:
        """close(2) of one descriptor: nothing is buffered here. ENOSYS tells the kernel to
        stop sending FLUSH at all, so a close never waits for this server (a process that
        closes its descriptors while no daemon serves the mount, say while forking the
        daemon's restart, would otherwise wait for the daemon it is starting)."""
        self.write(fp.reply_error(req.unique, errno.ENOSYS))

    def h_release(self, req: fp.Request) -> None:
        fh = fp.RELEASE_IN.unpack_from(req.body)[0]
        f = self._files.pop(fh, None)
        if f is not None:  # (a handle from before a restart was never counted here)
            self._count(f.ino, -1)
            self.host.engine_call("release", self.cred, [f.ino], {}, self)
        self.write(fp.reply(req.unique))

    def h_fsync(self, req: fp.Request) -> None:
        _, answer = self._call(req, "fsync")
        answer(b"")

    def h_opendir(self, req: fp.Request) -> None:
        """Snapshot the listing, so that offsets stay valid while the directory changes:
        no entry is skipped or repeated within one pass (readdir's rule)."""
        entries, answer = self._call(req, "readdir", req.nodeid)
        for _name, a in entries:
            if stat.S_ISDIR(a.mode):
                self._note_parent(a.ino, req.nodeid)
        fh = self._handle_for(req.nodeid, _FH_DIR)
        self._dirs[fh] = _Dir(req.nodeid, entries)
        answer(fp.OPEN_OUT.pack(fh, 0, 0))

    def _listing(self, req: fp.Request, plus: bool) -> None:
        """``.`` and ``..`` first (offsets 1 and 2), then the snapshot from opendir."""
        fh, off, size, *_ = fp.READ_IN.unpack_from(req.body)
        d = self._dirs.get(fh)
        if d is None:  # opened before a restart: list it afresh
            if not fh & _FH_DIR or not fh & _INO_BITS:
                raise OSError(errno.EBADF, "no such handle")
            d = self._dirs[fh] = _Dir(fh & _INO_BITS, self.host.engine.readdir(ROOT_CRED, fh & _INO_BITS))
        eng = self.host.engine
        out: list[bytes] = []
        used = 0
        items: list[tuple[bytes, Attr | None, int]] = []
        if off < 2:
            here = eng.getattr(ROOT_CRED, d.ino)
            up = self._parents.get(d.ino, d.ino)
            try:
                parent = here if up == d.ino else eng.getattr(ROOT_CRED, up)
            except OSError:
                parent = here
            items += [(b".", here, 1), (b"..", parent, 2)][off:]
        items += [(n, a, i + 3) for i, (n, a) in enumerate(d.entries[max(0, off - 2):], start=max(0, off - 2))]
        for name, a, nxt in items:
            assert a is not None
            dtype = stat.S_IFMT(a.mode) >> 12
            if plus:
                rec = fp.direntplus(self._entry(a), a.ino, nxt, name, dtype)
            else:
                rec = fp.dirent(a.ino, nxt, name, dtype)
            if used + len(rec) > size:
                break
            out.append(rec)
            used += len(rec)
        self.write(fp.reply(req.unique, b"".join(out)))

    def h_readdir(self, req: fp.Request) -> None:
        self._listing(req, plus=False)

    def h_readdirplus(self, req: fp.Request) -> None:
        self._listing(req, plus=True)

    def h_releasedir(self, req: fp.Request) -> None:
        self._dirs.pop(fp.RELEASE_IN.unpack_from(req.body)[0], None)
        self.write(fp.reply(req.unique))

    def h_fsyncdir(self, req: fp.Request) -> None:
        self.h_fsync(req)

    def h_statfs(self, req: fp.Request) -> None:
        """The space of the disk that holds the spawn's changes; inode numbers are 64-bit
        and never run out."""
        (total, free, avail), answer = self._call(req, "statfs")
        files = 1 << 32
        answer(fp.STATFS_OUT.pack(total // 4096, free // 4096, avail // 4096, files, files - 1,
                                  4096, NAME_MAX, 4096))

    def h_setxattr(self, req: fp.Request) -> None:
        size, flags = fp.SETXATTR_IN.unpack_from(req.body)
        name, pos = fp.cstr(req.body, fp.SETXATTR_IN.size)
        value = bytes(req.body[pos : pos + size])
        _, answer = self._call(req, "setxattr", req.nodeid, name, value,
                               create=bool(flags & os.XATTR_CREATE),
                               replace=bool(flags & os.XATTR_REPLACE))
        answer(b"")

    def h_getxattr(self, req: fp.Request) -> None:
        size, _ = fp.GETXATTR_IN.unpack_from(req.body)
        name, _ = fp.cstr(req.body, fp.GETXATTR_IN.size)
        value, answer = self._call(req, "getxattr", req.nodeid, name)
        self._sized(value, size, answer)

    def h_listxattr(self, req: fp.Request) -> None:
        size, _ = fp.GETXATTR_IN.unpack_from(req.body)
        names, answer = self._call(req, "listxattr", req.nodeid)
        self._sized(b"".join(n + b"\0" for n in names), size, answer)

    @staticmethod
    def _sized(value: bytes, size: int, answer: Callable[[bytes], None]) -> None:
        """xattr replies: the size alone when asked for it (size 0), else the bytes."""
        if size == 0:
            answer(fp.GETXATTR_OUT.pack(len(value), 0))
        elif len(value) > size:
            raise OSError(errno.ERANGE, "buffer too small")
        else:
            answer(value)

    def h_removexattr(self, req: fp.Request) -> None:
        name, _ = fp.cstr(req.body)
        _, answer = self._call(req, "removexattr", req.nodeid, name)
        answer(b"")

    def h_fallocate(self, req: fp.Request) -> None:
        fh, off, length, mode, _ = fp.FALLOCATE_IN.unpack_from(req.body)
        f = self._file(fh)
        _, answer = self._call(req, "fallocate", f.ino, off, length, mode)
        answer(b"")


def _ns(sec: int, nsec: int) -> int:
    if sec >= 1 << 63:
        sec -= 1 << 64
    return sec * 1_000_000_000 + nsec


_HANDLERS: dict[int, Callable[[FuseChannel, fp.Request], None]] = {
    code: getattr(FuseChannel, "h_" + name.lower())
    for code, name in fp.NAMES.items() if hasattr(FuseChannel, "h_" + name.lower())
}


def inval_notices(items: list[list[Any]]) -> list[bytes]:
    """The kernel notices for what another client changed (spawn.vfsrpc.touched):
    ``["i", ino]`` drops an inode's attributes and cached pages, ``["e", parent, name]`` a
    cached name or its absence."""
    out = []
    for item in items:
        if item[0] == "i":
            out.append(fp.notify(fp.NOTIFY_INVAL_INODE, fp.NOTIFY_INVAL_INODE_OUT.pack(item[1], 0, 0)))
        elif item[0] == "e":
            name = bytes(item[2])
            out.append(fp.notify(fp.NOTIFY_INVAL_ENTRY,
                                 fp.NOTIFY_INVAL_ENTRY_OUT.pack(item[1], len(name), 0) + name + b"\0"))
    return out
