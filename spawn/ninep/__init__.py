"""9P for grid: a sans-IO codec for 9P2000, 9P2000.u and 9P2000.L (docs/9p.md).

``messages`` holds the typed messages, records and constants; ``codec`` turns them into
bytes and back, splits a byte stream into frames and packs directory data. ``server`` and
``client`` are the asyncio glue over this codec (docs/9p.md, "Server").
"""

from spawn.ninep.codec import (
    DEFAULT_MSIZE,
    FrameBuffer,
    decode,
    encode,
    encode_dirent,
    encode_stat,
    pack_dirents,
    pack_stats,
    unpack_dirents,
    unpack_stats,
)
from spawn.ninep.messages import (
    MESSAGE_CLASSES,
    NOFID,
    NONUNAME,
    NOTAG,
    Dialect,
    Dirent,
    GetattrMask,
    LocalProtocolError,
    LockFlags,
    LockStatus,
    LockType,
    Message,
    MessageType,
    ProtocolError,
    Qid,
    RemoteProtocolError,
    SetattrMask,
    Stat,
    messages_of,
)

__all__ = [
    "DEFAULT_MSIZE",
    "MESSAGE_CLASSES",
    "NOFID",
    "NONUNAME",
    "NOTAG",
    "Dialect",
    "Dirent",
    "FrameBuffer",
    "GetattrMask",
    "LocalProtocolError",
    "LockFlags",
    "LockStatus",
    "LockType",
    "Message",
    "MessageType",
    "ProtocolError",
    "Qid",
    "RemoteProtocolError",
    "SetattrMask",
    "Stat",
    "decode",
    "encode",
    "encode_dirent",
    "encode_stat",
    "messages_of",
    "pack_dirents",
    "pack_stats",
    "unpack_dirents",
    "unpack_stats",
]
