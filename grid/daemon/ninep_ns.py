"""A user's namespace over 9P (aname ""): the control tree of DESIGN.md, as an engine link.

The 9P server only ever talks to an :class:`~spawn.vfslink.EngineLink` (one ``call(op, ...)``
per engine operation), so the namespace is one too: :class:`NamespaceLink` answers the
synthetic files itself and hands everything under ``ID/root/`` to that spawn's own link. The
server's fid, walk, flush and lock rules then hold here unchanged.

    /ctl          write "spawn NAME": spawns it; a read returns the new id (of this attach)
    /names        read: the names this user may read, so spawn (ndb.nameaccess)
    /ID/ctl       write "save [NAME]" or "kill"; a read returns the last result
    /ID/status    read: the spawn's status, JSON (as ``grid spawns --json``)
    /ID/err       read: why the last refused command on this spawn failed (this attach)
    /ID/root/     the spawned tree itself

Only the user's own spawns are listed (root sees all), and every call under ``ID/`` asks
the daemon again (``Daemon.live``), so a spawn killed meanwhile is ENOENT at once.

Inode numbers: the server uses them as qid.path, so synthetic files and the files of
several spawns must never share one. A spawn met by this link gets a slot k >= 1 and its
inode i is shown as ``k << 48 | i``; synthetic files live below ``1 << 48``. A spawn inode
that does not fit in 48 bits is EOVERFLOW rather than a silent collision. Slots are per
link (per attach), so qid paths are stable for the attach's life, not across attaches.

Command errors come back as errors of the write, with the daemon's message (9P2000 and .u
clients read the text whole: spawn.ninep.errtext.Explained; .L clients get the errno only).
Every other error here is a filesystem's (ENOENT, ENOTDIR, EACCES ...), and 9P2000 clients
get the bare text that maps back to its errno, as for a spawn's own files.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import json
import os
import stat
import time
from collections.abc import Callable, Hashable
from typing import Any

from grid.daemon.sharedlink import SharedLink
from spawn.attr import Attr
from spawn.cred import Cred
from spawn.engine import ROOT_INO
from spawn.ninep.errtext import Explained
from spawn.ninep.locks import Lock, LockTable
from spawn.ninep.messages import LockType

SHIFT = 48
LOW = (1 << SHIFT) - 1
CTL, NAMES = 2, 3  # synthetic inodes at the top; ROOT_INO (1) is the namespace's root
PER_SPAWN = 16  # slot k's synthetic files: 16k + DIR / SCTL / STATUS
DIR, SCTL, STATUS, ERR = 0, 1, 2, 3
_SPAWN_FILES = {b"ctl": SCTL, b"err": ERR, b"status": STATUS}
MAX_COMMAND = 4096  # a ctl command is one short line


#: The credentials of the call being served (``NamespaceLink.call`` sets them for the task),
#: passed on to the spawn's engine with every operation under ``ID/root/``.
_CALLER: contextvars.ContextVar[Cred] = contextvars.ContextVar("caller")


def _err(code: int, detail: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {detail}")


class NamespaceLink:
    """One attach's view of a user's namespace (see the module docstring)."""

    def __init__(self, daemon: Any, uid: int, gid: int) -> None:
        self.daemon = daemon
        self.uid = uid
        self.gid = gid
        self.t0 = time.time_ns()
        self._slot_of: dict[str, int] = {}
        self._sid_of: dict[int, str] = {}
        self._last: dict[int, bytes] = {}  # synthetic ctl inode -> what a read returns

    # -- inode numbers ------------------------------------------------------------------------

    def _slot(self, sid: str) -> int:
        k = self._slot_of.get(sid)
        if k is None:
            k = len(self._slot_of) + 1
            self._slot_of[sid] = k
            self._sid_of[k] = sid
        return k

    def _sid(self, k: int) -> str:
        try:
            return self._sid_of[k]
        except KeyError:
            raise _err(errno.ENOENT, "stale inode") from None

    def _out(self, k: int, a: Attr) -> Attr:
        """A spawn's Attr with its inode moved into slot *k*."""
        if a.ino > LOW:
            raise _err(errno.EOVERFLOW, f"inode {a.ino} of a spawn does not fit the namespace")
        return Attr((k << SHIFT) | a.ino, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size,
                    a.atime_ns, a.mtime_ns, a.ctime_ns)

    def _attr(self, ino: int, mode: int, size: int = 0) -> Attr:
        nlink = 2 if stat.S_ISDIR(mode) else 1
        return Attr(ino, mode, nlink, self.uid, self.gid, 0, size, self.t0, self.t0, self.t0)

    # -- the daemon ---------------------------------------------------------------------------

    async def _spawns(self) -> list[str]:
        assert self.daemon.spawner is not None
        return sorted((i.id for i in self.daemon.spawner.list(self.uid)), key=_id_order)

    async def _live(self, sid: str) -> Any:
        try:
            return await self.daemon.live(sid, self.uid)
        except (LookupError, OSError, ValueError) as e:
            raise _err(errno.ENOENT, f"no spawn {sid}") from e
        except Exception as e:  # SpawnError and the like: the spawn is not usable
            raise _err(errno.ENOENT, f"spawn {sid}: {e}") from e

    async def _spawn_call(self, k: int, op: str, *args: Any, **kw: Any) -> Any:
        live = await self._live(self._sid(k))
        return await SharedLink(live).call(op, _CALLER.get(), *args, **kw)

    # -- the link -----------------------------------------------------------------------------

    async def call(self, op: str, cred: Cred, *args: Any, **kw: Any) -> Any:
        fn = getattr(self, f"_op_{op}", None)
        if fn is None:
            raise ValueError(f"no engine operation {op!r}")
        token = _CALLER.set(cred)
        try:
            return await fn(*args, **kw)
        finally:
            _CALLER.reset(token)

    def close(self) -> None:
        """Nothing to release: the spawns' links belong to the daemon."""

    async def _synthetic(self, ino: int) -> Attr:
        if ino == ROOT_INO:
            return self._attr(ino, stat.S_IFDIR | 0o500)
        if ino == CTL:
            return self._attr(ino, stat.S_IFREG | 0o600, len(self._last.get(CTL, b"")))
        if ino == NAMES:
            return self._attr(ino, stat.S_IFREG | 0o400)
        k, j = divmod(ino, PER_SPAWN)
        await self._live(self._sid(k))  # gone (killed) means gone
        if j == DIR:
            return self._attr(ino, stat.S_IFDIR | 0o500)
        if j == SCTL:
            return self._attr(ino, stat.S_IFREG | 0o600, len(self._last.get(ino, b"")))
        if j == STATUS:
            return self._attr(ino, stat.S_IFREG | 0o400)
        if j == ERR:
            return self._attr(ino, stat.S_IFREG | 0o400, len(self._last.get(ino, b"")))
        raise _err(errno.ENOENT, "stale inode")

    async def _op_getattr(self, ino: int) -> Attr:
        if ino >> SHIFT:
            return self._out(ino >> SHIFT, await self._spawn_call(ino >> SHIFT, "getattr", ino & LOW))
        return await self._synthetic(ino)

    async def _op_lookup(self, parent: int, name: bytes) -> Attr:
        if parent >> SHIFT:
            k = parent >> SHIFT
            return self._out(k, await self._spawn_call(k, "lookup", parent & LOW, name))
        if parent == ROOT_INO:
            if name == b"ctl":
                return await self._synthetic(CTL)
            if name == b"names":
                return await self._synthetic(NAMES)
            sid = name.decode("ascii", "replace")
            if sid not in await self._spawns():
                raise _err(errno.ENOENT, f"no spawn {sid}")
            return await self._synthetic(self._slot(sid) * PER_SPAWN + DIR)
        k, j = divmod(parent, PER_SPAWN)
        if k and j == DIR:
            if name == b"root":
                return self._out(k, await self._spawn_call(k, "getattr", ROOT_INO))
            if name in _SPAWN_FILES:
                return await self._synthetic(k * PER_SPAWN + _SPAWN_FILES[name])
            raise _err(errno.ENOENT, os.fsdecode(name))
        raise _err(errno.ENOTDIR, "not a directory")

    async def _op_readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        if ino >> SHIFT:
            k = ino >> SHIFT
            return [(n, self._out(k, a)) for n, a in await self._spawn_call(k, "readdir", ino & LOW)]
        if ino == ROOT_INO:
            out = [(b"ctl", await self._synthetic(CTL)), (b"names", await self._synthetic(NAMES))]
            for sid in await self._spawns():
                out.append((sid.encode(), self._attr(self._slot(sid) * PER_SPAWN + DIR,
                                                     stat.S_IFDIR | 0o500)))
            return out
        k, j = divmod(ino, PER_SPAWN)
        if k and j == DIR:
            return [(b"ctl", await self._synthetic(k * PER_SPAWN + SCTL)),
                    (b"err", await self._synthetic(k * PER_SPAWN + ERR)),
                    (b"root", await self._op_lookup(ino, b"root")),
                    (b"status", await self._synthetic(k * PER_SPAWN + STATUS))]
        raise _err(errno.ENOTDIR, "not a directory")

    async def _op_open(self, ino: int, flags: int = os.O_RDONLY) -> Attr:
        if ino >> SHIFT:
            k = ino >> SHIFT
            return self._out(k, await self._spawn_call(k, "open", ino & LOW, flags))
        return await self._synthetic(ino)  # truncating a control file means nothing

    async def _op_release(self, ino: int) -> None:
        if ino >> SHIFT:
            await self._spawn_call(ino >> SHIFT, "release", ino & LOW)

    async def _op_read(self, ino: int, offset: int, size: int) -> bytes:
        if ino >> SHIFT:
            return await self._spawn_call(ino >> SHIFT, "read", ino & LOW, offset, size)
        return (await self._content(ino))[offset:offset + size]

    async def _content(self, ino: int) -> bytes:
        if ino == NAMES:
            names = await self.daemon.control(self.uid, "names")
            return b"".join(r["name"].encode() + b"\n" for r in names)
        if ino == CTL:
            return self._last.get(CTL, b"")
        k, j = divmod(ino, PER_SPAWN)
        if k and j == STATUS:
            st = await self.daemon.control(self.uid, "status", self._sid(k))
            return (json.dumps(st, sort_keys=True) + "\n").encode()
        if k and j in (SCTL, ERR):
            return self._last.get(ino, b"")
        raise _err(errno.EISDIR, "a directory")

    async def _op_write(self, ino: int, offset: int, data: bytes, *, append: bool = False) -> int:
        if ino >> SHIFT:
            return await self._spawn_call(ino >> SHIFT, "write", ino & LOW, offset, data,
                                          append=append)
        if len(data) > MAX_COMMAND:
            raise Explained(errno.EINVAL, f"a command is one line of at most {MAX_COMMAND} bytes")
        try:
            words = str(data, "utf-8").split()  # data may be a view (spawn.ninep.receiver)
        except UnicodeDecodeError:
            raise Explained(errno.EINVAL, "a command is UTF-8 text") from None
        if ino == CTL:
            await self._root_command(words)
        else:
            k, j = divmod(ino, PER_SPAWN)
            if not (k and j == SCTL):
                raise _err(errno.EACCES, "read-only file")
            await self._spawn_command(ino, self._sid(k), words)
        return len(data)

    async def _root_command(self, words: list[str]) -> None:
        if len(words) != 2 or words[0] != "spawn":
            raise Explained(errno.EINVAL, "usage: spawn NAME")
        r = await self._control("spawn", words[1])
        self._last[CTL] = f"{r['id']}\n".encode()

    async def _spawn_command(self, ino: int, sid: str, words: list[str]) -> None:
        try:
            await self._spawn_command1(ino, sid, words)
        except OSError as e:  # kept for ID/err, and the write fails with it
            self._last[ino - SCTL + ERR] = f"{' '.join(words)}: {e.strerror}\n".encode()
            raise

    async def _spawn_command1(self, ino: int, sid: str, words: list[str]) -> None:
        if words and words[0] == "save" and len(words) <= 2:
            r = await self._control("save", sid, *words[1:])
            self._last[ino] = (json.dumps(r, sort_keys=True) + "\n").encode()
        elif words == ["kill"]:
            await self._control("kill", sid)
        else:
            raise Explained(errno.EINVAL, "usage: save [NAME] | kill")

    async def _control(self, op: str, *args: str) -> dict[str, Any]:
        """A daemon control request; its refusal becomes the write's error, message kept."""
        try:
            result: dict[str, Any] = await self.daemon.control(self.uid, op, *args)
            return result
        except Exception as e:
            code, message = _refusal(e)
            raise Explained(code, f"{op}: {message}") from None

    # -- changes: only inside a spawn's root ---------------------------------------------------

    def _inside(self, *inos: int) -> int:
        """The slot every inode is in, or EACCES (the control tree) / EXDEV (two spawns)."""
        slots = {i >> SHIFT for i in inos}
        if 0 in slots:
            raise _err(errno.EACCES, "the control tree is not writable")
        if len(slots) != 1:
            raise _err(errno.EXDEV, "between two spawns")
        return slots.pop()

    async def _change(self, op: str, parent: int, *args: Any, **kw: Any) -> Attr:
        k = self._inside(parent)
        return self._out(k, await self._spawn_call(k, op, parent & LOW, *args, **kw))

    async def _op_create(self, parent: int, *args: Any, **kw: Any) -> Attr:
        return await self._change("create", parent, *args, **kw)

    async def _op_mkdir(self, parent: int, *args: Any, **kw: Any) -> Attr:
        return await self._change("mkdir", parent, *args, **kw)

    async def _op_mknod(self, parent: int, *args: Any, **kw: Any) -> Attr:
        return await self._change("mknod", parent, *args, **kw)

    async def _op_symlink(self, parent: int, *args: Any, **kw: Any) -> Attr:
        return await self._change("symlink", parent, *args, **kw)

    async def _op_setattr(self, ino: int, **kw: Any) -> Attr:
        if not ino >> SHIFT:
            return await self._synthetic(ino)  # O_TRUNC of a ctl file: nothing to do
        return await self._change("setattr", ino, **kw)

    async def _op_readlink(self, ino: int) -> bytes:
        k = self._inside(ino)
        return await self._spawn_call(k, "readlink", ino & LOW)

    async def _op_link(self, ino: int, parent: int, name: bytes) -> Attr:
        k = self._inside(ino, parent)
        return self._out(k, await self._spawn_call(k, "link", ino & LOW, parent & LOW, name))

    async def _op_unlink(self, parent: int, name: bytes) -> None:
        k = self._inside(parent)
        await self._spawn_call(k, "unlink", parent & LOW, name)

    async def _op_rmdir(self, parent: int, name: bytes) -> None:
        k = self._inside(parent)
        await self._spawn_call(k, "rmdir", parent & LOW, name)

    async def _op_rename(self, p1: int, n1: bytes, p2: int, n2: bytes, **kw: Any) -> None:
        k = self._inside(p1, p2)
        await self._spawn_call(k, "rename", p1 & LOW, n1, p2 & LOW, n2, **kw)

    async def _op_getxattr(self, ino: int, name: bytes) -> bytes:
        if not ino >> SHIFT:
            raise _err(errno.ENODATA, "no such attribute")
        return await self._spawn_call(ino >> SHIFT, "getxattr", ino & LOW, name)

    async def _op_listxattr(self, ino: int) -> list[bytes]:
        if not ino >> SHIFT:
            return []
        return await self._spawn_call(ino >> SHIFT, "listxattr", ino & LOW)

    async def _op_setxattr(self, ino: int, *args: Any, **kw: Any) -> None:
        k = self._inside(ino)
        await self._spawn_call(k, "setxattr", ino & LOW, *args, **kw)

    async def _op_removexattr(self, ino: int, *args: Any, **kw: Any) -> None:
        k = self._inside(ino)
        await self._spawn_call(k, "removexattr", ino & LOW, *args, **kw)

    async def _op_fsync(self) -> None:
        """fsync names no file: sync every spawn this attach has touched."""
        for sid in list(self._slot_of):
            try:
                live = await self._live(sid)
            except OSError:
                continue
            await live.link.call("fsync", _CALLER.get())

    async def _op_statfs(self) -> tuple[int, int, int]:
        """statfs names no file either: the disk that holds the node's spawns."""
        v = os.statvfs(self.daemon.home.spawns)
        return v.f_blocks * v.f_frsize, v.f_bfree * v.f_frsize, v.f_bavail * v.f_frsize


def _refusal(e: BaseException) -> tuple[int, str]:
    """The errno and message of a control request's refusal: the daemon's Refused and the
    engine's errors carry an errno; a spawn not found is ENOENT; any other refusal (a bad
    name, a full quota, an unknown score) is EINVAL with its own words."""
    from grid.errors import UserError
    from spawn.spawner import SpawnLimit

    if isinstance(e, SpawnLimit):
        return errno.EDQUOT, str(e)
    if isinstance(e, UserError):
        return errno.EINVAL, f"{e.what}: {e.why}"
    if isinstance(e, OSError) and e.errno:
        return e.errno, e.strerror or str(e)
    if isinstance(e, LookupError):
        return errno.ENOENT, str(e)
    return errno.EINVAL, str(e) or type(e).__name__


def _id_order(sid: str) -> tuple[int, str]:
    """Spawn ids in numeric order when they are numbers."""
    return (int(sid), "") if sid.isdigit() else (1 << 62, sid)


class CtlLink:
    """aname "ctl": diod's synthetic files, so that diod's own tools can be pointed at a
    grid node. ``date`` (``dioddate``: "sec.usec minuteswest.dsttime"), ``zero`` (reads
    return as many zero bytes as asked) and ``null`` (writes vanish): ``diodload`` copies
    zero to null, or with ``-g`` stats null, which makes it a load generator and a
    benchmark of the server itself, without any spawn in the way. Nothing here reveals or
    changes anything but the node's clock reading."""

    FILES = {b"date": 2, b"null": 4, b"zero": 3}

    def __init__(self, uid: int, gid: int) -> None:
        self.uid = uid
        self.gid = gid
        self.t0 = time.time_ns()

    async def call(self, op: str, cred: Cred, *args: Any, **kw: Any) -> Any:
        fn = getattr(self, f"_op_{op}", None)
        if fn is None:
            raise _err(errno.EACCES, "the ctl tree only has date, zero and null")
        return fn(*args, **kw)

    def close(self) -> None:
        """Nothing held."""

    def _op_getattr(self, ino: int) -> Attr:
        if ino == ROOT_INO:
            mode = stat.S_IFDIR | 0o555
        elif ino in (2, 3):
            mode = stat.S_IFREG | 0o444
        elif ino == 4:
            mode = stat.S_IFREG | 0o666
        else:
            raise _err(errno.ENOENT, "stale inode")
        nlink = 2 if ino == ROOT_INO else 1
        return Attr(ino, mode, nlink, self.uid, self.gid, 0, 0, self.t0, self.t0, self.t0)

    def _op_lookup(self, parent: int, name: bytes) -> Attr:
        if parent != ROOT_INO:
            raise _err(errno.ENOTDIR, "not a directory")
        if name not in self.FILES:
            raise _err(errno.ENOENT, os.fsdecode(name))
        return self._op_getattr(self.FILES[name])

    def _op_readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        if ino != ROOT_INO:
            raise _err(errno.ENOTDIR, "not a directory")
        return [(n, self._op_getattr(i)) for n, i in sorted(self.FILES.items())]

    def _op_open(self, ino: int, flags: int = os.O_RDONLY) -> Attr:
        return self._op_getattr(ino)

    def _op_release(self, ino: int) -> None:
        return None

    def _op_read(self, ino: int, offset: int, size: int) -> bytes:
        if ino == 3:
            return bytes(size)
        if ino == 2:
            ns = time.time_ns()
            text = f"{ns // 10**9}.{ns // 1000 % 10**6} {time.timezone // 60}.0\n".encode()
            return text[offset:offset + size]
        if ino == 4:
            return b""
        raise _err(errno.EISDIR, "a directory")

    def _op_write(self, ino: int, offset: int, data: bytes, *, append: bool = False) -> int:
        if ino != 4:
            raise _err(errno.EACCES, "only null is writable")
        return len(data)

    def _op_setattr(self, ino: int, **kw: Any) -> Attr:
        return self._op_getattr(ino)  # diod's ctl does the same: truncating null is fine

    def _op_getxattr(self, ino: int, name: bytes) -> bytes:
        raise _err(errno.ENODATA, "no such attribute")

    def _op_listxattr(self, ino: int) -> list[bytes]:
        return []

    def _op_fsync(self) -> None:
        return None

    def _op_statfs(self) -> tuple[int, int, int]:
        return 0, 0, 0


class RoutedLocks(LockTable):
    """The lock table of a namespace attach: a lock on a file under ``ID/root/`` goes to
    that spawn's own table (shared with every direct attach of the spawn, by the spawn's
    inode numbers), so POSIX locks work across both ways in (invariant 8). Locks on the
    control files stay in this table itself (the inherited state)."""

    def __init__(self, link: NamespaceLink, tables: dict[str, LockTable]) -> None:
        super().__init__()
        self._link = link
        self._tables = tables
        self._used: dict[str, LockTable] = {}

    def _route(self, ino: int) -> tuple[LockTable | None, int]:
        """The spawn's table and the spawn's inode, or (None, ino) for a control file."""
        k = ino >> SHIFT
        if not k:
            return None, ino
        sid = self._link._sid(k)
        table = self._used.get(sid)
        if table is None:
            table = self._used[sid] = self._tables.setdefault(sid, LockTable())
        return table, ino & LOW

    def held(self, ino: int) -> list[Lock]:
        table, i = self._route(ino)
        return super().held(i) if table is None else table.held(i)

    def count(self) -> int:
        return super().count() + sum(t.count() for t in self._used.values())

    def conflict(self, ino: int, owner: Hashable, type: LockType, start: int,
                 end: int) -> Lock | None:
        table, i = self._route(ino)
        if table is None:
            return super().conflict(i, owner, type, start, end)
        return table.conflict(i, owner, type, start, end)

    def set(self, ino: int, owner: Hashable, type: LockType, start: int, end: int, *,
            token: object = None, proc_id: int = 0, client_id: bytes = b"") -> bool:
        table, i = self._route(ino)
        if table is None:
            return super().set(i, owner, type, start, end, token=token, proc_id=proc_id,
                               client_id=client_id)
        return table.set(i, owner, type, start, end, token=token, proc_id=proc_id,
                         client_id=client_id)

    def release(self, drop_if: Callable[[Lock], bool]) -> int:
        return super().release(drop_if) + sum(t.release(drop_if) for t in self._used.values())

    def changed(self, ino: int) -> asyncio.Future[None]:
        table, i = self._route(ino)
        return super().changed(i) if table is None else table.changed(i)

    def waiting(self) -> int:
        return super().waiting() + sum(t.waiting() for t in self._used.values())
