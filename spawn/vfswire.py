"""The frames of the daemon's local protocol (docs/daemon.md, "Wire format"): pure codec.

A frame is a big-endian u32 body length and a msgpack body; engine attributes travel as
msgpack extension type 1. Kept apart from spawn.vfsrpc (the asyncio ends) so that a CLI
command can speak to the daemon without importing asyncio or the engine.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

from spawn.attr import Attr

MAX_FRAME = 16 << 20  # a request carries at most one FUSE write (1 MiB); replies one read
ATTR = 1  # msgpack extension type of an engine Attr
_ATTR = struct.Struct(">QIIIIQQqqqq")  # the last field (alloc) came later: 64-byte ones still decode
_ATTR_OLD = struct.Struct(">QIIIIQQqqq")
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """A frame that is not one: too big, or not a msgpack request. Costs the connection."""


def _default(obj: object) -> object:
    if isinstance(obj, Attr):
        return msgpack.ExtType(ATTR, _ATTR.pack(obj.ino, obj.mode, obj.nlink, obj.uid, obj.gid, obj.rdev,
                                                obj.size, obj.atime_ns, obj.mtime_ns, obj.ctime_ns,
                                                obj.alloc))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot send {type(obj).__name__}")


def _ext(code: int, data: bytes) -> object:
    if code == ATTR and len(data) == _ATTR.size:
        return Attr(*_ATTR.unpack(data))
    if code == ATTR and len(data) == _ATTR_OLD.size:
        return Attr(*_ATTR_OLD.unpack(data))
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
