"""The FUSE exporter: a thin pyfuse3 adapter over one spawn's engine.

The engine (spawn.engine) already speaks in inode numbers, as FUSE does, so every handler
here is a translation: arguments in, one engine call, attributes or an errno out. Filesystem
semantics live in the engine, never here, so that 9P and SFTP get the same fixes.

Three decisions shape this module:

* **One owner thread.** The engine is synchronous and not thread-safe. Every call goes
  through a link (spawn.vfslink): in-process, one single-thread executor that every
  exporter of the spawn shares (invariant 8); from a mount process, the node daemon, which
  runs it on that same executor. Requests stay in order of arrival and the asyncio loop
  never blocks on LMDB or on a block read.

* **Kernel caching, kept coherent by the daemon.** Other clients of the spawn (another
  mount, 9P, SFTP) change it through the engine, behind this kernel's back. A mount attached
  to the daemon therefore caches entries and attributes for a while (fuse_main's
  REMOTE_TIMEOUT) and has the daemon tell it what other clients change, before their change
  returns (``invalidate``; docs/daemon.md): changes are seen at once, and a cached ``stat``
  costs microseconds instead of a round trip. Without a daemon (a LocalLink), timeouts are
  0: nothing would tell the kernel. File *contents* are cached in the page cache
  (``keep_cache``) when the file has not changed since the kernel last opened it: its ctime
  is the change token, and the kernel drops cached pages itself when a file's mtime or size
  moves (auto_inval_data).

* **Privacy in one place.** Every handler that carries a request context goes through
  ``_handler``, which refuses (EACCES) a caller whose uid is neither the spawn's owner nor
  root, before anything else happens (invariant 9). Handlers without a context (read,
  write, release, readdir...) act on a handle that a checked open returned (a descriptor the
  owner hands to another process works there, as descriptors do). The mount uses
  ``allow_other`` so that root and the owner can both reach it, and ``default_permissions``
  so the kernel applies the usual mode checks inside the tree.

Errors: OSError from the engine becomes ``FUSEError(errno)``; anything else is logged and
becomes EIO, because an exception escaping a pyfuse3 handler would stop the whole mount.

pyfuse3 keeps one FUSE session per process: ``serve`` mounts one spawn per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import logging
import os
import re
import stat
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import pyfuse3.asyncio

from spawn.engine import Attr, Engine
from spawn.fsformat import NAME_MAX
from spawn.vfslink import EngineLink, LocalLink

log = logging.getLogger(__name__)

MOUNT_OPTIONS = ("fsname=grid", "subtype=grid", "default_permissions", "allow_other")
TIMEOUT = 0.0  # entry and attribute timeouts, seconds: see the module docstring
READAHEAD_KB = 1024  # see set_readahead
BLKSIZE = 4096  # st_blksize, as ext4 says: programs size their buffers by it
_CACHED_MAX = 1 << 16
RENAME_WHITEOUT = 1 << 2  # renameat2's flag, which pyfuse3 does not name
_RENAME_KNOWN = pyfuse3.RENAME_NOREPLACE | pyfuse3.RENAME_EXCHANGE | RENAME_WHITEOUT
CAPS = b"security.capability"

#: Inodes known to have no security.capability attribute. The kernel asks for it before
#: every write (to drop file capabilities, as it drops setuid), which would cost a round
#: trip to the engine per write; the answer is kept here until the inode changes (an
#: invalidation from the daemon, or a setxattr/removexattr through this mount). One FUSE
#: session per process, so one set per process.
_NO_CAPS: set[int] = set()

T = TypeVar("T")


def to_entry(a: Attr, timeout: float = TIMEOUT) -> pyfuse3.EntryAttributes:
    """An engine Attr as pyfuse3 wants it. Inode numbers are never reused within a spawn's
    life (invariant 7), so the generation is always 0."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino
    e.generation = 0
    e.entry_timeout = timeout
    e.attr_timeout = timeout
    e.st_mode = a.mode
    e.st_nlink = a.nlink
    e.st_uid = a.uid
    e.st_gid = a.gid
    e.st_rdev = a.rdev
    e.st_size = a.size
    e.st_blksize = BLKSIZE
    e.st_blocks = a.blocks
    e.st_atime_ns = a.atime_ns
    e.st_mtime_ns = a.mtime_ns
    e.st_ctime_ns = a.ctime_ns
    return e


@dataclass(slots=True)
class _File:
    ino: int
    append: bool  # opened with O_APPEND: every write goes at the end, atomically


@dataclass(slots=True)
class _Dir:
    ino: int
    entries: list[tuple[bytes, Attr]] = field(default_factory=list)  # snapshot at opendir


def _brief(arg: object) -> str:
    """An argument for the debug log: a written buffer by its length only."""
    if isinstance(arg, bytes) and len(arg) > 64:
        return f"<{len(arg)} bytes>"
    return repr(arg)


def _handler(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a handler: the privacy check (when the request has a context) and the one place
    where errors become errnos."""

    @functools.wraps(fn)
    async def wrapper(self: GridFS, *args: Any) -> T:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s(%s)", fn.__name__, ", ".join(map(_brief, args)))
        if args and isinstance(args[-1], pyfuse3.RequestContext):
            uid = args[-1].uid
            if uid != self.owner_uid and uid != 0:
                raise pyfuse3.FUSEError(errno.EACCES)
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("FUSE %s(%s) failed", fn.__name__, ", ".join(map(_brief, args)))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class GridFS(pyfuse3.Operations):
    """pyfuse3 operations over one spawn's engine, reached through *link* (spawn.vfslink).
    See the module docstring. *owner_uid* is the spawn's owner: only it and root may use the
    mount."""

    supports_dot_lookup = False  # no NFS export: the engine keeps no parent pointers

    def __init__(self, link: EngineLink, owner_uid: int, *, timeout: float = TIMEOUT) -> None:
        super().__init__()
        self.vfs = link  # not self.link: that is the link(2) handler
        self.owner_uid = owner_uid
        self.timeout = timeout
        self._fh = itertools.count(1)
        self._files: dict[int, _File] = {}
        self._dirs: dict[int, _Dir] = {}
        self._cached: dict[int, int] = {}  # ino -> ctime_ns when the kernel last opened it
        self._parents: dict[int, int] = {pyfuse3.ROOT_INODE: pyfuse3.ROOT_INODE}  # dir -> parent, for ".."
        self.readahead: tuple[str, int] | None = None  # set at the first open: see set_readahead

    async def _call(self, op: str, *args: Any, **kw: Any) -> Any:
        """One engine operation, on the engine's owner thread (wherever that is)."""
        return await self.vfs.call(op, *args, **kw)

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        return to_entry(a, self.timeout)

    # -- names ---------------------------------------------------------------------------

    @_handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._entry(await self._call("getattr", parent_inode))
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        a = await self._call("lookup", parent_inode, name)
        if stat.S_ISDIR(a.mode):
            self._note_parent(a.ino, parent_inode)
        return self._entry(a)

    def _note_parent(self, ino: int, parent: int) -> None:
        if len(self._parents) >= _CACHED_MAX:
            self._parents = {pyfuse3.ROOT_INODE: pyfuse3.ROOT_INODE}
        self._parents[ino] = parent

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to do: inode numbers are persistent and the engine keeps no lookup counts."""

    @_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call("getattr", inode))

    @_handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """One engine call for all fields, so a chown that clears setuid is one change.
        pyfuse3 has already put the current time in *attr* for utimensat's UTIME_NOW."""
        kw: dict[str, int] = {}
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        return self._entry(await self._call("setattr", inode, **kw))

    @_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._call("readlink", inode)

    @_handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call("mknod", parent_inode, name, mode, rdev, ctx.uid, ctx.gid))

    @_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        a = await self._call("mkdir", parent_inode, name, mode, ctx.uid, ctx.gid)
        self._note_parent(a.ino, parent_inode)
        return self._entry(a)

    @_handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call("symlink", parent_inode, name, target, ctx.uid, ctx.gid))

    @_handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call("link", inode, new_parent_inode, new_name))

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call("unlink", parent_inode, name)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call("rmdir", parent_inode, name)

    @_handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & ~_RENAME_KNOWN:
            raise pyfuse3.FUSEError(errno.EINVAL)
        kw: dict[str, Any] = {"noreplace": bool(flags & pyfuse3.RENAME_NOREPLACE),
                              "exchange": bool(flags & pyfuse3.RENAME_EXCHANGE)}
        if flags & RENAME_WHITEOUT:  # the kernel has checked CAP_MKNOD
            kw["whiteout"] = (ctx.uid, ctx.gid)
        await self._call("rename", parent_inode_old, name_old, parent_inode_new, name_new, **kw)

    # -- files ---------------------------------------------------------------------------

    def _file_info(self, a: Attr, flags: int) -> pyfuse3.FileInfo:
        """A handle for an opened inode (the engine has counted the open).

        O_APPEND files get direct I/O: the kernel would otherwise put the bytes in its page
        cache at the end *it* believes the file has, while the engine appends at the real end.
        """
        if self.readahead is not None:
            set_readahead(*self.readahead)  # now: the kernel resets it when the mount starts
            self.readahead = None
        fh = next(self._fh)
        append = bool(flags & os.O_APPEND)
        self._files[fh] = _File(a.ino, append)
        keep = self._cached.get(a.ino) == a.ctime_ns
        if len(self._cached) >= _CACHED_MAX:
            self._cached.clear()  # forgetting only costs a re-read
        self._cached[a.ino] = a.ctime_ns
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep and not append, direct_io=append)

    @_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """libfuse 3 asks the kernel for atomic O_TRUNC: the truncation comes here, in the
        open flags (not as a setattr first), and happens in the same job as the open."""

        a = await self._call("open", inode, truncate=bool(flags & os.O_TRUNC))
        return self._file_info(a, flags)

    @_handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        try:
            a = await self._call("create", parent_inode, name, mode, ctx.uid, ctx.gid, open=True)
        except OSError as e:
            # The kernel asks to create after its own lookup found nothing; another client of
            # the spawn (a second mount) may have made the name since. Without O_EXCL that is
            # an ordinary open of the file now there, as on a local filesystem.
            if e.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            a = await self._call("lookup", parent_inode, name)
            if stat.S_ISDIR(a.mode):
                raise pyfuse3.FUSEError(errno.EISDIR) from None
            a = await self._call("open", a.ino, truncate=bool(flags & os.O_TRUNC))
        return self._file_info(a, flags), self._entry(a)

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._call("read", self._files[fh].ino, off, size)

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self._files[fh]
        return await self._call("write", f.ino, off, buf, append=f.append)

    @_handler
    async def flush(self, fh: int) -> None:
        """close(2) of one descriptor: nothing is buffered here, so nothing to do."""

    @_handler
    async def release(self, fh: int) -> None:
        f = self._files.pop(fh)
        await self._call("release", f.ino)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._call("fsync")

    # -- directories ---------------------------------------------------------------------

    @_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """Snapshot the listing, so that offsets stay valid while the directory changes:
        no entry is skipped or repeated within one pass (readdir's rule)."""
        entries = await self._call("readdir", inode)
        for _name, a in entries:
            if stat.S_ISDIR(a.mode):
                self._note_parent(a.ino, inode)
        fh = next(self._fh)
        self._dirs[fh] = _Dir(inode, entries)
        return fh

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """``.`` and ``..`` first (offsets 1 and 2), then the snapshot. The kernel makes no
        dentries of the two dot entries; their inode numbers are what getdents shows."""
        d = self._dirs[fh]
        if start_id < 2:
            here = await self._call("getattr", d.ino)
            up = self._parents.get(d.ino, d.ino)
            dots = [(b".", here), (b"..", here if up == d.ino else await self._parent_attr(up, here))]
            for i in range(start_id, 2):
                if not pyfuse3.readdir_reply(token, dots[i][0], self._entry(dots[i][1]), i + 1):
                    return
            start_id = 2
        entries = d.entries
        for i in range(start_id - 2, len(entries)):
            name, a = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(a), i + 3):
                break

    async def _parent_attr(self, ino: int, fallback: Attr) -> Attr:
        try:
            return await self._call("getattr", ino)
        except OSError:
            return fallback

    @_handler
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._call("fsync")

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """The space of the disk that holds the spawn's changes (synthetic without one);
        inode numbers are 64-bit and never run out."""
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        total, free, avail = await self._call("statfs")
        s.f_blocks, s.f_bfree, s.f_bavail = total // 4096, free // 4096, avail // 4096
        s.f_files = 1 << 32
        s.f_ffree = s.f_favail = (1 << 32) - 1
        s.f_namemax = NAME_MAX
        return s

    # -- extended attributes ---------------------------------------------------------------
    # pyfuse3 implements XATTR_CREATE / XATTR_REPLACE itself with a getxattr first; the
    # namespace rules (user.* only on files and directories, trusted.* for root) are the VFS's.

    @_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        _NO_CAPS.discard(inode)
        await self._call("setxattr", inode, name, value)

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name == CAPS and inode in _NO_CAPS:
            raise pyfuse3.FUSEError(errno.ENODATA)
        try:
            return await self._call("getxattr", inode, name)
        except OSError as e:
            if name == CAPS and e.errno == errno.ENODATA:
                if len(_NO_CAPS) >= _CACHED_MAX:
                    _NO_CAPS.clear()
                _NO_CAPS.add(inode)
            raise

    @_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self._call("listxattr", inode)

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _NO_CAPS.discard(inode)
        await self._call("removexattr", inode, name)


async def invalidate(items: Sequence[Sequence[Any]]) -> None:
    """Make the kernel forget what another client of the spawn changed (the daemon names
    it: spawn.vfsrpc.touched), so that a mount with non-zero cache timeouts stays coherent.
    ``["i", ino]`` drops an inode's attributes and cached pages, ``["e", parent, name]`` a
    cached name or negative entry. The kernel calls may block on locks held by requests in
    progress, so they run on a thread, never in a request handler (pyfuse3's rule);
    ENOENT means the kernel had nothing cached, which is fine."""

    for item in items:
        if item[0] == "i":
            _NO_CAPS.discard(item[1])

    def run() -> None:
        for item in items:
            try:
                if item[0] == "i":
                    pyfuse3.invalidate_inode(item[1], attr_only=False)
                elif item[0] == "e":
                    pyfuse3.invalidate_entry(item[1], item[2])
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.debug("invalidate %s: %s", item, e)

    await asyncio.to_thread(run)


def _mount_device(mountpoint: str | os.PathLike[str]) -> str | None:
    """'major:minor' of the mount at *mountpoint*, from /proc/self/mountinfo: a stat of the
    mountpoint would ask this very process, whose FUSE loop may not be running yet."""
    want = os.path.abspath(mountpoint).encode()
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            path = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
            if path == want:
                found = fields[2].decode()  # the last one mounted there wins
    return found


def set_readahead(mountpoint: str | os.PathLike[str], kb: int) -> bool:
    """Raise the mount's read-ahead window (best effort; root only). FUSE mounts start with
    the kernel's 128 KiB: sequential reads then arrive as 128 KiB requests, and each request
    costs a round trip through the event loop and the owner thread. With 1 MiB the kernel
    sends 1 MiB requests (libfuse negotiates up to 256 pages per request), which measured
    ~1.6x faster on a cold 200 MB read. Whether it took."""
    dev = _mount_device(mountpoint)
    try:
        if dev is None:
            raise OSError(errno.ENOENT, "not in /proc/self/mountinfo")
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as e:
        log.debug("read-ahead of %s left as it is: %s", mountpoint, e)
        return False
    return True


async def serve(link: EngineLink | Engine, mountpoint: str | os.PathLike[str], owner_uid: int, *,
                ready: Callable[[], object] | None = None, executor: Executor | None = None,
                options: Sequence[str] = MOUNT_OPTIONS, readahead_kb: int = READAHEAD_KB,
                timeout: float = TIMEOUT) -> None:
    """Mount a spawn at *mountpoint* and serve it until unmounted or cancelled.

    *link* reaches the engine (spawn.vfslink); an Engine is wrapped in a LocalLink on
    *executor* (the engine's owner thread; by default one of its own). *ready* is called
    once the kernel has the mount. Cancelling the task ends the FUSE session first (requests
    in progress finish), then unmounts (lazily, so a process still inside the tree does not
    keep the mount alive). The engine and a given link are the caller's to close. Mounting
    with ``allow_other`` as a user other than root needs ``user_allow_other`` in
    /etc/fuse.conf.
    """
    own = None
    if isinstance(link, Engine):
        link = own = LocalLink(link, executor)
    pyfuse3.asyncio.enable()
    ops = GridFS(link, owner_uid, timeout=timeout)
    if readahead_kb:
        ops.readahead = (os.fspath(mountpoint), readahead_kb)
    pyfuse3.init(ops, os.fspath(mountpoint), set(options))
    others = asyncio.all_tasks()  # tasks that are not pyfuse3's workers
    try:
        if ready is not None:
            ready()
        main = asyncio.ensure_future(pyfuse3.main())
        try:
            await asyncio.shield(main)
        except asyncio.CancelledError:
            # End the session the way an unmount does: the kernel closes the channel and
            # pyfuse3.main() returns. (pyfuse3.terminate() can fail in its asyncio mode when a
            # worker's future was already cancelled, and then the session is never closed.)
            await asyncio.to_thread(
                subprocess.run, ["fusermount3", "-u", "-z", os.fspath(mountpoint)],
                capture_output=True, check=False,
            )
            try:
                await asyncio.wait_for(asyncio.shield(main), 10)
            except TimeoutError:
                with contextlib.suppress(asyncio.InvalidStateError):
                    pyfuse3.terminate()
                await main
            raise
    finally:
        # A worker whose handler still waits on the engine thread would otherwise resume after
        # the session is freed and reply into freed memory (a segfault seen under load).
        workers = asyncio.all_tasks() - others - {asyncio.current_task()}
        if workers:
            await asyncio.wait(workers, timeout=30)
        pyfuse3.close(unmount=True)
        if own is not None:
            own.close()
