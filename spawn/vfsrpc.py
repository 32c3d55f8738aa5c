"""The vfs link over a Unix socket: how a FUSE mount process reaches an engine in the daemon.

pyfuse3 allows one FUSE session per process, and the daemon must own every engine (one owner
thread per spawn, so that every client of a spawn sees one filesystem). So each ``grid
mount`` is its own process, running as the user who asked for it, and forwards every
filesystem request to the daemon over the daemon's local socket. This module is both ends of
that conversation, below the daemon's control commands (grid.daemon).

Wire format (byte layouts in docs/daemon.md): every message is a frame, a big-endian u32
body length and a msgpack body. A request is ``[tag, op, args, kwargs]``; its reply
``[tag, 0, value]`` or ``[tag, errno, message]``. Requests are pipelined (the mount process
has many FUSE workers) and replies may come in any order; the tag matches them up. Engine
attributes travel as msgpack extension type 1 (:data:`ATTR`). A connection starts in control
mode (the daemon's commands, grid.daemon); the ``attach`` command switches it to a vfs
session on one spawn, after which only the operations in spawn.vfslink.OPS are accepted.

The client (:class:`RemoteLink`) survives a daemon restart: a call in flight when the
connection drops fails with EIO (its outcome is unknown), later calls wait while the link
reconnects, re-attaches and re-opens the files its mount holds open. If the daemon does not
come back in time, or the spawn is gone (killed), ``on_lost`` tells the mount to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from spawn.vfslink import OPS, EngineLink
from spawn.vfswire import MAX_FRAME, FrameError, decode, encode

log = logging.getLogger(__name__)

__all__ = ["MAX_FRAME", "FrameError", "RemoteLink", "VfsSession", "decode", "encode", "read_frame"]
_LEN = struct.Struct(">I")


class RemoteError(OSError):
    """A failed request: ``errno`` as the daemon gave it, and its message."""


class Dropped(OSError):
    """The connection went while a request was in flight: it may or may not have been done."""


#: Operations that change nothing, so a call cut off by a daemon restart is simply repeated.
RETRYABLE = frozenset({"getattr", "lookup", "readdir", "readlink", "read", "getxattr",
                       "listxattr", "statfs"})


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message; None at a clean end of stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise FrameError("connection closed inside a frame header") from None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise FrameError(f"frame of {n} bytes (at most {MAX_FRAME})")
    try:
        return decode(await reader.readexactly(n))
    except asyncio.IncompleteReadError:
        raise FrameError("connection closed inside a frame") from None


def parse_request(msg: Any) -> tuple[int, str, list[Any], dict[str, Any]]:
    """Check a request's shape: ``[tag, op, args, kwargs]``."""
    if (not isinstance(msg, list) or len(msg) != 4 or not isinstance(msg[0], int)
            or not isinstance(msg[1], str) or not isinstance(msg[2], list)
            or not isinstance(msg[3], dict) or not all(isinstance(k, str) for k in msg[3])):
        raise FrameError("a request is [tag, op, args, kwargs]")
    return msg[0], msg[1], msg[2], msg[3]


ACK_TIMEOUT = 1.0  # seconds a change waits for other mounts to drop their cached copies


async def _lookup_ino(link: EngineLink, parent: int, name: bytes) -> int | None:
    try:
        return (await link.call("lookup", parent, name)).ino
    except Exception:
        return None


async def touched_before(link: EngineLink, op: str, args: list[Any]) -> list[int]:
    """Inodes an operation will change that its arguments do not name: the file a name
    points at before unlink, rmdir or rename takes it away (its link count changes)."""
    try:
        if op in ("unlink", "rmdir"):
            ino = await _lookup_ino(link, args[0], args[1])
            return [ino] if ino is not None else []
        if op == "rename":
            out = [await _lookup_ino(link, args[0], args[1]), await _lookup_ino(link, args[2], args[3])]
            return [i for i in out if i is not None]
    except (IndexError, TypeError):
        pass
    return []


def touched(op: str, args: list[Any], kw: dict[str, Any], value: Any, before: list[int]) -> list[list[Any]]:
    """What other clients must forget after *op* succeeded: ``["i", ino]`` (attributes and
    cached data of an inode) and ``["e", parent, name]`` (a name, or its absence)."""
    items: list[list[Any]] = [["i", i] for i in before]
    if op in ("write", "setattr", "setxattr", "removexattr", "fallocate") or (op == "open" and kw.get("truncate")):
        items.append(["i", args[0]])
    elif op in ("create", "mkdir", "mknod", "symlink", "unlink", "rmdir"):
        items += [["e", args[0], args[1]], ["i", args[0]]]
    elif op == "link":
        items += [["e", args[1], args[2]], ["i", args[1]], ["i", args[0]]]
    elif op == "rename":
        items += [["e", args[0], args[1]], ["e", args[2], args[3]], ["i", args[0]], ["i", args[2]]]
    return items


async def call_and_invalidate(link: EngineLink, op: str, args: list[Any], kw: dict[str, Any],
                              clients: Iterable[Any]) -> Any:
    """Run *op* on *link*; when it changes something, have every caching client among
    *clients* (VfsSessions of FUSE mounts) drop what it makes stale before returning: once
    the caller answers, nobody sees the old state. The wait is bounded (ACK_TIMEOUT): a
    mount whose kernel is blocked on a lock this change holds must not hold it for ever."""
    others = [c for c in clients if getattr(c, "caching", False)] if op not in RETRYABLE else []
    before = await touched_before(link, op, args) if others else []
    value = await link.call(op, *args, **kw)
    if others:
        items = touched(op, args, kw, value, before)
        if items:
            await asyncio.wait([asyncio.ensure_future(c.invalidate(items)) for c in others],
                               timeout=ACK_TIMEOUT)
    return value


def count_opens(opened: dict[int, int], op: str, args: Sequence[Any], kw: dict[str, Any],
                value: Any) -> None:
    """Keep *opened* (ino -> open handles) up to date after a successful *op*."""
    if op == "open" or (op == "create" and kw.get("open")):
        opened[value.ino] = opened.get(value.ino, 0) + 1
    elif op == "release":
        n = opened.get(args[0], 0) - 1
        if n > 0:
            opened[args[0]] = n
        else:
            opened.pop(args[0], None)


def error_of(exc: BaseException) -> tuple[int, str]:
    """(errno, message) for a reply: OSErrors keep their errno, anything else is EIO."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno, exc.strerror or os.strerror(exc.errno)
    return errno.EIO, f"{type(exc).__name__}: {exc}"


# -- the daemon's side of an attached session ------------------------------------------------


class VfsSession:
    """Serve engine operations to one attached connection, until it closes.

    Requests are started in arrival order (so they reach the engine's owner thread in that
    order) and answered as they finish. The files the client opens are counted, and on
    disconnect the ones it never released are released, so that a killed mount process does
    not keep unlinked files alive for ever.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 link: EngineLink, *, max_outstanding: int = 64, caching: bool = False,
                 peers: Callable[[], Iterable[VfsSession]] = tuple) -> None:
        self.reader = reader
        self.writer = writer
        self.link = link
        self.caching = caching  # the client caches names and attributes: tell it of changes
        self.peers = peers  # every session of the same spawn (this one included)
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._seq = 0
        self.opened: dict[int, int] = {}
        self._slots = asyncio.Semaphore(max_outstanding)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    async def run(self) -> None:
        try:
            while True:
                msg = await read_frame(self.reader)
                if msg is None:
                    break
                tag, op, args, kw = parse_request(msg)
                if op == "invalidated":  # the client has dropped what a push named
                    fut = self._acks.pop(tag, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                    continue
                await self._slots.acquire()
                t = asyncio.ensure_future(self._one(tag, op, args, kw))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        except (FrameError, ConnectionError) as e:
            log.warning("vfs session: %s; closing it", e)
        finally:
            await self.shutdown()

    async def _one(self, tag: int, op: str, args: list[Any], kw: dict[str, Any]) -> None:
        try:
            if op not in OPS:
                raise OSError(errno.ENOSYS, f"no operation {op!r}")
            value = await call_and_invalidate(self.link, op, args, kw,
                                              [p for p in self.peers() if p is not self])
            count_opens(self.opened, op, args, kw, value)
            reply: list[Any] = [tag, 0, value]
        except Exception as e:
            code, message = error_of(e)
            reply = [tag, code, message]
        finally:
            self._slots.release()
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(encode(reply))
            await self.writer.drain()

    async def invalidate(self, items: list[list[Any]]) -> None:
        """Tell this session's client to forget *items*; return once it says it has (the
        caller bounds the wait: a client stuck on a lock the change holds must not hold the
        change for ever)."""
        if self.closed.is_set():
            return
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        seq = self._seq
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[seq] = fut
        try:
            self.writer.write(encode([0, "inval", seq, items]))
            await fut
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._acks.pop(seq, None)

    async def shutdown(self) -> None:
        """Stop serving: let requests in progress finish, release what the client held."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.writer.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)
        held, self.opened = self.opened, {}
        for ino, n in held.items():
            for _ in range(n):
                with contextlib.suppress(Exception):
                    await self.link.call("release", ino)


# -- the mount process's side ------------------------------------------------------------------


class RemoteLink:
    """An engine in the daemon, reached over its socket (an EngineLink).

    ``await connect()`` attaches and returns the daemon's answer (the spawn's owner uid and
    so on). *grace* is how long calls wait for the daemon to come back after the connection
    drops; after that, or when the daemon says the spawn is gone, *on_lost* is called once
    (the mount unmounts) and calls fail with EIO.
    """

    def __init__(self, socket_path: str | os.PathLike[str], spawn_id: str, *,
                 mountpoint: str = "", grace: float = 60.0,
                 on_lost: Callable[[str], object] | None = None,
                 on_invalidate: Callable[[list[list[Any]]], Awaitable[None]] | None = None) -> None:
        self.path = os.fspath(socket_path)
        self.spawn_id = spawn_id
        self.mountpoint = mountpoint
        self.grace = grace
        self.on_lost = on_lost
        self.on_invalidate = on_invalidate  # set: the daemon tells us what others changed
        self.info: dict[str, Any] = {}
        self._tag = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._lost = False
        self._reconnect: asyncio.Task[None] | None = None
        self.opened: dict[int, int] = {}  # what this mount holds open, to re-open after a restart
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconnects = 0

    async def connect(self) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_FRAME + 4)
        try:
            writer.write(encode([0, "attach", [self.spawn_id],
                                 {"mountpoint": self.mountpoint, "cache": self.on_invalidate is not None}]))
            await writer.drain()
            msg = await read_frame(reader)
            if msg is None:
                raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
            if msg[1]:
                raise RemoteError(msg[1], msg[2])
        except BaseException:
            writer.close()
            raise
        self.info = msg[2]
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read_loop(reader))
        self._up.set()
        return self.info

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await read_frame(reader)
                if msg is None:
                    break
                if len(msg) == 4 and msg[1] == "inval":
                    t = asyncio.ensure_future(self._invalidate(msg[2], msg[3]))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
                    continue
                fut = self._pending.pop(msg[0], None)
                if fut is not None and not fut.done():
                    if msg[1]:
                        fut.set_exception(RemoteError(msg[1], msg[2]))
                    else:
                        fut.set_result(msg[2])
        except (FrameError, ConnectionError, OSError) as e:
            log.warning("link to the daemon: %s", e)
        finally:
            self._dropped()

    def _dropped(self) -> None:
        """The connection is gone: fail what was in flight, start reconnecting."""
        self._up.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(Dropped(errno.EIO, "the node daemon went away during the call"))
        if not self._lost and self._reconnect is None:
            self._reconnect = asyncio.ensure_future(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        delay = 0.05
        try:
            while loop.time() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                try:
                    await self.connect()
                except RemoteError as e:
                    self._give_up(f"the daemon refused to re-attach: {e.strerror}")
                    return
                except OSError:
                    continue
                held = dict(self.opened)
                for ino, n in held.items():
                    for _ in range(n):
                        try:
                            await self._send("open", (ino,), {})
                        except RemoteError:  # gone while the daemon was down
                            self.opened.pop(ino, None)
                            break
                self.reconnects += 1
                log.warning("reconnected to the node daemon (spawn %s)", self.spawn_id)
                return
            self._give_up(f"the node daemon did not come back within {self.grace:g} s")
        finally:
            self._reconnect = None

    async def _invalidate(self, seq: int, items: list[list[Any]]) -> None:
        try:
            if self.on_invalidate is not None:
                await self.on_invalidate(items)
        except Exception:
            log.exception("invalidating %s", items)
        finally:
            if self._writer is not None:
                self._writer.write(encode([seq, "invalidated", [], {}]))

    def _give_up(self, why: str) -> None:
        self._lost = True
        self._up.set()  # wake waiters: they fail now
        log.error("spawn %s: %s", self.spawn_id, why)
        if self.on_lost is not None:
            self.on_lost(why)

    async def _send(self, op: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if self._writer is None:
            raise Dropped(errno.EIO, "not connected to the node daemon")
        self._tag = (self._tag + 1) & 0xFFFFFFFF or 1
        tag = self._tag
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[tag] = fut
        self._writer.write(encode([tag, op, list(args), kw]))
        return await fut

    async def call(self, op: str, *args: Any, **kw: Any) -> Any:
        if op not in OPS:
            raise ValueError(f"no engine operation {op!r}")
        while True:
            if not self._up.is_set():
                await self._up.wait()
            if self._lost:
                raise OSError(errno.EIO, "the spawn is no longer reachable")
            try:
                value = await self._send(op, args, kw)
                break
            except Dropped:
                if op not in RETRYABLE:
                    raise
        count_opens(self.opened, op, args, kw, value)
        return value

    def close(self) -> None:
        self._lost = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def request(path: str | os.PathLike[str], op: str, *args: Any, **kw: Any) -> Any:
    """One control request on a fresh connection (for asyncio callers and tests)."""
    reader, writer = await asyncio.open_unix_connection(os.fspath(path), limit=MAX_FRAME + 4)
    try:
        writer.write(encode([1, op, list(args), kw]))
        await writer.drain()
        msg = await read_frame(reader)
        if msg is None:
            raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
        if msg[1]:
            raise RemoteError(msg[1], msg[2])
        return msg[2]
    finally:
        writer.close()

