"""The daemon's local protocol over a Unix socket: the pieces both ends share.

Wire format (byte layouts in docs/daemon.md): every message is a frame, a big-endian u32
body length and a msgpack body (spawn.vfswire). A request is ``[tag, op, args, kwargs]``;
its reply ``[tag, 0, value]`` or ``[tag, errno, message]``. A connection starts in control
mode (the daemon's commands, grid.daemon); ``attach`` hands it to the spawn's host
(spawn.host), which then serves engine operations (spawn.vfslink.OPS) or, for a mount, the
FUSE channel the mount process passes along.

What an operation makes stale for other caching clients (``touched``), how a session's
open files are counted (``count_opens``) and how errors become replies (``error_of``) live
here, for the host and the daemon alike.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
from collections.abc import Sequence
from typing import Any

from spawn.vfswire import MAX_FRAME, FrameError, decode, encode

log = logging.getLogger(__name__)

__all__ = ["MAX_FRAME", "FrameError", "decode", "encode", "read_frame", "touched"]
_LEN = struct.Struct(">I")


class RemoteError(OSError):
    """A failed request: ``errno`` as the daemon gave it, and its message."""


#: Operations that change nothing: no other client needs telling after them.
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


def touched(op: str, args: list[Any], kw: dict[str, Any], value: Any, before: list[int]) -> list[list[Any]]:
    """What other clients must forget after *op* succeeded: ``["i", ino]`` (attributes and
    cached data of an inode) and ``["e", parent, name]`` (a name, or its absence)."""
    items: list[list[Any]] = [["i", i] for i in before]
    if op in ("write", "setattr", "setxattr", "removexattr", "fallocate") or (
            op == "open" and int(kw.get("flags", args[1] if len(args) > 1 else 0)) & os.O_TRUNC):
        items.append(["i", args[0]])
    elif op in ("create", "mkdir", "mknod", "symlink", "unlink", "rmdir"):
        items += [["e", args[0], args[1]], ["i", args[0]]]
    elif op == "link":
        items += [["e", args[1], args[2]], ["i", args[1]], ["i", args[0]]]
    elif op == "rename":
        items += [["e", args[0], args[1]], ["e", args[2], args[3]], ["i", args[0]], ["i", args[2]]]
    return items


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

