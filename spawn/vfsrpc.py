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
from collections.abc import Callable
from typing import Any

import msgpack

from spawn.engine import Attr
from spawn.vfslink import OPS, EngineLink

log = logging.getLogger(__name__)

MAX_FRAME = 16 << 20  # a request carries at most one FUSE write (1 MiB); replies one read
ATTR = 1  # msgpack extension type of an engine Attr
_ATTR = struct.Struct(">QIIIIQQqqq")
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """A frame that is not one: too big, or not a msgpack request. Costs the connection."""


class RemoteError(OSError):
    """A failed request: ``errno`` as the daemon gave it, and its message."""


class Dropped(OSError):
    """The connection went while a request was in flight: it may or may not have been done."""


#: Operations that change nothing, so a call cut off by a daemon restart is simply repeated.
RETRYABLE = frozenset({"getattr", "lookup", "readdir", "readlink", "read", "getxattr",
                       "listxattr", "statfs"})


def _default(obj: object) -> object:
    if isinstance(obj, Attr):
        return msgpack.ExtType(ATTR, _ATTR.pack(obj.ino, obj.mode, obj.nlink, obj.uid, obj.gid, obj.rdev,
                                                obj.size, obj.atime_ns, obj.mtime_ns, obj.ctime_ns))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot send {type(obj).__name__}")


def _ext(code: int, data: bytes) -> object:
    if code == ATTR and len(data) == _ATTR.size:
        return Attr(*_ATTR.unpack(data))
    raise FrameError(f"unknown msgpack extension {code}")


def encode(obj: object) -> bytes:
    """One frame: length and msgpack body."""
    body = msgpack.packb(obj, default=_default, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes (at most {MAX_FRAME})")
    return _LEN.pack(len(body)) + body


def decode(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, ext_hook=_ext, raw=False, strict_map_key=False)
    except FrameError:
        raise
    except Exception as e:  # msgpack raises several types for garbage
        raise FrameError(f"bad msgpack body: {e}") from None


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
                 link: EngineLink, *, max_outstanding: int = 64) -> None:
        self.reader = reader
        self.writer = writer
        self.link = link
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
            value = await self.link.call(op, *args, **kw)
            self._count(op, args, kw, value)
            reply: list[Any] = [tag, 0, value]
        except Exception as e:
            code, message = error_of(e)
            reply = [tag, code, message]
        finally:
            self._slots.release()
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(encode(reply))
            await self.writer.drain()

    def _count(self, op: str, args: list[Any], kw: dict[str, Any], value: Any) -> None:
        if op == "open" or (op == "create" and kw.get("open")):
            self.opened[value.ino] = self.opened.get(value.ino, 0) + 1
        elif op == "release":
            n = self.opened.get(args[0], 0) - 1
            if n > 0:
                self.opened[args[0]] = n
            else:
                self.opened.pop(args[0], None)

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
                 on_lost: Callable[[str], object] | None = None) -> None:
        self.path = os.fspath(socket_path)
        self.spawn_id = spawn_id
        self.mountpoint = mountpoint
        self.grace = grace
        self.on_lost = on_lost
        self.info: dict[str, Any] = {}
        self._tag = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._lost = False
        self._reconnect: asyncio.Task[None] | None = None
        self.opened: dict[int, int] = {}  # what this mount holds open, to re-open after a restart
        self.reconnects = 0

    async def connect(self) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_FRAME + 4)
        try:
            writer.write(encode([0, "attach", [self.spawn_id], {"mountpoint": self.mountpoint}]))
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
        if op == "open" or (op == "create" and kw.get("open")):
            self.opened[value.ino] = self.opened.get(value.ino, 0) + 1
        elif op == "release":
            n = self.opened.get(args[0], 0) - 1
            if n > 0:
                self.opened[args[0]] = n
            else:
                self.opened.pop(args[0], None)
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

